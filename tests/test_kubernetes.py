"""deploy/kubernetes/: every manifest validates against the Kubernetes schemas, and the Deployment
probes, locks down and sizes the pods the way the image and the service need.

    .venv/bin/pytest tests/test_kubernetes.py -q

The schemas are the ones the `kubernetes-validate` package ships (strict: an unknown or misspelt
field is an error, which kubectl would silently drop). The cross-checks read the real Dockerfile
through tests/test_container.py's parser, so moving the port or the user there fails here too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_container import DOCKERFILE, Dockerfile

from app.config import Settings

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="`pip install -e '.[dev]'` provides kubernetes-validate"
)

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # the oldest release still supported upstream when this was written


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_files() -> list[Path]:
    return sorted(MANIFESTS.rglob("*.yaml"))


@pytest.fixture(scope="module")
def resources() -> dict[str, dict[str, Any]]:
    """The manifests `kubectl apply -f deploy/kubernetes/` applies (not examples/), by kind."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in documents(path):
            assert doc["kind"] not in out, f"two {doc['kind']}s"
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def pod(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return resources["Deployment"]["spec"]["template"]


@pytest.fixture(scope="module")
def api(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def image() -> tuple[Dockerfile, Any]:
    dockerfile = Dockerfile(DOCKERFILE)
    return dockerfile, dockerfile.stage("runtime")


@pytest.mark.parametrize(
    "path", manifest_files(), ids=lambda p: p.relative_to(MANIFESTS).as_posix()
)
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path}: empty"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name} {doc.get('kind')}: {e.message} at {list(e.path)}")


def test_the_directory_holds_what_a_scale_out_needs(resources: dict[str, dict[str, Any]]) -> None:
    assert set(resources) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert resources["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert resources["Service"]["spec"]["selector"].items() <= labels.items()
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        resources["Deployment"]["metadata"]["name"],
    )


def test_probes_ask_readyz_and_healthz_on_the_served_port(
    api: dict[str, Any], image: tuple[Dockerfile, Any]
) -> None:
    dockerfile, runtime = image
    port = int(dockerfile.env(runtime)["IMGSIM_PORT"])
    (named,) = api["ports"]
    assert named["containerPort"] == port
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = api[probe]["httpGet"]
        assert get["path"] == path and get["port"] in (named["name"], port), f"{probe}: {get}"
        assert api[probe]["timeoutSeconds"] < api[probe]["periodSeconds"], probe
    # Boot loads and warms up the models before the port opens: the startup probe, not the
    # liveness probe, waits for it, for as long as the image's own start period at least.
    startup = api["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    healthcheck = dockerfile.effective(runtime, "HEALTHCHECK").args
    start_period_s = int(re.search(r"--start-period=(\d+)s", healthcheck).group(1))
    assert startup["periodSeconds"] * startup["failureThreshold"] >= start_period_s


def test_pods_run_locked_down_as_the_image_s_user(
    pod: dict[str, Any], api: dict[str, Any], image: tuple[Dockerfile, Any]
) -> None:
    dockerfile, runtime = image
    uid = int(dockerfile.effective(runtime, "USER").args.split(":")[0])
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    ctx = api["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add")

    # Every directory the service writes is a volume: /tmp (HOME, TMPDIR) and its state dir.
    env = dockerfile.env(runtime)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in api["volumeMounts"]}
    for var in ("HOME", "TMPDIR", "IMGSIM_DATA_DIR"):
        assert env[var] in mounted and "emptyDir" in mounted[env[var]], f"{var}={env[var]}"


def _quantity(value: str) -> float:
    """'500m' -> 0.5, '2' -> 2, '1Gi' -> 2**30."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_requests_and_limits_for_cpu_and_memory(api: dict[str, Any]) -> None:
    res = api["resources"]
    for kind in ("cpu", "memory"):
        request, limit = _quantity(str(res["requests"][kind])), _quantity(str(res["limits"][kind]))
        assert 0 < request <= limit, f"{kind}: request {request} vs limit {limit}"
    # The CPU limit becomes the cgroup quota that usable_cores() reads: whole CPUs, or a worker
    # count rounded down from it wastes the rest.
    assert _quantity(str(res["limits"]["cpu"])).is_integer()


def test_secrets_come_from_a_secret(api: dict[str, Any]) -> None:
    env = {e["name"]: e for e in api["env"]}
    for var in ("IMGSIM_API_KEYS", "IMGSIM_GALLERY_URL"):
        assert "value" not in env[var], f"{var} written into the manifest"
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "imgsim", var
    # API keys are not optional: a missing Secret stops the pod rather than serving openly.
    assert not env["IMGSIM_API_KEYS"]["valueFrom"]["secretKeyRef"].get("optional", False)
    (example,) = documents(MANIFESTS / "examples" / "secret.yaml")
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in api["env"] if "valueFrom" in e}
    assert keys == set(example["stringData"]), "examples/secret.yaml: the keys the pods read"


def test_shutdown_fits_in_the_grace_period(pod: dict[str, Any], api: dict[str, Any]) -> None:
    pause = int(api["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = Settings().request_timeout_s + 5  # app/__main__.py: timeout_graceful_shutdown
    assert pod["spec"]["terminationGracePeriodSeconds"] > pause + drain


def test_autoscaling_keeps_a_pod_through_disruptions(resources: dict[str, dict[str, Any]]) -> None:
    hpa, pdb = (
        resources["HorizontalPodAutoscaler"]["spec"],
        resources["PodDisruptionBudget"]["spec"],
    )
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert pdb["minAvailable"] < hpa["minReplicas"], "a PDB as large as the floor blocks drains"
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    rollout = resources["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0
