"""Small checks on text shared by every layer, and the masking of customer identifiers in it."""

from __future__ import annotations

import re
from typing import Final

_EMAIL: Final = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")
_LONG_DIGITS: Final = re.compile(r"(?<![\w-])(\+?\d{2})(\d{2,})(\d{4})(?![\w-])")
_EIGHT_DIGITS: Final = re.compile(r"\d{8}")  # what _LONG_DIGITS needs at the least: most text has none


def digits(value: str) -> bool:
    """Only the ASCII digits 0-9 (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    return value.isascii() and value.isdigit()


def mask(value: str) -> str:
    """``919900000001`` -> ``91******0001``; ``alice@example.com`` -> ``a***@example.com``; other
    identifiers keep their first two and last two characters. Masking a masked value changes nothing."""
    if "*" in value:
        return value
    if "@" in value:
        return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", value)
    if len(value) <= 4:
        return "*" * len(value)
    keep = 4 if value.isdigit() and len(value) >= 8 else 2
    return value[:2] + "*" * (len(value) - 2 - keep) + value[-keep:]


def scrub(text: str) -> str:
    """Mask what looks like a phone number or an email inside free text."""
    if "@" in text:
        text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    if len(text) < 8 or _EIGHT_DIGITS.search(text) is None:
        return text
    return _LONG_DIGITS.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), text)
