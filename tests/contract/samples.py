"""Sample payloads extracted from the upstream documents (never retyped), vendored in tests/fixtures/capillary-docs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DOCS = Path(__file__).resolve().parents[1] / "fixtures" / "capillary-docs"
#: The originals, when a checkout has them beside it (compared with the vendored copies).
ORIGINAL_DOCS = Path(__file__).resolve().parents[3] / "shared" / "capillary-docs"

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_HEADING = re.compile(r"^(#{1,2}) (.+?)\s*$", re.M)
_LABEL = re.compile(r"^> Sample (.+?)\s*$", re.M)


@dataclass(frozen=True)
class Sample:
    file: str
    heading: str
    role: Literal["request", "response"]
    index: int  # position among the file's JSON blocks
    raw: bytes  # the fenced text, byte for byte

    @property
    def payload(self) -> Any:
        return json.loads(self.raw)

    @property
    def id(self) -> str:
        return f"{self.file[:3]}#{self.index}:{self.heading}:{self.role}"


def _title(text: str) -> str:
    """A single-endpoint page's title: its front matter ``title:`` or its first heading."""
    found = re.search(r"^title: (.+)$", text, re.M) or _HEADING.search(text)
    return found.group(found.lastindex or 1).strip() if found else ""


def _section(text: str, pos: int, fences: list[tuple[int, int]]) -> tuple[str, int]:
    """The nearest ``##`` section heading before ``pos`` that is not inside a code fence."""
    best = ("", 0)
    for m in _HEADING.finditer(text, 0, pos):
        if m.group(1) == "##" and not any(a <= m.start() < b for a, b in fences):
            best = (m.group(2), m.start())
    return best


def _role(text: str, start: int, end: int) -> Literal["request", "response"]:
    labels = [m.group(1) for m in _LABEL.finditer(text, start, end)]
    return "request" if labels and "Request" in labels[-1] else "response"


def load_samples() -> list[Sample]:
    """Every JSON object in a code fence of the documents, with the endpoint it documents and its role.

    Multi-endpoint pages (with ``> Sample`` labels) are split by their ``##`` sections; single-endpoint
    pages are named by their title.
    """
    samples = []
    for path in sorted(DOCS.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        fences = [(f.start(), f.end()) for f in _FENCE.finditer(text)]
        sectioned = _LABEL.search(text) is not None
        index = 0
        for fence in _FENCE.finditer(text):
            try:
                payload = json.loads(fence.group(1))
            except json.JSONDecodeError:
                continue  # a URL or curl example, not a payload
            if not isinstance(payload, dict):
                continue
            heading, heading_pos = _section(text, fence.start(), fences) if sectioned else (_title(text), 0)
            role = _role(text, heading_pos, fence.start())
            samples.append(Sample(path.name, heading, role, index, fence.group(1).encode()))
            index += 1
    return samples
