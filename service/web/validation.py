"""Our own words for a body that does not fit its wire model: the field, as a path, and the rule it breaks.

msgspec's ``ValidationError`` says what went wrong in the library's terms ("Object missing required field `codes`",
"Expected `int`, got `str` - at `$.seriesId`"). :func:`describe` turns each of its forms into the API's own message
("codes: is required", "seriesId: must be a whole number, got a string"), reading what the text leaves out (the
values an enum allows, the fields an object has) from the model itself (``msgspec.inspect``). A form it does not know
still names the field ("<field>: not a valid value"): the library's text never reaches a client.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
from msgspec import inspect

_AT: Final = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_SEGMENT: Final = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_WORDS: Final = {
    "int": "a whole number",
    "float": "a number",
    "decimal": 'an amount (a string such as "12.50", or a number)',
    "str": "a string",
    "bool": "true or false",
    "null": "null",
    "array": "a list",
    "object": "an object",
    "datetime": "an ISO-8601 date-time",
    "date": "an ISO-8601 date",
    "time": "an ISO-8601 time",
    "uuid": "a UUID",
}
_UNITS: Final = {"str": "character", "array": "item", "object": "entry"}
_BOUNDS: Final = {">=": "{n} or more", "<=": "{n} or less", ">": "more than {n}", "<": "less than {n}"}


def _field(path: str) -> str:
    return path.removeprefix(".") or "body"


def _words(kinds: str) -> str:
    return " or ".join(_WORDS.get(kind.strip(), f"a {kind.strip()}") for kind in kinds.split("|"))


def _resolve(model: Any, path: str) -> inspect.Type | None:
    """The type at ``path`` ("$" less, e.g. ``.customer.id``) of ``model``, as msgspec describes it."""
    node: inspect.Type | None = inspect.type_info(model)
    for name, index in _SEGMENT.findall(path):
        node = _unwrap(node)
        if name and isinstance(node, inspect.StructType):
            node = next((f.type for f in node.fields if f.encode_name == name), None)
        elif index and isinstance(node, inspect.ListType | inspect.SetType | inspect.VarTupleType):
            node = node.item_type
        elif name and isinstance(node, inspect.DictType):
            node = node.value_type
        else:
            return None
    return _unwrap(node)


def _unwrap(node: inspect.Type | None) -> inspect.Type | None:
    while True:
        if isinstance(node, inspect.Metadata):
            node = node.type
        elif isinstance(node, inspect.UnionType):
            kinds = [t for t in node.types if not isinstance(t, inspect.NoneType)]
            if len(kinds) != 1:
                return node
            node = kinds[0]
        else:
            return node


def _choices(node: inspect.Type | None) -> list[str] | None:
    if isinstance(node, inspect.LiteralType):
        return [repr(v) for v in node.values]
    if isinstance(node, inspect.EnumType):
        return [repr(member.value) for member in node.cls]
    return None


def describe(error: msgspec.ValidationError, model: Any = None) -> str:
    """``error`` as the API says it: ``"<field path>: <rule>"``. ``model``: the type decoded (for enums and fields)."""
    found = _AT.match(str(error))
    assert found is not None  # the pattern matches any text
    text, path = found["message"], found["path"] or ""
    field = _field(path)
    if m := re.fullmatch(r"Object missing required field `([^`]+)`", text):
        return f"{_field(f'{path}.{m[1]}')}: is required"
    if m := re.fullmatch(r"Object contains unknown field `([^`]+)`", text):
        node = _resolve(model, path) if model is not None else None
        known = ""
        if isinstance(node, inspect.StructType):
            known = f" (the fields here: {', '.join(f.encode_name for f in node.fields)})"
        return f"{field}: unknown field {m[1]!r}{known}"
    if m := re.fullmatch(r"Expected `([^`]+)`, got `([^`]+)`", text):
        if not path and m[1] == "object":
            return f"body: must be a JSON object, got {_words(m[2])}"
        return f"{field}: must be {_words(m[1])}, got {_words(m[2])}"
    if m := re.fullmatch(r"Expected `([^`]+)` of length (>=|<=) (\d+)", text):
        unit = _UNITS.get(m[1], "item")
        least = "at least" if m[2] == ">=" else "at most"
        return f"{field}: must have {least} {m[3]} {unit}{'' if m[3] == '1' else 's'}"
    if m := re.fullmatch(r"Expected `([^`]+)` (>=|<=|>|<) (\S+)", text):
        return f"{field}: must be {_BOUNDS[m[2]].format(n=m[3])}"
    if m := re.fullmatch(r"Expected `([^`]+)` that's a multiple of (\S+)", text):
        return f"{field}: must be a multiple of {m[2]}"
    if m := re.fullmatch(r"Expected `str` matching regex '(.*)'", text, re.S):
        return f"{field}: must match the pattern {m[1]}"
    if m := re.fullmatch(r"Invalid enum value (.+)", text, re.S):
        choices = _choices(_resolve(model, path)) if model is not None else None
        allowed = f"one of {', '.join(choices)}" if choices else "one of the documented values"
        return f"{field}: must be {allowed}, got {m[1]}"
    if text == "Invalid decimal string":
        return f"{field}: must be {_WORDS['decimal']}"
    if m := re.fullmatch(r"Invalid (RFC3339 encoded )?(datetime|date|time|UUID|base64 encoded string)", text):
        return f"{field}: must be {_WORDS.get(m[2].lower(), 'valid')}"
    return f"{field}: not a valid value"
