from __future__ import annotations

import pytest

from service.config import ConfigError, load_settings

OAUTH = {
    "CAPILLARY_API_URL": "https://eu.api.capillarytech.com/",
    "CAPILLARY_UPLOAD_URL": "https://eu.intouch.capillarytech.com",
    "CAPILLARY_AUTH": "oauth",
    "CAPILLARY_CLIENT_KEY": "key",
    "CAPILLARY_CLIENT_SECRET": "very-secret",
    "GATEWAY_API_KEYS_FILE": "/etc/pos-coupon-gateway/api-keys.json",
}
BASIC = {
    "CAPILLARY_API_URL": "https://eu.api.capillarytech.com",
    "CAPILLARY_UPLOAD_URL": "https://eu.intouch.capillarytech.com",
    "CAPILLARY_AUTH": "basic",
    "CAPILLARY_TILL_USERNAME": "store.till",
    "CAPILLARY_TILL_PASSWORD": "till-password",
    "GATEWAY_API_KEYS_FILE": "/etc/pos-coupon-gateway/api-keys.json",
}


def test_oauth_settings_with_defaults() -> None:
    settings = load_settings(OAUTH)
    assert settings.capillary.api_url == "https://eu.api.capillarytech.com"  # trailing slash dropped
    assert (settings.capillary.auth, settings.capillary.client_key) == ("oauth", "key")
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.capillary.timeout > settings.capillary.connect_timeout > 0


def test_door_limits_have_defaults_and_read_their_variables() -> None:
    access = load_settings(OAUTH).access
    limits = (access.header_timeout, access.body_timeout, access.keepalive, access.max_requests_per_connection)
    assert limits == (10.0, 5.0, 75.0, 1000)
    env = {
        **OAUTH,
        "GATEWAY_HEADER_TIMEOUT_SECONDS": "2.5",
        "GATEWAY_BODY_TIMEOUT_SECONDS": "1",
        "GATEWAY_KEEPALIVE_SECONDS": "30",
        "GATEWAY_MAX_REQUESTS_PER_CONNECTION": "0",
    }
    access = load_settings(env).access
    limits = (access.header_timeout, access.body_timeout, access.keepalive, access.max_requests_per_connection)
    assert limits == (2.5, 1.0, 30.0, 0)


def test_basic_settings_do_not_need_oauth_credentials() -> None:
    settings = load_settings({**BASIC, "GATEWAY_PORT": "9000", "GATEWAY_HOST": "127.0.0.1"})
    assert (settings.capillary.till_username, settings.port, settings.host) == ("store.till", 9000, "127.0.0.1")


def test_secrets_never_appear_in_repr() -> None:
    assert "very-secret" not in repr(load_settings(OAUTH))
    assert "till-password" not in repr(load_settings(BASIC))


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({k: v for k, v in OAUTH.items() if k != "CAPILLARY_API_URL"}, "CAPILLARY_API_URL"),
        ({**OAUTH, "CAPILLARY_API_URL": "eu.api.capillarytech.com"}, "CAPILLARY_API_URL"),
        ({**OAUTH, "CAPILLARY_UPLOAD_URL": "ftp://x"}, "CAPILLARY_UPLOAD_URL"),
        ({**OAUTH, "CAPILLARY_AUTH": "token"}, "CAPILLARY_AUTH"),
        ({k: v for k, v in OAUTH.items() if k != "CAPILLARY_AUTH"}, "CAPILLARY_AUTH"),
        ({**OAUTH, "CAPILLARY_CLIENT_SECRET": "  "}, "CAPILLARY_CLIENT_SECRET"),
        ({k: v for k, v in BASIC.items() if k != "CAPILLARY_TILL_PASSWORD"}, "CAPILLARY_TILL_PASSWORD"),
        ({**OAUTH, "GATEWAY_PORT": "80a"}, "GATEWAY_PORT"),
        ({**OAUTH, "GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
        ({**OAUTH, "GATEWAY_PORT": "²"}, "GATEWAY_PORT"),
        ({**OAUTH, "CAPILLARY_TIMEOUT_SECONDS": "fast"}, "CAPILLARY_TIMEOUT_SECONDS"),
        ({**OAUTH, "CAPILLARY_TIMEOUT_SECONDS": "0"}, "CAPILLARY_TIMEOUT_SECONDS"),
        ({**OAUTH, "CAPILLARY_CONNECT_TIMEOUT_SECONDS": "9"}, "CAPILLARY_CONNECT_TIMEOUT_SECONDS"),
        ({**OAUTH, "CAPILLARY_SOURCE": "in store"}, "CAPILLARY_SOURCE"),
        ({**OAUTH, "LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({**OAUTH, "GATEWAY_HEADER_TIMEOUT_SECONDS": "0"}, "GATEWAY_HEADER_TIMEOUT_SECONDS"),
        ({**OAUTH, "GATEWAY_BODY_TIMEOUT_SECONDS": "never"}, "GATEWAY_BODY_TIMEOUT_SECONDS"),
        ({**OAUTH, "GATEWAY_KEEPALIVE_SECONDS": "0.5"}, "GATEWAY_KEEPALIVE_SECONDS"),
        ({**OAUTH, "GATEWAY_MAX_REQUESTS_PER_CONNECTION": "2.5"}, "GATEWAY_MAX_REQUESTS_PER_CONNECTION"),
        ({**OAUTH, "LEDGER_MEMORY_MAX_PER_STORE": "10"}, "LEDGER_MEMORY_MAX_PER_STORE"),
        ({**OAUTH, "LEDGER_REFUSED_TTL_SECONDS": "a while"}, "LEDGER_REFUSED_TTL_SECONDS"),
        ({**OAUTH, "RECONCILE_CLOCK_SKEW_SECONDS": "-1"}, "RECONCILE_CLOCK_SKEW_SECONDS"),
        ({**OAUTH, "LEDGER_WRITE_RETRY_SECONDS": "0"}, "LEDGER_WRITE_RETRY_SECONDS"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")
    assert "\n" not in str(caught.value)


def test_masking() -> None:
    from service.observability.logging import mask, scrub

    assert mask("919900000001") == "91******0001"
    assert mask("alice@example.com") == "a***@example.com"
    assert mask("EXT-0001") == "EX****01"
    assert mask(mask("919900000001")) == "91******0001"
    assert (
        scrub("customer 919900000001 wrote from bob@example.com") == "customer 91******0001 wrote from b***@example.com"
    )


def test_every_client_operation_is_a_named_operation() -> None:
    import re
    from pathlib import Path

    from service.capillary import operations
    from service.capillary.client import OPERATIONS

    source = Path(__file__).resolve().parents[2].joinpath("service/capillary/client.py").read_text()
    used = {getattr(operations, row).name for row in re.findall(r"\bops\.([A-Z_]+)\b", source)}
    assert used == set(OPERATIONS)


def test_the_ledgers_shares_never_exceed_their_whole() -> None:
    """A lowered TTL or cap (a benchmark's IDEMPOTENCY_TTL_SECONDS=60) lowers the parts with it, not a start error."""
    state = load_settings({**OAUTH, "IDEMPOTENCY_TTL_SECONDS": "60", "LEDGER_MEMORY_MAX_ENTRIES": "1000"}).state
    assert (state.refused_ttl, state.memory_max_per_store) == (60, 1000)
    default = load_settings(OAUTH).state
    assert (default.refused_ttl, default.memory_max_per_store, default.clock_skew) == (900, 20_000, 300)
