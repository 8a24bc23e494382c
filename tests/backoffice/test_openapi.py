"""openapi.yaml documents every back-office route, and its schemas have the fields of the back office's models."""

from __future__ import annotations

import msgspec
import pytest

from service.app import create_app
from service.config import CapillarySettings, Settings
from service.web import backoffice_schemas as schemas
from tests.api.spec import spec


@pytest.mark.parametrize(
    ("model", "schema"),
    [
        (schemas.IssueIn, "IssueRequest"),
        (schemas.BulkIssueIn, "BulkIssueRequest"),
        (schemas.CouponOut, "Coupon"),
        (schemas.BulkIssuedOut, "BulkIssued"),
        (schemas.BulkIssueOut, "BulkIssueResponse"),
        (schemas.CouponsOut, "CouponsResponse"),
        (schemas.RowErrorOut, "RowError"),
        (schemas.ReportOut, "UploadReport"),
        (schemas.JobCounts, "JobCounts"),
        (schemas.JobOut, "UploadJob"),
        (schemas.UploadAcceptedOut, "UploadAccepted"),
        (schemas.DryRunOut, "DryRunResponse"),
        (schemas.JobsOut, "UploadJobs"),
        (schemas.InvalidUploadOut, "InvalidUploadResponse"),
    ],
)
def test_models_and_schemas_have_the_same_fields(model: type[msgspec.Struct], schema: str) -> None:
    generated = msgspec.json.schema(model)
    name = generated["$ref"].rsplit("/", 1)[-1]
    generated_schema = generated["$defs"][name]
    documented = spec()["components"]["schemas"][schema]
    assert set(documented["properties"]) == set(generated_schema["properties"])
    assert set(documented.get("required", [])) == set(generated_schema.get("required", []))


def test_series_request_lists_the_upstream_fields() -> None:
    from service.capillary.models import SeriesSpec

    upstream = {f.encode_name for f in msgspec.structs.fields(SeriesSpec)}
    assert set(spec()["components"]["schemas"]["SeriesRequest"]["properties"]) == upstream
    assert {f.encode_name for f in msgspec.structs.fields(schemas.SeriesIn)} == upstream  # taken by the same names


def test_every_back_office_route_is_documented() -> None:
    url = "http://127.0.0.1:1"
    settings = Settings(capillary=CapillarySettings(api_url=url, upload_url=url, auth="oauth"))
    app = create_app(settings)
    routes = {
        (r.resource.canonical, r.method.lower())
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(("/v1/coupons", "/v1/series"))
    }
    documented = {(path, method) for path, item in spec()["paths"].items() for method in item if method != "parameters"}
    assert routes <= documented
    assert len(routes) == 11
