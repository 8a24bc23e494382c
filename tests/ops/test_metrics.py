"""The live /metrics output after real traffic: valid for promtool, the series that matter, low cardinality, and
every metric the dashboard and alerts use really exported."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from asyncio.subprocess import PIPE, STDOUT
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.sandbox import DEMO, Fault, FaultKind
from tests.conftest import GatewayClient, Upstream
from tests.ops.conftest import tool

OPS = Path(__file__).resolve().parents[2] / "ops"
ALICE = {"mobile": DEMO.customer("alice").mobile}


async def _traffic(gateway: GatewayClient, upstream: Upstream) -> None:
    body = {"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "2000", "transactionNumber": "T-M1"}
    assert (await gateway.post("/v1/redemptions/validate", json=body)).status == 200
    assert (await gateway.post("/v1/redemptions", json=body)).status == 200
    assert (await gateway.post("/v1/redemptions", json=body)).status == 200  # a replay
    used = {**body, "codes": ["ABS-ALICE-USED"], "transactionNumber": "T-M2"}
    assert (await gateway.post("/v1/redemptions", json=used)).status == 409
    assert (await gateway.get("/v1/no/such/path/12345")).status == 404
    # a read: its first attempt and both retries fail
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "is_redeemable", status=503, times=3))
    assert (await gateway.post("/v1/redemptions/validate", json=body)).status == 503


async def _scrape(gateway: GatewayClient) -> str:
    response = await gateway.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await response.text()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_live_metrics_pass_promtool_and_count_what_happened(gateway: GatewayClient, upstream: Upstream) -> None:
    await _traffic(gateway, upstream)
    text = await _scrape(gateway)
    check = await asyncio.create_subprocess_exec(
        tool("promtool"), "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await check.communicate(text.encode())
    assert check.returncode == 0, output.decode()

    samples = _samples(text)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("pos_coupon_redemptions_total", outcome="redeemed", error_code="none") == 1
    assert value("pos_coupon_redemptions_total", outcome="rejected", error_code="COUPON_ALREADY_REDEEMED") == 1
    assert value("pos_coupon_idempotent_replays_total") == 1
    assert value("pos_coupon_validations_total", outcome="redeemed", error_code="none") == 1
    assert value("pos_coupon_validations_total", outcome="error", error_code="UPSTREAM_UNAVAILABLE") == 1
    assert value("pos_coupon_coupons_redeemed_total") == 1
    assert value("pos_coupon_discount_amount_total") == 100
    assert value("pos_coupon_upstream_calls_total", operation="redeem", outcome="ok") == 1
    assert value("pos_coupon_upstream_calls_total", operation="is_redeemable", outcome="http_5xx") == 3  # 2 retries
    assert value("pos_coupon_upstream_retries_total", operation="is_redeemable") == 2
    assert value("pos_coupon_upstream_retries_total", operation="redeem") == 0
    host = upstream.url.removeprefix("http://")
    assert value("pos_coupon_upstream_breaker_state", host=host, state="closed") == 1
    assert value("pos_coupon_upstream_breaker_state", host=host, state="open") == 0
    assert value("pos_coupon_upstream_rejected_total", reason="circuit_open", priority="check") == 0
    assert value("pos_coupon_http_requests_total", route="/v1/redemptions", method="POST", status="2xx") == 2
    assert value("pos_coupon_http_requests_total", route="unmatched", method="GET", status="4xx") == 1
    assert value("pos_coupon_oauth_token_refreshes_total") == 1
    assert value("pos_coupon_cache_requests_total", cache="code", backend="memory", result="hit") >= 1
    assert value("pos_coupon_pending_redemptions") == 0
    assert value("pos_coupon_build_info", version="0.1.0") == 1
    # known label sets exist at zero before their first event
    assert value("pos_coupon_redemptions_total", outcome="pending", error_code="none") == 0
    assert value("pos_coupon_lock_conflicts_total", kind="coupon_in_use") == 0


async def test_no_unbounded_label_values(gateway: GatewayClient, upstream: Upstream) -> None:
    await _traffic(gateway, upstream)
    text = await _scrape(gateway)
    assert "12345" not in text  # no raw path
    assert DEMO.customer("alice").mobile not in text
    assert "T-M1" not in text
    assert "ABS-ALICE" not in text


def _expressions() -> list[str]:
    import yaml

    rules = yaml.safe_load((OPS / "prometheus" / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((OPS / "grafana" / "pos-coupon-gateway.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return exprs


async def test_every_metric_in_dashboard_and_alerts_is_exported(gateway: GatewayClient, upstream: Upstream) -> None:
    await _traffic(gateway, upstream)
    exported = {s[0] for s in _samples(await _scrape(gateway))}
    used = {m for expr in _expressions() for m in re.findall(r"\b(pos_coupon_[a-z0-9_]+)", expr)}
    assert len(used) >= 10
    assert used - exported == set()


def test_alert_rules_check_and_unit_tests() -> None:
    promtool = tool("promtool")
    rules = OPS / "prometheus"
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]):
        result = subprocess.run([promtool, *args], cwd=rules, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_runbook_and_a_test() -> None:
    import yaml

    rules = yaml.safe_load((OPS / "prometheus" / "alerts.yaml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((OPS / "prometheus" / "alerts_test.yaml").read_text())
    tested = {a["alertname"]: bool(a["exp_alerts"]) for t in tests["tests"] for a in t["alert_rule_test"]}
    fired = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"] if a["exp_alerts"]}
    quiet = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"] if not a["exp_alerts"]}
    assert set(alerts) == set(tested) == fired == quiet  # each one fires and stays quiet somewhere
    assert all(r["annotations"].get("runbook") for r in alerts.values())
