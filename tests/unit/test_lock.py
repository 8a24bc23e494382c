"""The lock files agree with pyproject.toml: every declared dependency is pinned, each pin satisfies its declared
range, the runtime lock and the test lock are one resolution, and the image and CI install from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME_LOCK = REPO / "requirements.lock"
TEST_LOCK = REPO / "requirements-test.lock"
#: ``name==version``, then perhaps ``; marker``, then perhaps the ``\\`` that continues onto hash lines.
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;[^\\]*)?\\?$")


def pins(lock: Path) -> dict[NormalizedName, Version]:
    """name -> pinned version; every requirement line of a lock must be an exact pin."""
    found: dict[NormalizedName, Version] = {}
    for raw in lock.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "--hash")):
            continue
        match = _PIN.match(line)
        assert match, f"{lock.name}: not an exact pin: {line!r}"
        found[canonicalize_name(match["name"])] = Version(match["version"])
    return found


def declared(*extras: str) -> list[Requirement]:
    """The project's dependencies and those of ``extras``, the project's own extras (``pkg[otel]``) expanded,
    those whose marker excludes this platform left out."""
    wanted = [Requirement(r) for r in PROJECT["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for raw in PROJECT["optional-dependencies"][extra]:
            requirement = Requirement(raw)
            if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
                todo.extend(e for e in requirement.extras if e not in seen)
            else:
                wanted.append(requirement)
    return [r for r in wanted if r.marker is None or r.marker.evaluate({"extra": ""})]


@pytest.mark.parametrize(("lock", "extras"), [(RUNTIME_LOCK, ()), (TEST_LOCK, ("test",))], ids=["runtime", "test"])
def test_every_declared_dependency_is_pinned_within_its_range(lock: Path, extras: tuple[str, ...]) -> None:
    pinned = pins(lock)
    for requirement in declared(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{lock.name} does not pin {requirement.name} (refresh it: bash .ci/lock)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock.name} pins {name}=={pinned[name]} outside pyproject.toml's {requirement}"
        )


def test_the_runtime_and_test_locks_are_one_resolution() -> None:
    runtime, test = pins(RUNTIME_LOCK), pins(TEST_LOCK)
    assert {name: test.get(name) for name in runtime} == runtime
    assert len(runtime) >= len(PROJECT["dependencies"])


def test_the_locks_name_no_machine_of_their_own() -> None:
    for lock in (RUNTIME_LOCK, TEST_LOCK):
        text = lock.read_text()
        for local in ("--index-url", "--extra-index-url", "--find-links", "file://", "-e "):
            assert local not in text, f"{lock.name} carries {local!r}: compile it with .ci/lock"


def test_the_image_and_ci_install_from_the_locks() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY requirements.lock ./" in dockerfile
    assert "-r requirements.lock" in dockerfile
    ci = (REPO / ".ci" / "run").read_text()
    assert "-c requirements-test.lock -e '.[test]'" in ci


def test_the_pin_pattern_reads_what_pip_compile_writes() -> None:
    assert _PIN.match('uvloop==0.23.0 ; sys_platform != "win32"')
    assert _PIN.match("aiohttp==3.14.5 \\")
    assert not _PIN.match("aiohttp>=3.14")
