"""The environment-variable reference, checked against the settings the service reads.

Every variable ``service/config.py`` reads is in the configuration reference (docs/configuration.md) and reaches
the container through the chart (or is excluded here, with the reason); the chart sets nothing the service does not
read; the chart's defaults give the service's own defaults; and every bound of values.schema.json is a value the
service accepts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pytest

from service.config import ConfigError, load_settings
from tests.helm import checks

CONFIG = checks.REPO / "service" / "config.py"
REFERENCE = checks.REPO / "docs" / "configuration.md"

#: Read by the service, deliberately not mapped by the chart.
NOT_IN_CHART = {
    "SANDBOX_HOST": "sandbox only: in sandbox mode the embedded Capillary keeps its in-pod default (127.0.0.1:8081)",
    "SANDBOX_PORT": "sandbox only: in sandbox mode the embedded Capillary keeps its in-pod default (127.0.0.1:8081)",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "traces need an image built with the `otel` extra: set it (and OpenTelemetry's other"
    " OTEL_* variables) through extraEnv there",
}
#: Set by the chart ahead of the service reading it (none now), with the reason.
AHEAD_OF_SERVICE: dict[str, str] = {}
#: What the service requires (no defaults) beside the ConfigMap, to build settings from a rendered one.
CREDENTIALS = {"CAPILLARY_CLIENT_KEY": "key", "CAPILLARY_CLIENT_SECRET": "secret"}
REQUIRED = {
    "CAPILLARY_API_URL": "https://eu.api.capillarytech.com",
    "CAPILLARY_UPLOAD_URL": "https://eu.intouch.capillarytech.com",
    "CAPILLARY_AUTH": "oauth",
    # load_settings only checks it is given; the chart sets it (in the container's env) to the mounted file.
    "GATEWAY_API_KEYS_FILE": "/etc/pos-coupon-gateway/api-keys/api-keys",
}
#: Bounded settings the chart refuses to give another's value (two listeners on one port): their bounds are
#: checked in a release of their own, beside the others' defaults.
APART = {"GATEWAY_METRICS_PORT"}


def variables_read() -> set[str]:
    """Every ``read.<kind>("NAME"...)`` in service/config.py."""
    found = set(re.findall(r"read\.\w+\(\s*\"([A-Z][A-Z0-9_]*)\"", CONFIG.read_text()))
    assert len(found) > 20, "the pattern no longer finds the settings: update it with config.py"
    return found


def reference_table() -> set[str]:
    """The variables named in the first cell of each table row of docs/configuration.md."""
    names: set[str] = set()
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    return names


def chart_variables() -> set[str]:
    """What reaches the container across the values files we ship (oauth and basic, Secrets inline and existing)."""
    names: set[str] = set()
    for name in checks.VALUES_FILES:
        names |= checks.render(checks.values_file(name)).env_names()
    return names


def test_every_setting_is_in_the_configuration_reference() -> None:
    missing = variables_read() - reference_table()
    assert not missing, f"add to docs/configuration.md: {sorted(missing)}"


def test_every_setting_reaches_the_container_through_the_chart() -> None:
    missing = variables_read() - chart_variables() - set(NOT_IN_CHART)
    assert not missing, (
        f"map in the chart (configmap.yaml or the env of deployment.yaml), or exclude: {sorted(missing)}"
    )
    assert set(NOT_IN_CHART) <= variables_read(), "an exclusion names a variable the service no longer reads"


def test_the_chart_sets_nothing_the_service_ignores() -> None:
    unknown = chart_variables() - variables_read() - set(AHEAD_OF_SERVICE)
    assert not unknown, f"the chart sets variables the service does not read: {sorted(unknown)}"


def _environment(release: checks.Release) -> dict[str, str]:
    """The container's environment: the ConfigMap and its plain env values; the required rest from here."""
    plain = {e["name"]: e["value"] for e in release.container.get("env", []) if "value" in e}
    return {**REQUIRED, **CREDENTIALS, **release.settings, **plain}


def test_chart_defaults_are_the_services_defaults(default: checks.Release) -> None:
    assert default.env("GATEWAY_API_KEYS_FILE")["value"] == REQUIRED["GATEWAY_API_KEYS_FILE"]
    from_chart = load_settings(_environment(default))
    own = load_settings({**REQUIRED, **CREDENTIALS})
    # The one deliberate difference: JSON logs always, where the service's "auto" picks by terminal.
    assert from_chart.log_format == "json"
    assert dataclasses.replace(from_chart, log_format=own.log_format) == own


def _numeric_settings(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(values path, schema) of every bounded number (null allowed or not) whose description names its variable."""
    for key, sub in schema.get("properties", {}).items():
        here = (*path, key)
        declared = sub.get("type")
        kinds = set(declared) if isinstance(declared, list) else {declared}
        kinds.discard("null")
        if kinds and kinds <= {"number", "integer"} and re.fullmatch(r"[A-Z][A-Z0-9_]*", sub.get("description", "")):
            yield here, sub
        yield from _numeric_settings(sub, here)


def _values_at(bound: str, *, apart: bool) -> tuple[dict[str, Any], dict[str, float]]:
    values: dict[str, Any] = {}
    expected: dict[str, float] = {}
    for path, sub in _numeric_settings(checks.values_schema()):
        if (sub["description"] in APART) != apart:
            continue
        node = values
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = sub[bound]
        expected[sub["description"]] = float(sub[bound])
    return values, expected


@pytest.mark.parametrize("apart", [False, True], ids=["together", "apart"])
@pytest.mark.parametrize("bound", ["minimum", "maximum"])
def test_every_schema_bound_is_a_value_the_service_accepts(bound: str, apart: bool) -> None:
    values, expected = _values_at(bound, apart=apart)
    assert (len(expected) == len(APART)) if apart else (len(expected) >= 12)
    release = checks.render(checks.with_api_keys(values))
    for variable, value in expected.items():
        assert float(release.settings[variable]) == value, variable
    try:
        load_settings(_environment(release))
    except ConfigError as e:
        pytest.fail(f"values.schema.json allows what the service refuses: {e}")
