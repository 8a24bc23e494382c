"""``AsyncClosing``: ``async with`` hands back the object itself and always closes it on the way out."""

from __future__ import annotations

import pytest

from service.aio import AsyncClosing


class Resource(AsyncClosing):
    def __init__(self) -> None:
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


async def test_entering_returns_the_object_and_leaving_closes_it_once() -> None:
    resource = Resource()
    async with resource as entered:
        assert entered is resource
        assert resource.closed == 0
    assert resource.closed == 1


async def test_an_error_inside_the_block_still_closes_and_propagates() -> None:
    resource = Resource()
    with pytest.raises(RuntimeError, match="boom"):
        async with resource:
            raise RuntimeError("boom")
    assert resource.closed == 1


async def test_the_default_close_holds_nothing_to_release() -> None:
    async with AsyncClosing() as plain:
        assert isinstance(plain, AsyncClosing)
