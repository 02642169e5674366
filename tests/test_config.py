"""app.config: IMGSIM_* environment variables, lists and keys in the forms operators write."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import SPLIT_MIN_MFLOPS, Settings


def test_defaults(monkeypatch):
    for name in list(os.environ):
        if name.startswith("IMGSIM_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert s.model_store == Path("model_store") and s.default_model is None
    assert s.max_upload_bytes == 10 * 1024 * 1024 and s.max_image_pixels == 40_000_000
    assert s.torch_threads == 1 and s.inference_workers == 0 and s.workers == 1
    assert s.inference_precision == "auto" and s.log_json is True
    assert s.api_key_set() == frozenset() and s.cors_origins == []


def test_environment(monkeypatch):
    monkeypatch.setenv("IMGSIM_MODEL_STORE", "/srv/models")
    monkeypatch.setenv("IMGSIM_MAX_CANDIDATES", "8")
    monkeypatch.setenv("IMGSIM_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("IMGSIM_API_KEYS", "k1,k2")
    s = Settings()
    assert s.model_store == Path("/srv/models") and s.max_candidates == 8
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.api_key_set() == {"k1", "k2"}


def test_json_lists(monkeypatch):
    monkeypatch.setenv("IMGSIM_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("IMGSIM_API_KEYS", '["key1", "key2"]')  # docker-compose.yml's form
    s = Settings()
    assert s.cors_origins == ["https://a.example"]
    assert s.api_key_set() == {"key1", "key2"}


def test_keys_never_show_in_repr():
    s = Settings(api_keys="super-secret")
    assert "super-secret" not in repr(s) and "super-secret" not in str(s.model_dump())


@pytest.mark.parametrize("field,value", [("max_upload_bytes", 0), ("batch_max_size", -1)])
def test_nonsense_is_refused(field, value):
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_the_queue_must_hold_the_largest_request():
    with pytest.raises(ValidationError, match="queue_max"):
        Settings(queue_max=32, max_matrix_images=64)


def test_inference_workers_a_core_each_for_a_slow_model_one_for_a_tiny_one():
    from app.config import SPLIT_MIN_MFLOPS, usable_cores

    cores = usable_cores()
    slow, tiny = SPLIT_MIN_MFLOPS * 2, SPLIT_MIN_MFLOPS / 2
    assert Settings(workers=1).inference_workers_for(slow) == cores
    assert Settings(workers=1).inference_workers_for(tiny) == 1
    assert Settings(workers=cores * 2).inference_workers_for(slow) == 1  # never 0
    assert Settings(workers=1, torch_threads=cores).inference_workers_for(slow) == 1
    assert Settings(inference_workers=3).inference_workers_for(tiny) == 3  # set by hand: as is


def test_workers_auto_is_one_per_core_and_inference_threads_follow():
    from app.__main__ import _workers
    from app.config import usable_cores

    cores = usable_cores()
    assert _workers("auto") == 0 and _workers("3") == 3
    for bad in ["-1", "two", ""]:
        with pytest.raises(argparse.ArgumentTypeError, match="'auto'"):
            _workers(bad)
    auto = Settings(workers=0)
    assert auto.worker_processes() == cores and Settings(workers=3).worker_processes() == 3
    # Each of the auto processes takes its share of the cores, as if their number were given.
    slow = SPLIT_MIN_MFLOPS * 2
    assert auto.inference_workers_for(slow) == Settings(workers=cores).inference_workers_for(slow)
    assert auto.inference_workers_for(slow) == 1  # cores // cores
    with pytest.raises(ValidationError):
        Settings(workers=-1)


def test_inference_precision_is_one_of_three():
    assert Settings(inference_precision="bfloat16").inference_precision == "bfloat16"
    with pytest.raises(ValidationError):
        Settings(inference_precision="float16")


# --- usable_cores: the container's CPU quota, read from fake /proc and /sys trees -------------


def _fake_cgroups(root: Path, cgroup: str, mounts: list[str], files: dict[str, str]) -> Path:
    """A /proc/self/{cgroup,mountinfo} and cgroup files under `root`, as a container sees them."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(
        "".join(f"{30 + n} 23 0:{40 + n} {m}\n" for n, m in enumerate(mounts))
    )
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


