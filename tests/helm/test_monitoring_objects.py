"""The Prometheus Operator objects and the Grafana dashboard carry exactly what ops/ holds and tests."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import yaml

from tests.helm import checks

ALERTS = checks.REPO / "ops" / "prometheus" / "alerts.yaml"
DASHBOARD = checks.REPO / "ops" / "grafana" / "pos-coupon-gateway.json"


def test_the_chart_files_are_the_ops_files() -> None:
    """files/ links to ops/ (Helm follows the links, and `helm package` stores their content)."""
    for name, source in (("alerts.yaml", ALERTS), ("pos-coupon-gateway.json", DASHBOARD)):
        in_chart = checks.CHART / "files" / name
        assert in_chart.read_bytes() == source.read_bytes(), f"{in_chart} differs from {source}"
        assert in_chart.resolve() == source.resolve(), f"{in_chart} should link to {source}"


def test_prometheus_rule_carries_exactly_the_promtool_tested_rules(production: checks.Release) -> None:
    rule = production.one("PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    groups = rule["spec"]["groups"]
    alerts = [r["alert"] for g in groups for r in g["rules"] if "alert" in r]
    assert alerts, "no alert rules"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap_is_picked_up_by_the_grafana_sidecar(production: checks.Release) -> None:
    config = production.one("ConfigMap", f"{production.deployment['metadata']['name']}-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["annotations"] == {"grafana_folder": "POS"}
    assert config["data"] == {"pos-coupon-gateway.json": DASHBOARD.read_text()}
    assert json.loads(config["data"]["pos-coupon-gateway.json"])["uid"] == "pos-coupon-gateway"


def test_dashboard_label_and_namespace_are_configurable() -> None:
    release = checks.render(
        checks.with_api_keys(
            {
                "grafanaDashboard": {
                    "enabled": True,
                    "label": "dashboards",
                    "labelValue": "pos",
                    "namespace": "monitoring",
                }
            }
        )
    )
    (config,) = [c for c in release.all("ConfigMap") if "pos-coupon-gateway.json" in c.get("data", {})]
    assert config["metadata"]["labels"]["dashboards"] == "pos"
    assert config["metadata"]["namespace"] == "monitoring"


def test_service_monitor_scrapes_metrics_on_the_gateway_port(production: checks.Release) -> None:
    monitor = production.one("ServiceMonitor")
    service = production.one("Service")
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert service["spec"]["ports"][0]["name"] == "http"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [checks.NAMESPACE]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_a_metrics_port_takes_metrics_off_the_api_port(inline: checks.Release) -> None:
    """gateway.metricsPort: the gateway serves /metrics only there, so the pod, the Service and the scrape follow."""
    values = checks.values_file("inline-secrets")
    release = checks.render({**values, "serviceMonitor": {"enabled": True}})
    assert release.settings["GATEWAY_METRICS_PORT"] == "9090"
    assert release.container["ports"][1] == {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
    service_ports = {p["name"]: p for p in release.one("Service")["spec"]["ports"]}
    assert service_ports["metrics"] == {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    assert service_ports["http"]["targetPort"] == "http"
    (endpoint,) = release.one("ServiceMonitor")["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert release.container["readinessProbe"]["httpGet"]["port"] == "http"  # the probes stay on the API port
    assert checks.manifest_problems(release) == []


def test_without_a_metrics_port_metrics_stay_on_the_api_port(production: checks.Release) -> None:
    assert "GATEWAY_METRICS_PORT" not in production.settings
    assert [p["name"] for p in production.container["ports"]] == ["http"]
    assert [p["name"] for p in production.one("Service")["spec"]["ports"]] == ["http"]


def test_monitoring_objects_are_off_by_default(default: checks.Release) -> None:
    kinds = default.kinds()
    assert "ServiceMonitor" not in kinds
    assert "PrometheusRule" not in kinds
    assert not [c for c in default.all("ConfigMap") if "pos-coupon-gateway.json" in c.get("data", {})]


def test_a_packaged_chart_carries_the_files_themselves(tmp_path: Path) -> None:
    """`helm package` follows the links: the archive a registry gets holds the rules and the dashboard, not links."""
    archive = Path(checks.helm().package(checks.CHART, destination=tmp_path))
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name, source in (("alerts.yaml", ALERTS), ("pos-coupon-gateway.json", DASHBOARD)):
            member = members[f"pos-coupon-gateway/files/{name}"]
            assert member.isfile()
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert extracted.read() == source.read_bytes()
        assert not [n for n in members if "/ci/" in n], "ci/ values stay out of the package (.helmignore)"
        assert "pos-coupon-gateway/values.schema.json" in members
