"""The duplicate-key check: its fast path never misses what the full parse finds (a differential property test over
bodies built from the POS structs' field names, with repeats and escapes), and the paths it names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.web.json_keys import duplicate_key, guard_for
from service.web.schemas import RedeemIn, ValidateIn

#: Every key each struct knows, at any depth: msgspec refuses a body with any other key before the check runs.
_NAMES = {
    ValidateIn: ["customer", "codes", "billAmount", "transactionNumber", "mobile", "email", "externalId", "id"],
    RedeemIn: ["customer", "codes", "billAmount", "transactionNumber", "redemptionTime", "mode", "mobile", "id"],
}


def _key(name: str, escaped: bool) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in name[:1]) + name[1:] if escaped else name


@st.composite
def _objects(draw: Any, names: list[str], depth: int = 0) -> str:
    members = []
    for _ in range(draw(st.integers(0, 5))):
        key = _key(draw(st.sampled_from(names)), draw(st.booleans()))
        value = (
            draw(_objects(names, depth + 1))
            if depth < 2 and draw(st.booleans())
            else json.dumps(draw(st.sampled_from([1, "x", "mobile", ["codes"], None, '"id"'])))
        )
        members.append(f'"{key}": {value}')
    return "{" + ", ".join(members) + "}"


@pytest.mark.parametrize("struct", [ValidateIn, RedeemIn])
@settings(max_examples=400)
@given(data=st.data())
def test_the_fast_path_finds_every_duplicate_the_full_parse_finds(struct: type, data: st.DataObject) -> None:
    raw = data.draw(_objects(_NAMES[struct])).encode()
    assert guard_for(struct).duplicate(raw) == duplicate_key(raw)


def test_the_fast_path_knows_every_field_name() -> None:
    for struct, names in _NAMES.items():
        for name in names:
            assert guard_for(struct).duplicate(f'{{"{name}": 1, "{name}": 2}}'.encode()) == name


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('{"a": 1, "b": 2}', None),
        ('{"a": 1, "a": 2}', "a"),
        ('{"a": {"b": 1}, "c": {"b": 1}}', None),
        ('{"a": {"b": 1, "b": 2}}', "a.b"),
        ('{"a": [{"x": 1}, {"y": 1, "y": 2}]}', "a[1].y"),
        ('{"a": 1, "\\u0061": 2}', "a"),
        ('[{"k": 1, "k": 1}]', "[0].k"),
        ("[" * 100_000 + "]" * 100_000, "(nesting)"),
    ],
)
def test_the_path_of_the_first_duplicate(body: str, path: str | None) -> None:
    assert duplicate_key(body.encode()) == path


def test_a_struct_of_free_shape_always_takes_the_full_parse() -> None:
    assert guard_for(dict[str, Any]).duplicate(b'{"a": 1, "a": 2}') == "a"
    assert guard_for(ValidateIn).duplicate(b'{"customer": {}, "codes": [], "billAmount": 1}') is None