V2_MOUNT = "/ /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw"
V1_CPU_MOUNT = "/docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct"
V1_CGROUP = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/docker/abc\n"


@pytest.mark.parametrize(
    "cpu_max,expected", [("100000 100000\n", 1.0), ("150000 100000\n", 1.5), ("max 100000\n", None)]
)
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, expected):
    from app.config import cgroup_cpu_quota

    root = _fake_cgroups(tmp_path, "0::/\n", [V2_MOUNT], {"sys/fs/cgroup/cpu.max": cpu_max})
    assert cgroup_cpu_quota(root) == expected


def test_cgroup_v2_the_tightest_of_the_cgroup_and_its_parents(tmp_path):
    """Without a cgroup namespace the process sits deep in the host's tree; a parent's quota
    (a Kubernetes pod's, around its container's) limits it too."""
    from app.config import cgroup_cpu_quota

    pod = "sys/fs/cgroup/kubepods.slice/pod1"
    root = _fake_cgroups(
        tmp_path,
        "0::/kubepods.slice/pod1/ctr\n",
        [V2_MOUNT],
        {
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            f"{pod}/cpu.max": "50000 100000\n",
            f"{pod}/ctr/cpu.max": "200000 100000\n",
        },
    )
    assert cgroup_cpu_quota(root) == 0.5


@pytest.mark.parametrize("quota_us,expected", [("200000", 2.0), ("50000", 0.5), ("-1", None)])
def test_cgroup_v1_cfs_quota_inside_a_container(tmp_path, quota_us, expected):
    """cgroup v1 (this machine's Docker): the container's cgroup is the mount's root, so the
    /docker/abc of /proc/self/cgroup is the mount point itself, not a folder below it."""
    from app.config import cgroup_cpu_quota

    cpu = "sys/fs/cgroup/cpu,cpuacct"
    root = _fake_cgroups(
        tmp_path,
        V1_CGROUP,
        [V1_CPU_MOUNT],
        {f"{cpu}/cpu.cfs_quota_us": f"{quota_us}\n", f"{cpu}/cpu.cfs_period_us": "100000\n"},
    )
    assert cgroup_cpu_quota(root) == expected


def test_no_cgroup_files_means_no_quota(tmp_path):
    from app.config import cgroup_cpu_quota, usable_cores

    assert cgroup_cpu_quota(tmp_path) is None  # no /proc at all (not Linux)
    root = _fake_cgroups(tmp_path / "bare", "0::/\n", [V2_MOUNT], {})  # cpu controller not enabled
    assert cgroup_cpu_quota(root) is None
    assert usable_cores(root) == usable_cores(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cpu_max,cores", [("100000 100000", 1), ("150000 100000", 1)])
def test_usable_cores_follow_the_quota_rounded_down(tmp_path, cpu_max, cores):
    from app.config import usable_cores

    root = _fake_cgroups(tmp_path, "0::/\n", [V2_MOUNT], {"sys/fs/cgroup/cpu.max": cpu_max})
    assert usable_cores(root) == cores


def test_usable_cores_a_quota_above_the_affinity_changes_nothing(tmp_path):
    from app.config import usable_cores

    affinity = len(os.sched_getaffinity(0))
    quota = f"{(affinity + 8) * 100000} 100000"
    root = _fake_cgroups(tmp_path, "0::/\n", [V2_MOUNT], {"sys/fs/cgroup/cpu.max": quota})
    assert usable_cores(root) == affinity


def test_usable_cores_a_quota_under_one_cpu_still_leaves_one(tmp_path):
    from app.config import usable_cores

    root = _fake_cgroups(tmp_path, "0::/\n", [V2_MOUNT], {"sys/fs/cgroup/cpu.max": "20000 100000"})
    assert usable_cores(root) == 1
