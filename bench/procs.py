"""Child processes of a benchmark run, and what /proc says about them.

Every child is started in its own session (a Ctrl-C at the terminal reaches only the harness, which then stops
them in order), asked by the kernel to get SIGTERM if the harness dies (``PR_SET_PDEATHSIG``), and always stopped
by `Processes.close`: SIGTERM, a bounded wait, then SIGKILL. Output goes to log files, never to pipes nobody
reads, except the load generator's line protocol.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import msgspec

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildFailed(RuntimeError):
    pass


class Child:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise ChildFailed(f"{self.name} exited with status {self.popen.returncode}:\n{self.tail()}")

    def wait_for_line(self, marker: str, timeout: float) -> str:
        """The first line of the child's output containing ``marker`` (polls its log file, bounded in time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in self.log.read_text(errors="replace").splitlines():
                    if marker in line:
                        return line
            self.check_alive()
            time.sleep(0.05)
        raise ChildFailed(f"{self.name} did not print {marker!r} within {timeout:.0f} s:\n{self.tail()}")


class LineChannel:
    """JSON lines to a child's stdin and from its stdout, each answer awaited with a deadline."""

    def __init__(self, child: Child) -> None:
        assert child.popen.stdin is not None
        assert child.popen.stdout is not None
        self._child = child
        self._stdin: IO[bytes] = child.popen.stdin
        self._fd = child.popen.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._buffer = b""

    def send(self, message: Mapping[str, Any]) -> None:
        self._stdin.write(msgspec.json.encode(message) + b"\n")
        self._stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildFailed(f"{self._child.name} gave no answer within {timeout:.0f} s")
            if self._selector.select(min(left, 0.5)):
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    self._child.check_alive()
                    raise ChildFailed(f"{self._child.name} closed its output:\n{self._child.tail()}")
                self._buffer += chunk
            else:
                self._child.check_alive()
        line, self._buffer = self._buffer.split(b"\n", 1)
        decoded = msgspec.json.decode(line)
        if not isinstance(decoded, dict):
            raise ChildFailed(f"{self._child.name} answered {line!r}")
        return decoded

    def close(self) -> None:
        self._selector.close()


class Processes:
    """The children of one run; `close` stops them all, last started first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pipe: bool = False,
    ) -> Child:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else out,
                stderr=out,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the harness is single-threaded
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def close(self, grace: float = 5.0) -> None:
        for child in reversed(self.children):
            if child.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            try:
                child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=2)
            for stream in (child.popen.stdin, child.popen.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self.children.clear()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat`` utime + stime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of the whole line


def memory_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set size, MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = round(int(value.split()[0]) / 1024, 2)
    return {"rss": found.get("VmRSS", 0.0), "peak": found.get("VmHWM", 0.0)}
