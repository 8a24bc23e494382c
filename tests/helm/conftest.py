from __future__ import annotations

from typing import Any

import pytest

from tests.helm import checks


@pytest.fixture(scope="session")
def releases() -> dict[str, checks.Release]:
    """The release rendered from each named values file, rendered once per session."""
    cache: dict[str, checks.Release] = {}
    return cache


@pytest.fixture
def release_of(releases: dict[str, checks.Release]) -> Any:
    def get(name: str) -> checks.Release:
        if name not in releases:
            releases[name] = checks.render(checks.values_file(name))
        return releases[name]

    return get


@pytest.fixture
def default(release_of: Any) -> checks.Release:
    release: checks.Release = release_of("default")
    return release


@pytest.fixture
def production(release_of: Any) -> checks.Release:
    release: checks.Release = release_of("production")
    return release


@pytest.fixture
def inline(release_of: Any) -> checks.Release:
    release: checks.Release = release_of("inline-secrets")
    return release
