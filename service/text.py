"""Small checks on text shared by every layer."""

from __future__ import annotations


def digits(value: str) -> bool:
    """Only the ASCII digits 0-9 (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    return value.isascii() and value.isdigit()
