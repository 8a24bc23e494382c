"""The Dockerfile, checked without a container engine: hadolint, its shape, its build context, the wheel it builds,
and its HEALTHCHECK against the gateway installed from that wheel."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.helm import checks

REPO = checks.REPO
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        (args,) = self.all(keyword)
        return args

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for args in self.all("ENV"):
            found.update(dict(re.findall(r"(\w+)=(\S+)", args)))
        return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comment lines dropped, as Docker does."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        found.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return found


def stages() -> list[Stage]:
    parsed = instructions(DOCKERFILE.read_text())
    args: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, rest in parsed:
        if keyword == "ARG" and not result and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
        elif keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
            result.append(Stage(base=base, name=name.strip()))
        elif result:
            result[-1].instructions.append((keyword, rest))
    return result


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"not exec form: {args}"
    return [str(a) for a in parsed]


def healthcheck_command() -> list[str]:
    args = stages()[-1].one("HEALTHCHECK")
    _, _, command = args.partition(" CMD ")
    return exec_form(command)


def test_hadolint_is_clean() -> None:
    hadolint = checks.binary("hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_slim_python_with_a_numeric_non_root_user() -> None:
    build, runtime = stages()
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", build.base)
    assert runtime.base == build.base
    user = runtime.one("USER")
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user), f"USER must be a numeric non-root uid, got {user}"
    uid, _, gid = user.partition(":")
    defaults = yaml.safe_load((checks.CHART / "values.yaml").read_text())
    assert defaults["podSecurityContext"]["runAsUser"] == int(uid) == defaults["securityContext"]["runAsUser"]
    assert defaults["podSecurityContext"]["runAsGroup"] == int(gid or uid)


def test_entrypoint_cmd_port_and_healthcheck() -> None:
    runtime = stages()[-1]
    assert exec_form(runtime.one("ENTRYPOINT")) == ["coupon-gateway"]
    assert exec_form(runtime.one("CMD")) == ["serve"]
    defaults = yaml.safe_load((checks.CHART / "values.yaml").read_text())
    assert runtime.one("EXPOSE") == str(defaults["gateway"]["port"]) == runtime.env()["GATEWAY_PORT"]
    command = healthcheck_command()
    assert command[0] == "python"
    assert "/healthz" in command[-1]


def test_build_stage_builds_wheels_and_the_runtime_keeps_only_installs() -> None:
    build, runtime = stages()
    copies = build.all("COPY")
    # the dependencies' layer depends on the lock only (its exact versions); the source comes after it
    assert copies[0].split() == ["requirements.lock", "./"]
    runs = build.all("RUN")
    assert any("pip wheel" in r and "-r requirements.lock" in r for r in runs)
    assert any("pip wheel" in r and "--no-deps" in r and r.endswith(" .") for r in runs)
    # the runtime copies nothing in: wheels come through bind mounts, installed with --no-index
    assert runtime.all("COPY") == []
    installs = [r for r in runtime.all("RUN") if "pip install" in r]
    assert len(installs) == 2, "dependencies and the project in layers of their own"
    assert all("--mount=type=bind,from=build" in r and "--no-index" in r for r in installs)
    assert "uninstall --yes setuptools wheel" in installs[0]
    assert "pip uninstall --yes pip" in installs[1]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last matching pattern wins; a pattern that
    matches a parent directory matches its contents)."""
    verdict = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(p, bare) for p in prefixes):
            verdict = not negated
    return verdict


def dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def build_context(destination: Path) -> Path:
    """What the build stage's COPY instructions take from the context, through .dockerignore, links kept."""
    patterns = dockerignore()
    context = destination / "src"
    context.mkdir()
    for copy in stages()[0].all("COPY"):
        *sources, _ = copy.split()
        for source in sources:
            root = REPO / source.rstrip("/")
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if not p.is_dir())
            for path in files:
                relative = path.relative_to(REPO).as_posix()
                if ignored(relative, patterns):
                    continue
                target = context / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.is_symlink():
                    target.symlink_to(os.readlink(path))
                else:
                    shutil.copy2(path, target)
    return context


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    patterns = dockerignore()
    for needed in (
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "openapi.yaml",
        "service/openapi.yaml",
        "service/app.py",
    ):
        assert not ignored(needed, patterns), needed
    for unwanted in (".git/config", ".venv/bin/python", "tests/helm/checks.py", "helm/pos-coupon-gateway/Chart.yaml"):
        assert ignored(unwanted, patterns), unwanted
    assert ignored("service/__pycache__/app.cpython-311.pyc", patterns)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built as the Dockerfile's build stage builds it (``pip wheel --no-deps .``) from the
    same files; offline: the build backend comes from this environment (requirements-ci.txt)."""
    try:
        setuptools = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        setuptools = "0"
    if int(setuptools.split(".")[0]) < 69:
        if checks.in_ci():
            pytest.fail("setuptools>=69 must be installed under CI (pip install -r requirements-ci.txt)")
        pytest.skip(f"setuptools {setuptools} is older than pyproject.toml's build requirement")
    out = tmp_path_factory.mktemp("wheel")
    context = build_context(out)
    assert (context / "service" / "openapi.yaml").is_symlink()
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("pos_coupon_gateway-*.whl")
    return built


def test_wheel_holds_the_openapi_document_as_a_real_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo("service/openapi.yaml")
        assert not stat.S_ISLNK(info.external_attr >> 16)
        assert archive.read(info) == (REPO / "openapi.yaml").read_bytes()
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "coupon-gateway = service.__main__:main" in archive.read(entry_points).decode()
    assert not [n for n in names if n.startswith("tests/")]
    assert "service/py.typed" in names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthcheck(env: dict[str, str]) -> int:
    command = [sys.executable if healthcheck_command()[0] == "python" else "", *healthcheck_command()[1:]]
    return subprocess.run(command, env=env, capture_output=True, timeout=10, check=False).returncode


def test_healthcheck_against_the_gateway_installed_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel alone (as the runtime stage does), run ENTRYPOINT + CMD (with --sandbox, so no Capillary
    is needed) under the image's ENV, and run the HEALTHCHECK command against it: healthy while up, not after."""
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    subprocess.run(install, capture_output=True, timeout=120, check=True)
    runtime = stages()[-1]
    env = {k: v for k, v in os.environ.items() if not re.match(r"(CAPILLARY|REDIS|CACHE|GATEWAY|LOG|SANDBOX)_", k)}
    env.update(runtime.env())
    env.update(
        PYTHONPATH=str(target),
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(_free_port()),
        SANDBOX_PORT=str(_free_port()),
        GATEWAY_SHUTDOWN_TIMEOUT_SECONDS="2",
    )
    where = subprocess.run(
        [sys.executable, "-c", "import service; print(service.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target)), "the wheel's package must be the one imported"
    assert _healthcheck(env) != 0, "nothing listens yet"

    entrypoint = [str(target / "bin" / exec_form(runtime.one("ENTRYPOINT"))[0])]
    command = [*entrypoint, *exec_form(runtime.one("CMD")), "--sandbox"]
    gateway = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while _healthcheck(env) != 0:
            assert gateway.poll() is None, gateway.communicate()[0].decode()
            assert time.monotonic() < deadline, "the gateway never became healthy"
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", int(env["GATEWAY_PORT"])), timeout=5) as s:
            s.sendall(b"GET /openapi.yaml HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.split(b" ", 2)[1] == b"200", answer[:200]
        assert answer.endswith((REPO / "openapi.yaml").read_bytes())
        gateway.terminate()  # SIGTERM, as Kubernetes and docker stop send
        assert gateway.wait(timeout=15) == 0
        assert _healthcheck(env) != 0
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        if gateway.stdout is not None:
            gateway.stdout.close()
