"""The malformed-request log's limiter: one line per peer per window, the lines held back counted into the next,
and a bounded table of peers. A fake clock: no waiting."""

from __future__ import annotations

from service.web.server import PeerLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_peer_per_window_with_the_count_held_back() -> None:
    clock = Clock()
    log = PeerLog(window=60, clock=clock)
    assert log.admit("10.0.0.1") == 0
    assert [log.admit("10.0.0.1") for _ in range(19)] == [None] * 19
    assert log.admit("10.0.0.2") == 0, "another peer has its own window"
    clock.now += 59.9
    assert log.admit("10.0.0.1") is None
    clock.now += 0.1
    assert log.admit("10.0.0.1") == 20, "the next line says how many were held back"
    assert log.admit("10.0.0.1") is None


def test_the_table_of_peers_is_bounded() -> None:
    clock = Clock()
    log = PeerLog(window=60, max_peers=3, clock=clock)
    assert [log.admit(f"10.0.0.{i}") for i in range(5)] == [0, 0, 0, None, None]
    clock.now += 60
    assert log.admit("10.0.0.4") == 0, "expired peers make room"
