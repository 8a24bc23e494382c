"""Every API test runs with the production logging configuration; none may log an unmasked customer identifier
or a secret."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import FORBIDDEN_IN_LOGS, LogCapture


@pytest.fixture(autouse=True)
def no_identifiers_or_secrets_in_logs(captured_logs: LogCapture) -> Iterator[None]:
    yield
    leaked = [value for value in FORBIDDEN_IN_LOGS if value in captured_logs.text]
    assert not leaked, f"logged unmasked: {leaked}"
