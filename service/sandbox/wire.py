"""Rendering the domain as Capillary's JSON (pure). Shapes and JSON types follow the doc samples exactly:

- series objects: every field of the `GET /v2/coupon/series` sample, in its order; numbers integral -> int;
  ``seriesCode`` is the series' *string* code; ``redeemAtStore``/``redemptionRange`` are JSON *strings*.
- coupon objects (issue, details): ``discountValue``/``discountUpto`` always floats (``10.0``).
- redeem items (`ItemShape`): ``seriesCode`` is the *int* series id, ``couponValue`` a float: the coupon's face
  value (ABS: the amount, PERC: the percent; the "Redeem Coupons" sample has ``isAbsolute: false,
  couponValue: 10.0`` on a bill of 2000), never the discount given on this bill; ``discountValue``/
  ``discountUpto`` ints when integral.
- upload jobs: ``createdOn``/``updatedOn`` are *strings* of epoch millis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from .state import (
    EPOCH,
    ORG_ID,
    SUCCESS,
    Coupon,
    Customer,
    Redemption,
    Series,
    SeriesStats,
    UploadJob,
    Verdict,
    message_for,
)

Json = dict[str, Any]


def record_json(record: Any) -> Json:
    """A record (a dataclass) as the sandbox's admin API shows it: every field in order, camelCase names,
    datetimes as ``isoformat()``. One rule, so a field added to a record shows without a second list to keep."""
    return {_camel(f.name): _admin_value(getattr(record, f.name)) for f in fields(record)}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _admin_value(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def millis(when: datetime) -> int:
    return (when - EPOCH) // timedelta(milliseconds=1)


def num(value: Decimal) -> int | float:
    """An int when integral (as the samples show ``"discountValue": 500``), else a float."""
    return int(value) if value == value.to_integral_value() else float(value)


def flat_error(code: int, message: str | None = None) -> Json:
    return {"status": False, "code": code, "message": message or message_for(code)}


def status_entry(code: int, message: str | None = None) -> Json:
    """``{status, code, message}`` as used in warnings[] / errors[] entries."""
    return {"status": code == SUCCESS, "code": code, "message": message or message_for(code)}


# ---- customers -----------------------------------------------------------------------------------------------


def customer_json(customer: Customer, *, identifiers_all: bool = True) -> Json:
    identifiers = [
        {"type": kind, "value": value}
        for kind, value in (
            ("mobile", customer.mobile),
            ("email", customer.email),
            ("externalId", customer.external_id),
        )
        if value is not None
    ]
    profile: Json = {
        "firstName": customer.first_name,
        "lastName": customer.last_name,
        "fields": {},
        "identifiers": identifiers,
        "commChannels": [],
        "userId": customer.id,
        "accountId": "",
        "autoUpdateTime": iso(customer.updated_on),
    }
    if identifiers_all:
        profile["identifiersAll"] = [dict(i) for i in identifiers]
    return {"id": customer.id, "profiles": [profile]}


# ---- series --------------------------------------------------------------------------------------------------

SERIES_DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "validDaysFromCreation": 30,
        "isTransferrable": False,
        "sameUserMultipleRedeem": False,
        "isReferralExistingUsersAllowed": False,
        "isValidationRequired": False,
        "isValidWithDiscountedItem": False,
        "createdBy": 75016470,
        "smsTemplate": "Hi {{first_name}}, your voucher code {{voucher}} is valid till {{valid_till}}",
        "isSMSDisabled": False,
        "doNotResendExistingVoucher": True,
        "mutualExclusiveSeriesIds": "[]",
        "isDvsEnabled": False,
        "priority": 0,
        "shortSMSTemplate": "Hello {{cust_name}}, your voucher code is {{voucher_code}}",
        "minDaysBetweenVouchers": -1,
        "maxReferralsPerReferee": -1,
        "dvsItems": "false",
        "campaignId": -1,
        "sourceOrgId": -1,
        "issueToLoyalty": False,
        "redeemStoreType": "redeemable_stores",
        "offlineRedeemType": False,
        "isOldFlowEnabled": False,
        "isPreRedeemEventRequired": False,
        "termsAndConditions": "T&C apply",
        "signalRedemptionEvent": True,
        "syncToClient": False,
        "showPinCode": False,
        "ownedBy": "NONE",
        "ownerId": -1,
        "ownerValidity": 0,
        "alphaNumeric": True,
        "shortCodeLength": 0,
        "fixedExpiryDate": 0,
        "numTotal": -1,
        "resendMessageEnabled": True,
        "seriesType": "UNDEFINED",
        "clientHandlingType": "DISC_CODE",
        "externalIssual": False,
        "updateProductData": False,
    }
)


def series_json(series: Series, stats: SeriesStats, *, created: bool = False) -> Json:
    """The series object of `GET /v2/coupon/series`; `created` adds what the create response adds."""

    def extra(key: str, default: Any = None) -> Any:
        if key in series.extra:
            return series.extra[key]
        return SERIES_DEFAULTS.get(key, default)

    last_used = max(
        (t for t in (stats.latest_issual, stats.latest_redemption) if t is not None), default=series.created_on
    )
    body: Json = {
        "id": series.id,
        "orgId": ORG_ID,
        "description": series.description,
        "discountCode": series.discount_code,
        "validTillDate": iso(series.valid_till),
        "validDaysFromCreation": extra("validDaysFromCreation"),
        "expiryStrategyValue": series.expiry_strategy_value,
        "maxCreate": series.max_create,
        "maxRedeem": series.max_redeem,
        "isTransferrable": extra("isTransferrable"),
        "anyUser": series.any_user,
        "sameUserMultipleRedeem": extra("sameUserMultipleRedeem"),
        "isReferralExistingUsersAllowed": extra("isReferralExistingUsersAllowed"),
        "isMultipleUseAllowed": series.is_multiple_use_allowed,
        "isValidationRequired": extra("isValidationRequired"),
        "isValidWithDiscountedItem": extra("isValidWithDiscountedItem"),
        "createdBy": extra("createdBy"),
        "numIssued": stats.num_issued,
        "numRedeemed": stats.num_redeemed,
        "createdOn": iso(series.created_on),
        "lastUsed": iso(last_used),
        "seriesCode": series.series_code,
        "smsTemplate": extra("smsTemplate"),
        "isSMSDisabled": extra("isSMSDisabled"),
        "info": extra("info", series.description),
        "isMultipleVouchersPerUserAllowed": series.is_multiple_vouchers_per_user_allowed,
        "doNotResendExistingVoucher": extra("doNotResendExistingVoucher"),
        "mutualExclusiveSeriesIds": extra("mutualExclusiveSeriesIds"),
        "storeIdsJson": series.redeem_at_store_json(),
        "isDvsEnabled": extra("isDvsEnabled"),
        "dvsExpiryDate": iso(series.created_on + timedelta(days=30)),
        "priority": extra("priority"),
        "shortSMSTemplate": extra("shortSMSTemplate"),
        "maxVouchersPerUser": series.max_vouchers_per_user,
        "minDaysBetweenVouchers": extra("minDaysBetweenVouchers"),
        "maxReferralsPerReferee": extra("maxReferralsPerReferee"),
        "discountUpto": num(series.discount_upto),
        "discountValue": num(series.discount_value),
        "dvsItems": extra("dvsItems"),
        "redemptionRange": series.redemption_range.raw,
        "minBillAmount": num(series.min_bill_amount),
        "maxBillAmount": num(series.max_bill_amount),
        "redeemAtStore": series.redeem_at_store_json(),
        "campaignId": extra("campaignId"),
        "tag": extra("tag", series.description),
        "maxRedemptionsInSeriesPerUser": series.max_redemptions_in_series_per_user,
        "minDaysBetweenRedemption": series.min_days_between_redemption,
        "redemptionValidFrom": iso(series.redemption_valid_from),
        "sourceOrgId": extra("sourceOrgId"),
        "issueToLoyalty": extra("issueToLoyalty"),
        "redeemStoreType": extra("redeemStoreType"),
        "offlineRedeemType": extra("offlineRedeemType"),
        "isOldFlowEnabled": extra("isOldFlowEnabled"),
        "isPreRedeemEventRequired": extra("isPreRedeemEventRequired"),
        "termsAndConditions": extra("termsAndConditions"),
        "signalRedemptionEvent": extra("signalRedemptionEvent"),
        "syncToClient": extra("syncToClient"),
        "showPinCode": extra("showPinCode"),
    }
    if "targetUserDetails" in series.extra:
        body["targetUserDetails"] = series.extra["targetUserDetails"]
    body.update(
        {
            "numUploadedNonIssued": stats.num_uploaded_non_issued,
            "numUploadedTotal": stats.num_uploaded_total,
            "redemptionValidAfterDays": series.redemption_valid_after_days,
            "ownedBy": extra("ownedBy"),
            "ownerId": extra("ownerId"),
            "ownerValidity": extra("ownerValidity"),
            "alphaNumeric": extra("alphaNumeric"),
            "shortCodeLength": extra("shortCodeLength"),
            "randomCodeLength": series.random_code_length,
            "fixedExpiryDate": extra("fixedExpiryDate"),
            "numTotal": extra("numTotal"),
            "latestIssualTime": 0 if stats.latest_issual is None else millis(stats.latest_issual),
            "latestRedemptionTime": 0 if stats.latest_redemption is None else millis(stats.latest_redemption),
            "resendMessageEnabled": extra("resendMessageEnabled"),
            "seriesType": extra("seriesType"),
            "clientHandlingType": extra("clientHandlingType"),
            "expiryStrategyType": series.expiry_strategy_type,
            "discountOn": series.discount_on,
            "discountType": series.discount_type,
            "externalIssual": extra("externalIssual"),
            "updateProductData": extra("updateProductData"),
        }
    )
    if created:
        body["warnings"] = []
    return body


# ---- coupons -------------------------------------------------------------------------------------------------


def coupon_json(coupon: Coupon, series: Series) -> Json:
    """The common coupon fields of the issue / bulk issue / details samples."""
    return {
        "code": coupon.code,
        "seriesId": series.id,
        "description": series.description,
        "discountCode": series.discount_code,
        "validTill": iso(coupon.valid_till),
        "discountType": series.discount_type,
        "discountValue": float(series.discount_value),
        "discountUpto": float(series.discount_upto),
        "discountOn": series.discount_on,
        "detailedInfo": series.extra.get("info", series.description),
    }


def issued_coupon_json(coupon: Coupon, series: Series, customer: Customer | None, redemption_count: int) -> Json:
    body = coupon_json(coupon, series)
    if customer is not None:
        body["customer"] = customer_json(customer)
    body.update({"redemptionCount": redemption_count, "id": coupon.id, "warnings": []})
    return body


def bulk_issued_coupon_json(coupon: Coupon, series: Series, redemption_count: int) -> Json:
    body = coupon_json(coupon, series)
    body.update({"redemptionCount": redemption_count, "id": coupon.id})
    return body


def coupon_details_json(coupon: Coupon, series: Series, redemption_count: int) -> Json:
    body = coupon_json(coupon, series)
    body.update(
        {
            "id": coupon.id,
            "redemptionCount": redemption_count,
            "issuedTo": -1 if coupon.customer_id is None else coupon.customer_id,
        }
    )
    return body


def customer_coupon_json(coupon: Coupon, series: Series, redemptions: list[Redemption]) -> Json:
    return {
        "id": coupon.id,
        "code": coupon.code,
        "seriesId": series.id,
        "discountType": series.discount_type,
        "discountValue": float(series.discount_value),
        "validTill": iso(coupon.valid_till),
        "redemptionCount": len(redemptions),
        "redemptions": [
            {
                "id": r.id,
                "date": iso(r.redeemed_on),
                "transactionNumber": r.transaction_number,
                "redeemedAt": r.store,
            }
            for r in redemptions
        ],
    }


# ---- redemption ----------------------------------------------------------------------------------------------


def item_status(code: int, message: str | None = None) -> Json:
    """The nested ``redemptionStatus`` of a redeem item."""
    text = message or message_for(code)
    ok = code == SUCCESS
    return {
        "statusCode": {"status": ok, "message": text, "code": code},
        "warnings": [],
        "warningsAsStatusCode": [],
        "message": text,
        "code": code,
        "success": ok,
    }


@dataclass(frozen=True)
class ItemShape:
    """Which of the documented redeem item shapes to render.

    - `DOC_ITEM`: the "Redeem Coupons" sample: ``{id, warnings, appendedErrorMessage, code, discountCode,
      seriesCode, isAbsolute, couponValue}``, no status of its own (the verdict is the top-level one);
    - `BULK_ITEM`: the "Redeem Customer Coupons (Bulk)" sample's ``result``: the above plus
      ``currencyInput``, ``localToBaseCurrencyExchangeRate``, the nested ``redemptionStatus``, ``discountType``,
      ``discountValue``, ``discountUpto``;
    - `NESTED_ITEM`: the bulk shape plus ``redemptionId`` (the "Redeem Coupon (Single)" sample, and what
      other clusters send).
    """

    nested: bool
    redemption_id: bool


DOC_ITEM: Final = ItemShape(nested=False, redemption_id=False)
BULK_ITEM: Final = ItemShape(nested=True, redemption_id=False)
NESTED_ITEM: Final = ItemShape(nested=True, redemption_id=True)


def face_value(series: Series | None) -> float:
    """``couponValue``: the coupon's face value (ABS: the amount off; PERC: the percent), as the samples show
    (``isAbsolute: false, couponValue: 10.0`` on a bill of 2000), not the discount given on this bill."""
    return 0.0 if series is None else float(series.discount_value)


def redeem_item(
    shape: ItemShape,
    *,
    item_id: int,
    code: str,
    series: Series | None,
    status: int = SUCCESS,
    message: str | None = None,
) -> Json:
    """One item of a redeem / bulk redeem answer. Series fields are omitted when the code is unknown, so a
    tolerant decoder must treat them as optional.

    A refused item says so in ``appendedErrorMessage`` (text). In the nested shapes it also carries its own
    status and names the reason in ``warnings``; in the doc shape it carries no code at all (``warnings``
    empty, as in the sample), so the top-level ``redemptionStatus`` is the only verdict: the hardest case
    for a client, and the one the documents show."""
    ok = status == SUCCESS
    text = message or message_for(status)
    body: Json = {"id": item_id}
    if shape.redemption_id:
        body["redemptionId"] = item_id
    if shape.nested:
        body.update({"currencyInput": False, "localToBaseCurrencyExchangeRate": 0})
    body.update(
        {
            "warnings": [] if ok or not shape.nested else [status_entry(status, text)],
            "appendedErrorMessage": "" if ok else text,
            "code": code,
        }
    )
    if series is not None:
        body.update({"discountCode": series.discount_code, "seriesCode": series.id})
    body.update({"isAbsolute": series is not None and series.is_absolute, "couponValue": face_value(series)})
    if shape.nested:
        body["redemptionStatus"] = item_status(status, text)
        if series is not None:
            body.update(
                {
                    "discountType": series.discount_type,
                    "discountValue": num(series.discount_value),
                    "discountUpto": num(series.discount_upto),
                }
            )
    return body


def redeemed_item(redemption: Redemption, series: Series, shape: ItemShape) -> Json:
    return redeem_item(shape, item_id=redemption.id, code=redemption.code, series=series)


def failed_item(code: str, series: Series | None, status: int, shape: ItemShape, message: str | None = None) -> Json:
    """A redeem item that was not redeemed (id -1)."""
    return redeem_item(shape, item_id=-1, code=code, series=series, status=status, message=message)


def dry_run_item(verdict: Verdict, shape: ItemShape) -> Json:
    """An item of a successful ``bulk/redeem?is_redeemable=true`` dry run (no redemption id: -1)."""
    assert verdict.series is not None
    return redeem_item(shape, item_id=-1, code=verdict.code, series=verdict.series)


def add_warning(item: Json, warning: Json) -> None:
    """A warning on a redeem item: in its ``warnings`` and, in the nested shapes, its status' warnings."""
    item["warnings"].append(dict(warning))
    nested = item.get("redemptionStatus")
    if isinstance(nested, dict):
        nested["warnings"].append(dict(warning))
        nested["warningsAsStatusCode"].append(dict(warning))


