"""The back office's refusals: a catalog entry, the words naming what was wrong, and when to try again.

The upstream's own failures travel as :class:`~service.redemption.flow.UpstreamFailure`, as in the redemption flow;
everything else a use case refuses is a :class:`BackOfficeError`. The web layer turns both into the error envelope.
"""

from __future__ import annotations

from service.redemption.catalog import CATALOG, LocalError
from service.redemption.models import Failure


class BackOfficeError(Exception):
    """A request refused with one catalog entry. ``message`` replaces the entry's own (to name a field or say what
    to do); ``said`` is the upstream's refusal behind it (its code and words), if any; ``retry_after`` is when
    trying again makes sense (whole seconds), when that is known."""

    def __init__(
        self,
        error: LocalError,
        message: str | None = None,
        *,
        said: Failure | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message or error.message)
        self.error, self.message = error, message or error.message
        self.said = said
        self.retry_after = retry_after

    @classmethod
    def invalid(cls, message: str) -> BackOfficeError:
        """400 ``INVALID_REQUEST``: ``message`` names the field and the rule."""
        return cls(CATALOG["INVALID_REQUEST"], message)
