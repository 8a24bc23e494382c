"""The request deadline has one writer and one reader.

The context variable in :mod:`service.deadline` is written only by the web layer (``service/web/deadline.py``,
through ``set_deadline``/``reset_deadline``) and read only through ``service.deadline.current``, the Capillary
client's ambient source. Work with limits of its own (a redeem, an upload, the sweeper) passes them with each call
instead of writing the variable for the layers below to find. Every module is parsed, nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import service

ROOT: Final = Path(service.__file__).parent
HOME: Final = "deadline.py"  # the module that holds the variable
#: The context variables of ``service.deadline``, and what may touch them from outside it.
VARIABLES: Final = frozenset({"DEADLINE", "URGENT"})
WRITERS: Final = frozenset({"set_deadline", "reset_deadline"})
WRITER_HOME: Final = "web/deadline.py"


def _name(node: ast.expr) -> str | None:
    """``X`` for ``X`` and ``a.b.X``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def touches(source: str) -> Iterator[str]:
    """What in ``source`` touches the deadline's context variable: an import of it, any use of its name (``.set``,
    ``.get``, ``.reset`` included), and calls of the deadline's writers."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "service.deadline":
            yield from (f"import {a.name}" for a in node.names if a.name in VARIABLES | WRITERS)
        elif isinstance(node, ast.Name | ast.Attribute) and _name(node) in VARIABLES:
            yield f"line {node.lineno}: {_name(node)}"
        elif isinstance(node, ast.Call) and _name(node.func) in WRITERS:
            yield f"line {node.lineno}: {_name(node.func)}()"


def offences() -> dict[str, list[str]]:
    """Each module under ``service/`` but the two allowed, with what in it touches the variable."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative == HOME:
            continue
        touched = list(touches(path.read_text(encoding="utf-8")))
        if relative == WRITER_HOME:
            touched = [t for t in touched if not any(w in t for w in WRITERS)]
        if touched:
            found[relative] = touched
    return found


def test_only_the_web_layer_writes_the_deadline_and_only_current_reads_it() -> None:
    assert offences() == {}


def test_the_web_layer_does_write_it() -> None:
    """The allowance above is used: the web layer's middleware is where the deadline is set."""
    source = (ROOT / WRITER_HOME).read_text(encoding="utf-8")
    assert {t.split(": ")[-1] for t in touches(source)} >= {"set_deadline()", "reset_deadline()", "import set_deadline"}


def test_touches_finds_each_way_in() -> None:
    source = """
from service.deadline import DEADLINE, current, set_deadline
import service.deadline as d
token = DEADLINE.set(None)
d.URGENT.set(True)
d.DEADLINE.get()
set_deadline(1.0)
current()
"""
    found = list(touches(source))
    assert "import DEADLINE" in found
    assert "import set_deadline" in found
    assert "line 4: DEADLINE" in found
    assert "line 5: URGENT" in found
    assert "line 6: DEADLINE" in found
    assert "line 7: set_deadline()" in found
    assert not any("current" in t for t in found)
