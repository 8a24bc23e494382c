"""Small async building blocks shared by the gateway's own clients."""

from __future__ import annotations

from typing import Self


class AsyncClosing:
    """An object used as ``async with Thing(...) as thing:`` that is closed by ``await thing.close()`` on exit.

    Subclasses implement ``close``; entering returns the object itself.
    """

    async def close(self) -> None:
        """Release what the object holds; the default holds nothing."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
