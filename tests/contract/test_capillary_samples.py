"""Every sample payload in the upstream documents decodes with the client's own models.

Beyond "it decodes", the checks prove the models read what the samples carry: each declared field is found
under its wire name in some sample (or is listed below as known from capillary-notes.md only), and decoded
values equal the sample's.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from service.capillary import models as m
from service.capillary.models import decode
from tests.contract.samples import Sample, load_samples

SAMPLES = load_samples()

# Which model reads each documented endpoint's request and response.
MODELS: dict[str, tuple[type[msgspec.Struct] | None, type[msgspec.Struct]]] = {
    "Redeem Coupons": (m.RedeemRequest, m.RedeemResponse),
    "Check if Coupon is Redeemable": (None, m.IsRedeemableResponse),
    "Create Card Series": (m.CreateSeriesRequest, m.Series),
    "Issue Coupon to Customer (Single)": (m.IssueRequest, m.Coupon),
    "Issue Coupons to Customer (Bulk)": (m.BulkIssueRequest, m.BulkIssueResponse),
    "Redeem Coupon (Single)": (m.RedeemRequest, m.RedeemResponse),
    "Redeem Customer Coupons (Bulk)": (m.RedeemRequest, m.BulkRedeemResponse),
    "Get Coupon Details": (None, m.CouponDetailsResponse),
    "Get Coupon Series Details": (None, m.SeriesListResponse),
    "Upload Coupons (Batch)": (None, m.UploadResponse),
    "Upload Coupons (Batch)post": (None, m.UploadResponse),
    "Upload Redeemed Coupons": (None, m.UploadResponse),
    "Get Status of Uploaded Coupons": (None, m.UploadResponse),
    "Get Uploaded Coupons' Status": (None, m.UploadResponse),
    "Get Status of Redeemed Coupons": (None, m.UploadResponse),
}

# Fields the client reads that no sample shows: each is optional, and the named test proves the fallback that
# serves when it is absent (as it is in every documented answer).
FALLBACKS: dict[tuple[type[msgspec.Struct], str], tuple[str, str]] = {
    # details=true is documented to add series details, no sample shows them: else one coupon-details lookup
    (m.IsRedeemableItem, "seriesId"): (
        "tests/unit/test_flow.py",
        "test_validate_learns_the_series_of_passing_codes_once_for_all",
    ),
    # newer clusters (capillary-notes.md); else the item's own ``id``, as in the "Redeem Coupons" sample
    (m.RedeemItem, "redemptionId"): (
        "tests/api/test_doc_shapes.py",
        "test_a_success_with_a_notification_warning_is_redeemed",
    ),
}
# Declared fields that no sample shows and the client only sends: a PERC series needs its cap when created.
SENT_ONLY = {(m.SeriesSpec, "discountUpto")}
NOT_IN_SAMPLES: dict[type[msgspec.Struct], set[str]] = {}
for _model_type, _name in (*FALLBACKS, *SENT_ONLY):
    NOT_IN_SAMPLES.setdefault(_model_type, set()).add(_name)
ENDPOINT_ONLY_IN_NOTES = (m.CustomerCouponsResponse, m.ReactivateResponse, m.TokenResponse)


def _model(sample: Sample) -> type[msgspec.Struct]:
    request, response = MODELS[sample.heading]
    model = request if sample.role == "request" else response
    assert model is not None, f"{sample.id}: no model for this role"
    return model


def test_every_document_has_samples() -> None:
    assert len(SAMPLES) >= 20
    files = {s.file[:3] for s in SAMPLES}
    assert files >= {"000", "002", "003"}  # 001 and 004 document their responses in tables only


def test_every_sample_is_mapped() -> None:
    unmapped = [s.id for s in SAMPLES if s.heading not in MODELS]
    assert not unmapped, f"a documented payload has no model: {unmapped}"
    documented = {s.heading for s in SAMPLES}
    assert set(MODELS) <= documented, f"stale mapping: {set(MODELS) - documented}"


def _same(decoded: Any, raw: Any) -> bool:
    if isinstance(decoded, Decimal) and isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
        return decoded == Decimal(str(raw))
    if isinstance(decoded, int) and isinstance(raw, str) and raw.isdigit():
        return decoded == int(raw)
    return bool(decoded == raw)


def _compare(model: Any, decoded: Any, raw: Any, path: str) -> list[str]:
    """Differences between declared fields of ``decoded`` and the raw sample, recursively."""
    problems = []
    if isinstance(decoded, msgspec.Struct):
        for field in msgspec.structs.fields(type(decoded)):
            if field.encode_name not in raw:
                continue
            name = field.encode_name
            problems += _compare(field.type, getattr(decoded, field.name), raw[name], f"{path}.{name}")
    elif isinstance(decoded, list) and isinstance(raw, list):
        if len(decoded) != len(raw):
            return [f"{path}: {len(decoded)} items, sample has {len(raw)}"]
        for i, (d, r) in enumerate(zip(decoded, raw, strict=True)):
            problems += _compare(None, d, r, f"{path}[{i}]")
    elif not isinstance(decoded, (dict, list)) and not _same(decoded, raw):
        problems.append(f"{path}: decoded {decoded!r}, sample has {raw!r}")
    return problems


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.id)
def test_sample_decodes_with_client_models(sample: Sample) -> None:
    model = _model(sample)
    decoded = decode(model, sample.raw)
    assert isinstance(decoded, model)
    assert _compare(model, decoded, sample.payload, "$") == []


def _struct_types(info: msgspec.inspect.Type) -> list[type[msgspec.Struct]]:
    found: list[type[msgspec.Struct]] = []

    def walk(t: msgspec.inspect.Type) -> None:
        if isinstance(t, msgspec.inspect.StructType):
            found.append(t.cls)
        elif isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.SetType)):
            walk(t.item_type)
        elif isinstance(t, msgspec.inspect.UnionType):
            for sub in t.types:
                walk(sub)

    walk(info)
    return found


def _seen_fields(model: type[msgspec.Struct], raw: Any, seen: dict[type, set[str]]) -> None:
    if isinstance(raw, list):
        for item in raw:
            _seen_fields(model, item, seen)
        return
    if not isinstance(raw, dict):
        return
    names = seen.setdefault(model, set())
    info = msgspec.inspect.type_info(model)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        if field.encode_name in raw:
            names.add(field.encode_name)
            for sub in _struct_types(field.type):
                _seen_fields(sub, raw[field.encode_name], seen)


def test_every_declared_field_is_read_from_some_sample() -> None:
    """A misspelt field name would decode silently to its default; this catches it."""
    seen: dict[type, set[str]] = {}
    for sample in SAMPLES:
        _seen_fields(_model(sample), sample.payload, seen)
    problems = []
    for model, names in seen.items():
        declared = {f.encode_name for f in msgspec.structs.fields(model)}
        missing = declared - names - NOT_IN_SAMPLES.get(model, set())
        if missing and model not in ENDPOINT_ONLY_IN_NOTES:
            problems.append(f"{model.__name__}: {sorted(missing)}")
    assert not problems, f"declared fields no sample carries (typo? or list in NOT_IN_SAMPLES): {problems}"


def test_redeem_samples_give_what_the_gateway_needs() -> None:
    """The values the redemption flow reads, spelled out for the documented success samples."""
    single = next(s for s in SAMPLES if s.heading == "Redeem Coupon (Single)" and s.role == "response")
    reply = decode(m.RedeemResponse, single.raw)
    item = reply.redemption[0]
    assert (item.code, item.capillary_redemption_id, item.series_id) == ("MGU9Y4PM", 369455787, 12313)
    assert item.own_verdict() == m.Said(True, 700, "Coupon processing successful")
    assert reply.verdict(item) == m.Said(True, 700, "Coupon processing successful")
    assert item.discount_rule == ("ABS", Decimal(10), Decimal(0))

    # The older shape: no per-item status; the outcome is the top-level redemptionStatus, the discount the
    # coupon's value (10, a percent here: isAbsolute false, on a bill of 2000) and the series its seriesCode.
    older = next(s for s in SAMPLES if s.heading == "Redeem Coupons" and s.role == "response")
    reply = decode(m.RedeemResponse, older.raw)
    item = reply.redemption[0]
    assert item.own_verdict() is None
    assert reply.verdict(item) == m.Said(True, 700, "Coupon processing successful")
    assert (item.capillary_redemption_id, item.series_id) == (33138363, 14162)
    assert item.discount_rule == ("PERC", Decimal(10), None)

    bulk = next(s for s in SAMPLES if s.heading == "Redeem Customer Coupons (Bulk)" and s.role == "response")
    bulk_reply = decode(m.BulkRedeemResponse, bulk.raw)
    assert [(e.entity_id, bulk_reply.verdict(e), e.result and e.result.code) for e in bulk_reply.response] == [
        (369454015, m.Said(True, 700, "Coupon processing successful"), "U6ER8MJ5")
    ]

    check = decode(m.IsRedeemableResponse, next(s for s in SAMPLES if s.heading.startswith("Check")).raw)
    assert [(i.code, check.verdict(i), i.redemptions_left) for i in check.redemption] == [
        ("6B88U6ED", m.Said(True), -1),
        ("V080OLI6", m.Said(True), -1),
    ]


def test_request_samples_round_trip() -> None:
    """What we send has the documented shape: re-encoding a documented request keeps its meaning."""
    for sample in (s for s in SAMPLES if s.role == "request"):
        model = _model(sample)
        encoded = msgspec.json.decode(msgspec.json.encode(decode(model, sample.raw)))
        assert _compare(model, decode(model, msgspec.json.encode(encoded)), sample.payload, "$") == [], sample.id


def test_every_field_read_has_provenance() -> None:
    """The provenance of every field the client reads: the first documented sample that shows it, or a fallback
    (optional, with the test that proves what serves when it is absent)."""
    provenance: dict[tuple[str, str], str] = {}
    for sample in SAMPLES:
        seen: dict[type, set[str]] = {}
        _seen_fields(_model(sample), sample.payload, seen)
        for model, names in seen.items():
            for name in names:
                provenance.setdefault((model.__name__, name), sample.id)
    for (model, name), (path, test) in FALLBACKS.items():
        provenance[(model.__name__, name)] = f"fallback: {path}::{test}"
    responses = {_model(s) for s in SAMPLES if s.role == "response"}
    read = {
        (sub.__name__, f.encode_name)
        for model in responses
        for sub in [model, *_nested(model)]
        for f in msgspec.structs.fields(sub)
    }
    assert not read - set(provenance), f"fields read without provenance: {sorted(read - set(provenance))}"
    assert provenance[("RedeemResponse", "redemptionStatus")].startswith("003#")


def _nested(model: type[msgspec.Struct]) -> list[type[msgspec.Struct]]:
    found: list[type[msgspec.Struct]] = []
    todo = [model]
    while todo:
        info = msgspec.inspect.type_info(todo.pop())
        assert isinstance(info, msgspec.inspect.StructType)
        for f in info.fields:
            for sub in _struct_types(f.type):
                if sub not in found and sub is not model:
                    found.append(sub)
                    todo.append(sub)
    return found


@pytest.mark.parametrize(("field", "proof"), list(FALLBACKS.items()), ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_field_no_sample_shows_is_optional_with_a_tested_fallback(
    field: tuple[type[msgspec.Struct], str], proof: tuple[str, str]
) -> None:
    model, name = field
    [declared] = [f for f in msgspec.structs.fields(model) if f.encode_name == name]
    assert declared.default is None, f"{model.__name__}.{name} must be optional"
    path, test = proof
    source = (Path(__file__).resolve().parents[2] / path).read_text()
    assert f"def {test}(" in source, f"{path} has no test {test}"
