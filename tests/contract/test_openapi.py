"""openapi.yaml and the code cannot drift: the error catalog, and the fields of every wire model."""

from __future__ import annotations

import msgspec
import pytest

from service.redemption.catalog import CATALOG
from service.redemption.models import RedemptionRange, SeriesSummary
from service.web import schemas
from service.web.backoffice_schemas import LookupErrorOut
from service.web.errors import ErrorDetail, UpstreamDetail
from tests.api.spec import spec


def test_the_error_catalog_is_documented_exactly() -> None:
    documented = {e["code"]: (e["status"], e["retryable"], e["message"]) for e in spec()["x-error-catalog"]}
    assert documented == {c: (e.http_status, e.retryable, e.message) for c, e in CATALOG.items()}
    enum = spec()["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
    assert sorted(enum) == sorted(CATALOG)


@pytest.mark.parametrize(
    ("model", "schema"),
    [
        (schemas.ValidateIn, "ValidateRequest"),
        (schemas.RedeemIn, "RedeemRequest"),
        (schemas.CustomerIn, "Customer"),
        (schemas.ValidateOut, "ValidateResponse"),
        (schemas.RedeemOut, "RedeemResponse"),
        (schemas.ValidatedCoupon, "ValidatedCoupon"),
        (schemas.RedeemedCoupon, "RedeemedCoupon"),
        (schemas.DiscountOut, "Discount"),
        (schemas.ReversalOut, "ReversalResponse"),
        (schemas.ReversedCoupon, "ReversedCoupon"),
        (SeriesSummary, "SeriesSummary"),
        (RedemptionRange, "RedemptionRange"),
        (ErrorDetail, "Error"),
        (LookupErrorOut, "LookupError"),
        (UpstreamDetail, "UpstreamError"),
    ],
)
def test_models_and_schemas_have_the_same_fields(model: type[msgspec.Struct], schema: str) -> None:
    generated = msgspec.json.schema(model)
    name = generated["$ref"].rsplit("/", 1)[-1]
    generated_schema = generated["$defs"][name]
    documented = spec()["components"]["schemas"][schema]
    assert set(documented["properties"]) == set(generated_schema["properties"])
    assert set(documented.get("required", [])) == set(generated_schema.get("required", []))
