"""Keeps the benchmark harness working: ``python -m bench --quick`` end to end with tiny numbers.

It starts the real processes (sandbox upstream, gateway, baseline, load generator) on 127.0.0.1 and checks that
the JSON carries every figure the issue asks for. No timing assertions: the numbers of such a short run mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("validate", "redeem-1", "redeem-5")
TARGETS = ("floor", "baseline", "gateway")
PERCENTILES = ("p50", "p90", "p99", "max")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--rates",
        "20",
        "--duration",
        "0.5",
        "--warmup",
        "4",
        "--search-duration",
        "0.4",
        "--search-steps",
        "1",
        "--long-requests",
        "60",
        "--long-rate",
        "60",
        "--json",
        str(out),
    ]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Targets" in done.stdout
    results = json.loads(out.read_text())

    assert results["meta"]["mode"] == "quick"
    for scenario in SCENARIOS:
        for target in TARGETS:
            run = results["fixed"][scenario][target]["20"]
            assert run["requests"] == 10
            assert run["ok"] == run["requests"], run["statuses"]  # fresh coupons: every request went through
            assert all(_number(run["latency_ms"][q]) for q in PERCENTILES)
            assert run["upstream_calls"], "the sandbox's call counts"
        for target in ("baseline", "gateway"):
            assert _number(results["fixed"][scenario][target]["20"]["cpu_seconds_per_1000"])
            search = results["max_rate"][scenario][target]
            assert len(search["steps"]) == 1
            assert "rate" in search

        summary = results["summary"]["scenarios"][scenario]
        assert all(_number(summary["added_latency_ms"]["20"][q]) for q in ("p50", "p99"))
        assert set(summary["max_rate"]) == {"baseline", "gateway", "ratio"}
        assert _number(summary["cpu_seconds_per_1000"]["gateway"])
        assert _number(summary["cpu_seconds_per_1000"]["baseline"])
        calls = summary["upstream_calls_per_request"]
        codes = 5 if scenario == "redeem-5" else 1
        expected = {"validate": 1.0, "redeem-1": 2.0, "redeem-5": 2.0}[scenario]
        assert calls["floor"]["total"] == expected
        assert calls["baseline"]["total"] == expected
        if scenario == "validate":  # the check, then one lookup of the fresh codes' series (README: validate)
            assert calls["gateway"]["total"] >= expected
        else:  # exactly the two calls Capillary needs: the answer names the series and the discount
            assert calls["gateway"]["total"] == expected, calls["gateway"]
        if scenario != "validate":
            redeem_op = "redeem" if codes == 1 else "bulk_redeem"
            assert calls["gateway"]["by_operation"][redeem_op] == 1.0  # every request really redeemed

    long_run = results["memory"]["gateway_long_run"]
    assert long_run["requests"] == 60
    assert long_run["errors"] == 0
    assert all(_number(long_run[k]) for k in ("rss_before_mb", "rss_after_mb", "rss_growth_mb", "peak_rss_mb"))
    assert set(results["memory"]["peak_rss_mb"]) == {"gateway", "baseline", "upstream"}

    verdicts = {(t["target"], t["scenario"]) for t in results["summary"]["targets"]}
    for scenario in SCENARIOS:
        for target in ("added_p50_ms", "added_p99_ms", "max_rate_ratio", "cpu_ratio"):
            assert (target, scenario) in verdicts
    assert ("rss_growth_mb", "redeem-1") in verdicts


def test_the_comparison_of_trees_measures_each_gateway_and_the_baseline_in_turns(tmp_path: Path) -> None:
    """``python -m bench.ab`` with this tree as the other one too: every target's CPU figure, round by round."""
    out = tmp_path / "ab.json"
    argv = [sys.executable, "-m", "bench.ab", str(ROOT), "--scenarios", "redeem-1", "--rate", "20", "--seconds"]
    argv += ["0.5", "--rounds", "2", "--warmup", "4", "--json", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    figures = results["cpu_seconds_per_1000"]["redeem-1"]
    assert set(figures) == {"gateway", ROOT.name, "baseline"}
    assert all(len(rounds) == 2 and all(_number(v) for v in rounds) for rounds in figures.values())
    assert f"gateway / {ROOT.name}" in done.stdout
