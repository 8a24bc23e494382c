"""Random JSON, and random values under the real field names, never get past the body decoders as anything
but a command or a 400 naming the problem: no exception of another kind, so no 5xx."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.web.errors import ApiError
from service.web.redemptions import REDEEM_DECODER, VALIDATE_DECODER, parse_command

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
_json = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
)
_FIELDS = ("customer", "codes", "billAmount", "transactionNumber", "redemptionTime", "mode")
_CUSTOMER_FIELDS = ("mobile", "email", "externalId", "id")
_customer = st.dictionaries(st.sampled_from(_CUSTOMER_FIELDS), _scalars | st.text(alphabet="0123456789+", max_size=20))
_plausible = st.fixed_dictionaries(
    {},
    optional={
        "customer": _customer | _json,
        "codes": st.lists(st.text(max_size=70) | _scalars, max_size=60) | _json,
        "billAmount": st.decimals(allow_nan=True).map(str) | st.floats() | st.integers() | _json,
        "transactionNumber": st.text(max_size=70) | _json,
        "redemptionTime": st.text(max_size=25) | _json,
        "mode": st.sampled_from(["all", "partial", "ALL", ""]) | _json,
    },
)


def _decode(raw: bytes) -> None:
    for decoder in (VALIDATE_DECODER, REDEEM_DECODER):
        try:
            command = parse_command(raw, decoder, "S001")
        except ApiError as exc:
            refused = exc
        else:
            assert command.store == "S001"
            assert 1 <= len(command.codes) <= 50
            assert command.bill_amount >= 0
            continue
        assert refused.error.http_status == 400
        assert 0 < len(refused.message) < 500
        # our own words, naming the field: never the decoding library's text
        assert re.match(r"^(body|[A-Za-z]+(\[\d+\])?(\.[A-Za-z]+)*): ", refused.message), refused.message
        assert not re.search(r"Expected `|Object missing|Object contains|Invalid enum|- at `\$", refused.message)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_any_json_value_is_a_command_or_a_400(value: Any) -> None:
    _decode(json.dumps(value).encode())


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(_plausible)
def test_plausible_bodies_are_a_command_or_a_400(body: dict[str, Any]) -> None:
    _decode(msgspec.json.encode(body))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_command_or_a_400(raw: bytes) -> None:
    _decode(raw)


def test_the_strategies_reach_valid_commands() -> None:
    """The plausible bodies are not all refused: a known-good one decodes."""
    body = {"customer": {"mobile": "919900000001"}, "codes": ["A1"], "billAmount": "10.00", "transactionNumber": "T"}
    command = parse_command(json.dumps(body).encode(), REDEEM_DECODER, "S001")
    assert command.codes == ("A1",)
    assert set(body) <= set(_FIELDS)
