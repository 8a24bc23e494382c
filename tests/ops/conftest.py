from __future__ import annotations

import os
import shutil

import pytest


def tool(name: str) -> str:
    """A Prometheus tool from Debian's `prometheus` package; required under CI (.ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} must be installed under CI")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path
