"""openapi.yaml as the single source of truth: real responses are checked against its schemas."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
_URI = "urn:pos-coupon-gateway:openapi"


@cache
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return loaded


@cache
def _registry() -> Registry[Any]:
    return Registry().with_resource(_URI, Resource(contents=spec(), specification=DRAFT202012))


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    responses = spec()["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document status {status}"
    response = _resolve(responses[str(status)])
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def _rebase(schema: Any) -> Any:
    """Point local ``#/...`` references at the registered document."""
    if isinstance(schema, dict):
        return {k: (f"{_URI}{v}" if k == "$ref" else _rebase(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema


def assert_matches(path: str, method: str, status: int, body: Any) -> None:
    """``body`` is valid against what openapi.yaml documents for this route and status."""
    validator = Draft202012Validator(_rebase(response_schema(path, method, status)), registry=_registry())
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def assert_schema(name: str, body: Any) -> None:
    validator = Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{name}"}, registry=_registry())
    errors = list(validator.iter_errors(body))
    assert not errors, "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
