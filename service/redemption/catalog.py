"""The local error catalog: stable codes a till and a cashier understand, each with its HTTP status, whether a
retry may help, and a message fit for a cashier's screen. Documented in openapi.yaml; tests keep the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class LocalError:
    code: str
    http_status: int
    retryable: bool
    message: str


def _catalog(*entries: LocalError) -> dict[str, LocalError]:
    return {e.code: e for e in entries}


CATALOG: Final = _catalog(
    # the request itself
    LocalError("INVALID_REQUEST", 400, False, "The request is not valid."),
    LocalError("NOT_FOUND", 404, False, "No such resource."),
    LocalError("METHOD_NOT_ALLOWED", 405, False, "This method is not allowed here."),
    LocalError("PAYLOAD_TOO_LARGE", 413, False, "The request body is too large."),
    LocalError("UNSUPPORTED_MEDIA_TYPE", 415, False, "Send the body as application/json."),
    LocalError("HTTP_ERROR", 400, False, "The request could not be handled."),
    LocalError("MALFORMED_HTTP", 400, False, "The request is not valid HTTP."),
    LocalError("REQUEST_TIMEOUT", 408, True, "The request was not received in time; send it again."),
    # who may call, and how much
    LocalError("UNAUTHENTICATED", 401, False, "Send a valid API key: Authorization: Bearer <key>."),
    LocalError("FORBIDDEN", 403, False, "This API key may not use this route."),
    LocalError("RATE_LIMITED", 429, True, "Too many requests from this key; slow down and try again shortly."),
    LocalError("OVERLOADED", 503, True, "The gateway is busy; try again shortly."),
    # the coupon
    LocalError("COUPON_NOT_FOUND", 404, False, "This coupon code does not exist."),
    LocalError("COUPON_EXPIRED", 422, False, "This coupon has expired."),
    LocalError("CAMPAIGN_EXPIRED", 422, False, "The offer behind this coupon has ended."),
    LocalError("COUPON_NOT_YET_VALID", 422, False, "This coupon cannot be used yet."),
    LocalError("COUPON_ALREADY_REDEEMED", 409, False, "This coupon has already been used."),
    LocalError("COUPON_REVOKED", 422, False, "This coupon has been cancelled."),
    LocalError("COUPON_NOT_FOR_CUSTOMER", 422, False, "This coupon belongs to another customer."),
    LocalError("COUPON_NOT_ISSUED", 422, False, "This coupon was not given to this customer."),
    LocalError("COUPON_TEST_ONLY", 422, False, "This is a test coupon and cannot be used."),
    LocalError("COUPON_VALIDATION_REQUIRED", 422, False, "This coupon needs a validation code."),
    LocalError("COUPON_NOT_REDEEMABLE", 422, False, "This coupon cannot be used."),
    LocalError("BILL_AMOUNT_NOT_ELIGIBLE", 422, False, "The bill amount is outside this coupon's limits."),
    LocalError("STORE_NOT_ALLOWED", 422, False, "This coupon cannot be used in this store."),
    LocalError("OUTSIDE_REDEMPTION_WINDOW", 422, False, "This coupon cannot be used at this day or time."),
    LocalError("REDEMPTION_LIMIT_REACHED", 422, False, "This offer has been used the maximum number of times."),
    LocalError("CUSTOMER_LIMIT_REACHED", 422, False, "This customer has used this offer the maximum number of times."),
    LocalError("REDEMPTION_TOO_SOON", 422, False, "This customer used this offer too recently."),
    LocalError("SIBLING_COUPON_FAILED", 422, False, "Not used because another coupon on this bill was refused."),
    # the customer
    LocalError("CUSTOMER_NOT_FOUND", 404, False, "No customer found with this identifier."),
    LocalError("CUSTOMER_INVALID", 422, False, "This customer cannot use coupons."),
    LocalError("CUSTOMER_BLOCKED", 422, False, "Coupons are blocked for this customer."),
    # back office
    LocalError("SERIES_NOT_FOUND", 404, False, "No such coupon series."),
    LocalError("SERIES_ALREADY_EXISTS", 409, False, "A coupon series with this code already exists."),
    LocalError("COUPON_ISSUE_FAILED", 422, False, "The coupon could not be issued."),
    LocalError("REDEMPTION_NOT_FOUND", 404, False, "No such redemption."),
    LocalError("INVALID_UPLOAD", 400, False, "The file was refused: see the report of its bad rows."),
    LocalError("UPLOAD_JOB_NOT_FOUND", 404, False, "No such upload job."),
    # exactly once
    LocalError("REQUEST_IN_PROGRESS", 409, True, "This request is still being processed; try again shortly."),
    LocalError("COUPON_IN_USE", 409, True, "This coupon is being redeemed in another transaction right now."),
    LocalError("IDEMPOTENCY_KEY_REUSED", 422, False, "This Idempotency-Key was used for a different request."),
    LocalError("TRANSACTION_REUSED", 422, False, "This transaction number was already sent with a different request."),
    LocalError("REDEMPTION_PENDING", 409, True, "The outcome of this redemption is still being confirmed."),
    LocalError("REDEMPTION_NOT_APPLIED", 503, True, "The redemption did not go through; it can be sent again."),
    LocalError("NOTHING_TO_REVERSE", 409, False, "Nothing was redeemed in this redemption."),
    LocalError("ALREADY_REVERSED", 409, False, "This redemption has already been reversed."),
    LocalError(
        "REDEMPTION_REVERSED",
        409,
        False,
        "This redemption was reversed; redeem again under a new transaction number.",
    ),
    LocalError("STATE_STORE_UNAVAILABLE", 503, True, "Redemptions are paused: the gateway cannot record them."),
    # the upstream
    LocalError("UPSTREAM_UNAVAILABLE", 503, True, "The coupon service is unavailable; try again shortly."),
    LocalError("UPSTREAM_TIMEOUT", 504, True, "The coupon service did not answer in time; try again."),
    LocalError("UPSTREAM_ERROR", 502, False, "The coupon service refused the request."),
    LocalError("UPSTREAM_MISCONFIGURED", 502, False, "The coupon service is misconfigured; call support."),
    LocalError(
        "UPSTREAM_BAD_RESPONSE", 502, True, "The coupon service sent an answer the gateway cannot read; try again."
    ),
    LocalError("INTERNAL_ERROR", 500, False, "Internal error; quote the request id to support."),
)


def local_error(code: str) -> LocalError:
    return CATALOG[code]
