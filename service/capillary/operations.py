"""Every Capillary operation the gateway calls, in one table: its name (the metrics and logs label), HTTP method,
host and path (under ``/v2`` on the API host but for the token's; the series id follows it on the upload
host), the answer it reads, and whose turn it is when the outbound budget runs short.

The client's endpoint methods, the metrics' operation labels and the sandbox's fault targets all read this table,
so a new operation is added here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

from service.capillary.models import (
    BulkIssueResponse,
    BulkRedeemResponse,
    Coupon,
    CouponDetailsResponse,
    CustomerCouponsResponse,
    IsRedeemableResponse,
    ReactivateResponse,
    RedeemResponse,
    Series,
    SeriesListResponse,
    TokenResponse,
    UploadResponse,
)
from service.capillary.resilience import Priority

M = TypeVar("M")
Host = Literal["api", "upload"]


def _always(_: Any) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Operation(Generic[M]):
    """One upstream endpoint.

    ``usable`` says whether a decoded body is an answer at all (a 200 whose list is empty is not);
    ``per_item_errors``: an error status whose body names per-coupon refusals is read like a 200, since the
    caller needs each coupon's verdict.
    """

    name: str
    method: Literal["GET", "POST"]
    path: str
    model: type[M]
    priority: Priority = Priority.BACKOFFICE
    usable: Callable[[M], bool] = _always
    per_item_errors: bool = False
    host: Host = "api"


def _has_token(r: TokenResponse) -> bool:
    return r.data is not None and bool(r.data.access_token)


def _verdicts(r: IsRedeemableResponse | RedeemResponse) -> bool:
    return bool(r.redemption)


def _entries(r: BulkRedeemResponse | BulkIssueResponse) -> bool:
    return bool(r.response)


def _uploaded(r: UploadResponse) -> bool:
    return r.success and r.result is not None


CHECK, REDEEM_FIRST = Priority.CHECK, Priority.REDEEM
TOKEN = Operation("token", "POST", "v3/oauth/token/generate", TokenResponse, usable=_has_token)
IS_REDEEMABLE = Operation("is_redeemable", "GET", "coupon/is_redeemable", IsRedeemableResponse, CHECK, _verdicts, True)
REDEEM = Operation("redeem", "POST", "coupon/redeem", RedeemResponse, REDEEM_FIRST, _verdicts, True)
BULK_REDEEM = Operation("bulk_redeem", "POST", "coupon/bulk/redeem", BulkRedeemResponse, REDEEM_FIRST, _entries, True)
SERIES_GET = Operation("series_get", "GET", "coupon/series", SeriesListResponse, CHECK, lambda r: bool(r.entity))
SERIES_CREATE = Operation("series_create", "POST", "coupon/series", Series)
ISSUE = Operation("issue", "POST", "coupon/issue", Coupon, usable=lambda c: bool(c.code))
BULK_ISSUE = Operation("bulk_issue", "POST", "coupon/bulk/issue", BulkIssueResponse, usable=_entries)
#: Learning a code's series for the POS checks: a check's turn.
COUPON_DETAILS = Operation("coupon_details", "GET", "coupon", CouponDetailsResponse, CHECK)
#: Reconciling redeems already sent: a redeem's turn.
CUSTOMER_COUPONS = Operation("customer_coupons", "GET", "customers/coupons", CustomerCouponsResponse, REDEEM_FIRST)
REACTIVATE = Operation("reactivate", "POST", "coupon/reactivate", ReactivateResponse, REDEEM_FIRST, lambda r: r.success)
UPLOAD_COUPONS = Operation("upload_coupons", "POST", "file", UploadResponse, usable=_uploaded, host="upload")
UPLOAD_REDEEMED = Operation("upload_redeemed", "POST", "redeemFile", UploadResponse, usable=_uploaded, host="upload")
UPLOAD_STATUS = Operation("upload_status", "GET", "getUploadStatus", UploadResponse, usable=_uploaded, host="upload")
REDEEMED_UPLOAD_STATUS = Operation(
    "redeemed_upload_status", "GET", "getUploadRedeemedCouponStatus", UploadResponse, usable=_uploaded, host="upload"
)

#: Every operation, by name.
TABLE: Final[dict[str, Operation[Any]]] = {
    op.name: op
    for op in (
        TOKEN,
        IS_REDEEMABLE,
        REDEEM,
        BULK_REDEEM,
        SERIES_GET,
        SERIES_CREATE,
        ISSUE,
        BULK_ISSUE,
        COUPON_DETAILS,
        CUSTOMER_COUPONS,
        REACTIVATE,
        UPLOAD_COUPONS,
        UPLOAD_REDEEMED,
        UPLOAD_STATUS,
        REDEEMED_UPLOAD_STATUS,
    )
}
#: The operation names (metrics and logs label calls with them; sandbox faults target them).
OPERATIONS: Final = tuple(TABLE)
