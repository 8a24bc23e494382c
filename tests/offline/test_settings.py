"""OFFLINE_* settings: off by default; on, a journal is required and the policy file is read at startup, each
problem naming its variable."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from service.config import ConfigErrors, load_settings
from service.offline_policy import Policy, PolicyError, load_policy

BASE = {
    "CAPILLARY_API_URL": "https://eu.api.capillarytech.com",
    "CAPILLARY_UPLOAD_URL": "https://eu.intouch.capillarytech.com",
    "CAPILLARY_AUTH": "oauth",
    "CAPILLARY_CLIENT_KEY": "key",
    "CAPILLARY_CLIENT_SECRET": "secret",
    "GATEWAY_API_KEYS_FILE": "/keys.json",
}


def test_off_by_default() -> None:
    assert load_settings(BASE).offline.enabled is False


def test_on_without_a_journal_refuses_to_start() -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_settings({**BASE, "OFFLINE_MODE": "on"})
    assert caught.value.variable == "OFFLINE_MODE"
    assert "REDIS_URL nor OFFLINE_JOURNAL_PATH" in str(caught.value)


def test_on_with_redis_or_a_file(tmp_path: Path) -> None:
    assert load_settings({**BASE, "OFFLINE_MODE": "on", "REDIS_URL": "redis://127.0.0.1:6379/0"}).offline.enabled
    path = str(tmp_path / "journal.sqlite3")
    settings = load_settings({**BASE, "OFFLINE_MODE": "on", "OFFLINE_JOURNAL_PATH": path})
    assert settings.offline.journal_path == path


def test_a_bad_mode_is_named() -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_settings({**BASE, "OFFLINE_MODE": "yes"})
    assert caught.value.variable == "OFFLINE_MODE"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "malformed"),
        (json.dumps({"maxPerTil": 3}), "maxPerTil"),
        (json.dumps({"maxPerTill": -1}), "negative"),
        (json.dumps({"series": {"x": {"excluded": True}}}), "series"),
    ],
)
def test_a_bad_policy_file_stops_startup_naming_it(tmp_path: Path, content: str, says: str) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(content)
    env = {**BASE, "OFFLINE_MODE": "on", "REDIS_URL": "redis://127.0.0.1:6379/0", "OFFLINE_POLICY_FILE": str(policy)}
    with pytest.raises(ConfigErrors) as caught:
        load_settings(env)
    assert caught.value.variable == "OFFLINE_POLICY_FILE"
    assert says in str(caught.value)


def test_the_policy_defaults_are_the_contracts(tmp_path: Path) -> None:
    assert load_policy(None) == Policy()
    policy = Policy()
    assert policy.validated_within_seconds == 900
    assert (policy.max_per_till, policy.max_per_store) == (20, 200)
    assert policy.max_discount_per_transaction == Decimal("1000.00")
    assert policy.max_discount_per_store == Decimal("10000.00")
    assert policy.expire_after_seconds == 24 * 3600
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(str(tmp_path / "missing.json"))
