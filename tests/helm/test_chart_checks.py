"""The chart checks pass for every values file we ship, and fail for broken values."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helm import checks


def test_values_schema_is_a_valid_draft7_schema() -> None:
    jsonschema = checks.tool("jsonschema")
    jsonschema.Draft7Validator.check_schema(checks.values_schema())


@pytest.mark.parametrize("name", checks.VALUES_FILES)
def test_values_match_the_schema(name: str) -> None:
    assert checks.schema_problems(checks.values_file(name)) == []


@pytest.mark.parametrize("name", checks.VALUES_FILES)
def test_lint_is_clean(name: str) -> None:
    values = checks.values_file(name)
    assert checks.lint_problems(values) == []
    assert checks.lint_problems(values, kube_version=checks.kubernetes_versions()[-1]) == []


@pytest.mark.parametrize("name", checks.VALUES_FILES)
def test_every_manifest_validates(name: str, release_of: Any) -> None:
    release = release_of(name)
    assert release.objects
    assert checks.manifest_problems(release) == []


def test_the_crd_schemas_catch_mistakes(production: checks.Release) -> None:
    """Our ServiceMonitor and PrometheusRule schemas are strict, like kubernetes-validate --strict."""
    monitor = copy.deepcopy(production.one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    rule = copy.deepcopy(production.one("PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["fore"] = "5m"
    found = checks.manifest_problems(checks.Release({}, [monitor, rule]))
    assert any("intervall" in p for p in found), found
    assert any("fore" in p for p in found), found


def test_production_values_render_the_whole_chart(production: checks.Release) -> None:
    assert production.kinds() == sorted(
        [
            "ConfigMap",  # settings
            "ConfigMap",  # the Grafana dashboard
            "Deployment",
            "HorizontalPodAutoscaler",
            "Ingress",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


def test_default_values_render_a_minimal_release(default: checks.Release) -> None:
    assert default.kinds() == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    assert default.deployment["spec"]["replicas"] == 1
    assert "capillary.apiUrl" in default.notes  # the release says what it still needs


def test_without_api_keys_only_the_sandbox_renders() -> None:
    """`coupon-gateway serve` does not start without GATEWAY_API_KEYS_FILE: the chart says so before installing."""
    with pytest.raises(checks.helm().HelmError, match=r"apiKeys\.existingSecret"):
        checks.render({})
    sandbox = checks.render({"sandbox": {"enabled": True}})
    assert "GATEWAY_API_KEYS_FILE" not in sandbox.env_names()  # the sandbox's demo keys
    assert "api-keys" not in {v["name"] for v in sandbox.pod["volumes"]}
    assert "demo keys" in sandbox.notes


BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("replicas 0", {"replicaCount": 0}, "replicaCount"),
    ("port abc", {"gateway": {"port": "abc"}}, "gateway/port"),
    ("port out of range", {"gateway": {"port": 70000}}, "gateway/port"),
    ("unknown auth", {"capillary": {"auth": "token"}}, "capillary/auth"),
    ("ledger not redis", {"redis": {"url": "http://redis:6379"}}, "redis/url"),
    ("timeout the app refuses", {"capillary": {"timeoutSeconds": 0}}, "capillary/timeoutSeconds"),
    ("a typo", {"replicaCont": 2}, "replicaCont"),
]


@pytest.mark.parametrize(("values", "where"), [(v, w) for _, v, w in BROKEN], ids=[n for n, _, _ in BROKEN])
def test_broken_values_fail_the_checks(values: dict[str, Any], where: str) -> None:
    found = checks.problems(values)
    assert any(p.startswith("values.schema.json") and where in p for p in found), found
    # Helm itself refuses them too: `helm install` would stop before touching the cluster.
    assert any(p.startswith("render:") for p in found), found


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 3}, "3 replicas need Redis"),
        ({"autoscaling": {"enabled": True, "maxReplicas": 4}}, "4 replicas need Redis"),
        ({"sandbox": {"enabled": True}, "replicaCount": 2, "redis": {"url": "redis://r:6379/0"}}, "one replica"),
        ({"terminationGracePeriodSeconds": 28}, "terminationGracePeriodSeconds must exceed"),  # 5 + 3 + 20
        (
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}, "redis": {"url": "redis://r:6379"}},
            "min",
        ),
        ({"capillary": {"existingSecret": "s", "clientKey": "k"}}, "not both"),
        ({"apiKeys": {"existingSecret": "", "content": ""}}, "does not start without its API-keys file"),
        ({"apiKeys": {"enabled": False, "existingSecret": "keys"}}, "for sandbox.enabled only"),
        ({"apiKeys": {"existingSecret": "keys", "content": "[]"}}, "not both"),
        ({"gateway": {"metricsPort": 8080}}, "gateway.metricsPort must differ"),
    ],
    ids=[
        "replicas",
        "hpa",
        "sandbox",
        "grace",
        "hpa-bounds",
        "credentials",
        "no-api-keys",
        "api-keys-off",
        "api-keys-twice",
        "metrics-port",
    ],
)
def test_the_chart_refuses_unsafe_combinations(values: dict[str, Any], message: str) -> None:
    if "apiKeys" not in values:  # so that each case meets only its own refusal
        values = checks.with_api_keys(values)
    found = checks.problems(values)
    assert any(p.startswith("render:") and message in p for p in found), found


def test_kubernetes_validation_catches_a_bad_port_even_without_the_values_schema(tmp_path: Path) -> None:
    """Defence in depth: the manifests are checked on their own, not only the values."""
    chart = tmp_path / "pos-coupon-gateway"
    shutil.copytree(checks.CHART, chart, symlinks=False)  # the links' targets, copied
    (chart / "values.schema.json").unlink()
    release = checks.render(checks.with_api_keys({"gateway": {"port": "abc"}}), chart=chart)
    found = checks.manifest_problems(release)
    assert any("containerPort" in p for p in found), found
