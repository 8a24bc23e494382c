"""The chart checks, without a cluster or a helm binary.

- render and lint with Helm's own engine, embedded by ``helm-python-sdk`` (the chart's ``values.schema.json`` and
  its template ``fail`` checks run as in ``helm install``);
- the values, merged as Helm merges them, against ``values.schema.json`` (jsonschema, draft 7);
- every rendered manifest against Kubernetes' OpenAPI schemas (``kubernetes-validate --strict``, offline) for the
  oldest Kubernetes the chart supports and the newest the validator knows; the Prometheus Operator's kinds, which
  those schemas lack, against the schemas in ``schemas/`` here.

``problems(values)`` runs them all and returns every finding as one line; the tests assert on it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "pos-coupon-gateway"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
VALUES = Path(__file__).resolve().parent / "values"
RELEASE = "pcg"
NAMESPACE = "pos"
#: The chart's kubeVersion floor (Chart.yaml); the newest version kubernetes-validate knows is added to it.
OLDEST_KUBERNETES = "1.29.0"
#: Kinds that kubernetes-validate has no schema for, and the schema here that checks them instead.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com-v1-servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com-v1-prometheusrule.json",
}
#: The only lint finding tolerated: an informational one (severity 1).
LINT_ALLOWED = {"icon is recommended"}


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def tool(module: str, install: str = "pip install -r requirements-ci.txt") -> ModuleType:
    """Import a CI tool, or skip the test; under CI=true (where .ci/chart-checks installs them) a missing tool fails."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if in_ci():
            pytest.fail(f"{module} must be installed under CI ({install})")
        pytest.skip(f"{module} is not installed ({install})")


def binary(name: str, install: str = "pip install -r requirements-ci.txt") -> str:
    """A CI tool's executable, on PATH or beside this Python (an inactive virtualenv); skip or, under CI, fail."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if in_ci():
            pytest.fail(f"{name} must be installed under CI ({install})")
        pytest.skip(f"{name} is not installed ({install})")
    return found


def helm() -> ModuleType:
    return tool("helm_python")


#: What the chart cannot default outside sandbox mode: the API-keys file `coupon-gateway serve` needs to start.
API_KEYS = {"apiKeys": {"existingSecret": "pcg-api-keys"}}


def with_api_keys(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """``values`` plus an API-keys Secret (values of their own win): the least the chart renders outside sandbox."""
    values = dict(values or {})
    values["apiKeys"] = {**API_KEYS["apiKeys"], **values.get("apiKeys", {})}
    return values


def values_file(name: str) -> dict[str, Any]:
    """A values file by name: ``default`` (the chart's defaults, with only the API-keys Secret they cannot name),
    ``production`` (the chart's ci/), or one in values/ here."""
    if name == "default":
        return with_api_keys()
    path = CHART / "ci" / f"{name}-values.yaml"
    if not path.exists():
        path = VALUES / f"{name}.yaml"
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), path
    return loaded


VALUES_FILES = ("default", "production", "inline-secrets", "sandbox")


@dataclass
class Release:
    """A rendered release: the manifests by template, their objects, and NOTES.txt."""

    manifests: dict[str, str]
    objects: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def template(self, name: str) -> str:
        return self.manifests[f"pos-coupon-gateway/templates/{name}"]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod["containers"]
        assert isinstance(container, dict)
        return container

    @property
    def settings(self) -> dict[str, str]:
        """The ConfigMap the container takes its environment from."""
        (source,) = self.container["envFrom"]
        config = self.one("ConfigMap", source["configMapRef"]["name"])
        data: dict[str, str] = config["data"]
        return data

    def env_names(self) -> set[str]:
        """Every variable the container gets: the ConfigMap's keys and its own env entries."""
        return set(self.settings) | {e["name"] for e in self.container.get("env", [])}

    def env(self, name: str) -> dict[str, Any]:
        (entry,) = [e for e in self.container.get("env", []) if e["name"] == name]
        assert isinstance(entry, dict)
        return entry


@cache
def _chart() -> Any:
    return helm().Chart.load(CHART)


def render(values: dict[str, Any] | None = None, *, chart: Path | None = None) -> Release:
    """Render as ``helm template pcg helm/pos-coupon-gateway -n pos -f ...`` would; a HelmError if refused."""
    loaded = _chart() if chart is None else helm().Chart.load(chart)
    manifests: dict[str, str] = loaded.render(values or None, name=RELEASE, namespace=NAMESPACE, is_install=True)
    release = Release(manifests)
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            release.notes = text
            continue
        release.objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return release


def merged_values(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chart's defaults coalesced with ``values``, as an install uses them."""
    merged: dict[str, Any] = _chart().merge_values(values or None)
    return merged


@cache
def values_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def schema_problems(values: dict[str, Any] | None = None) -> list[str]:
    jsonschema = tool("jsonschema")
    validator = jsonschema.Draft7Validator(values_schema())
    return [
        f"values.schema.json: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(merged_values(values))
    ]


def lint_problems(values: dict[str, Any] | None = None, *, kube_version: str = OLDEST_KUBERNETES) -> list[str]:
    """``helm lint --strict`` findings above information, and any information not known to be harmless.
    (Lint renders with ``fail`` turned into a log line: the refusals are caught by ``render``.)"""
    report = helm().lint(CHART, values or None, strict=True, kube_version=f"v{kube_version}")
    found = [
        f"lint: {m['path']}: {m['error'].strip()}"
        for m in report["messages"]
        if m["severity"] >= 2 or m["error"] not in LINT_ALLOWED
    ]
    return found + [f"lint: {e}" for e in report.get("errors") or []]


def kubernetes_versions() -> tuple[str, ...]:
    utils = tool("kubernetes_validate.utils")
    return (OLDEST_KUBERNETES, utils.latest_version())


def manifest_problems(release: Release) -> list[str]:
    """Each object against Kubernetes' strict schemas, or against ours for the Prometheus Operator's kinds."""
    validate = tool("kubernetes_validate")
    utils = tool("kubernetes_validate.utils")
    jsonschema = tool("jsonschema")
    found: list[str] = []
    for obj in release.objects:
        what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        crd = CRD_SCHEMAS.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if crd is not None:
            schema = json.loads((SCHEMAS / crd).read_text())
            found += [
                f"{what}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
            ]
            continue
        for version in kubernetes_versions():
            try:
                validate.validate(obj, version, strict=True)
            except utils.ValidationError as e:
                found.append(f"{what} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
            except utils.SchemaNotFoundError as e:
                found.append(f"{what}: no schema to validate it against: {e.message}")
    return found


def problems(values: dict[str, Any] | None = None) -> list[str]:
    """Every check on one set of values: schema, render (with the chart's refusals), lint, the manifests."""
    found = schema_problems(values)
    try:
        release = render(values)
    except helm().HelmError as e:
        return [*found, f"render: {e}"]
    return found + lint_problems(values) + manifest_problems(release)