def top_status(code: int, message: str | None = None) -> Json:
    """The top-level ``redemptionStatus`` (key order of the "Redeem Coupons" sample)."""
    return {"status": code == SUCCESS, "code": code, "message": message or message_for(code)}


def is_redeemable_item(
    verdict: Verdict, *, status: int | None = None, message: str | None = None, series_id: bool = False
) -> Json:
    """An item of the documented sample; ``series_id`` adds ``seriesId`` (no sample shows it) when known."""
    code = verdict.status if status is None else status
    redeemable = code == SUCCESS
    text = message or message_for(code)
    body: Json = {
        "appendedErrorMessage": "" if redeemable else text,
        "code": verdict.code,
        "isAbsolute": verdict.series is not None and verdict.series.is_absolute,
        "isRedeemable": redeemable,
        "numberOfRedemptionsByUser": verdict.redemptions_by_user,
        "redemptionsLeft": verdict.redemptions_left,
        "warnings": [] if redeemable else [status_entry(code, text)],
    }
    if series_id and verdict.series is not None:
        body["seriesId"] = verdict.series.id
    return body


# ---- uploads -------------------------------------------------------------------------------------------------


def upload_job_json(job: UploadJob) -> Json:
    body: Json = {"jobId": job.job_id}
    body["uploadStatus" if job.kind == "coupons" else "uploadRedeemedCouponStatus"] = job.status
    body.update(
        {
            "createdOn": str(millis(job.created_on)),
            "updatedOn": str(millis(job.updated_on)),
            "errorFileUrl": job.error_file_url,
            "successFileUrl": None,
            "uploadedFileUrl": job.uploaded_file_url,
            "totalUploadedCount": job.total_uploaded_count,
            "actualRowCount": job.actual_row_count,
            "errorCount": job.error_count,
            "uploadTableName": job.upload_table_name,
            "uploadedFileName": job.file_name,
        }
    )
    if job.kind == "coupons":
        body.update({"audienceGroupId": 0, "audienceGroupVersionId": 0})
    return body


def upload_envelope(series_id: int, jobs: list[UploadJob], *, kind: str, file_name: str | None = None) -> Json:
    key = "uploadJobStatuses" if kind == "coupons" else "redeemUploadJobStatuses"
    result: Json = {"orgId": ORG_ID, "couponSeriesId": series_id, key: [upload_job_json(j) for j in jobs]}
    if file_name is not None:
        result["fileName"] = file_name
    return {"success": True, "status": 200, "result": result}


def v1_error(status: int, message: str, code: int | None = None) -> Json:
    body: Json = {"success": False, "status": status, "message": message}
    if code is not None:
        body["code"] = code
    return body
