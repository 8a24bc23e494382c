"""Derived figures (added latency, ratios, upstream calls per request, target verdicts) and the printed table."""

from __future__ import annotations

from typing import Any, Final

#: The issue's targets: (key, description, limit, lower_is_better).
ADDED_P50_MS: Final = 1.0
ADDED_P99_MS: Final = 5.0
MAX_RATE_RATIO: Final = 0.8
CPU_RATIO: Final = 1.5
RSS_GROWTH_MB: Final = 10.0
LONG_RUN_REQUESTS: Final = 100_000


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def _ref_key(fixed: dict[str, dict[str, Any]], ref_rate: float) -> str | None:
    keys = list(fixed.get("gateway", {}))
    if not keys:
        return None
    return min(keys, key=lambda k: abs(float(k) - ref_rate))


def _calls_per_request(runs: list[dict[str, Any]], scenario: str, target: str) -> dict[str, Any]:
    chosen = [r for r in runs if r["phase"] == "fixed" and r["scenario"] == scenario and r["target"] == target]
    requests = sum(r["requests"] for r in chosen)
    counts: dict[str, int] = {}
    for run in chosen:
        for op, n in run["upstream_calls"].items():
            counts[op] = counts.get(op, 0) + n
    if not requests:
        return {"total": None, "by_operation": {}}
    return {
        "total": round(sum(counts.values()) / requests, 3),
        "by_operation": {op: round(n / requests, 3) for op, n in sorted(counts.items())},
    }


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """The summary: what the issue asks to compare, per scenario, and each target's verdict."""
    ref_rate = float(results["meta"]["options"]["ref_rate"])
    scenarios: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    for name, fixed in results["fixed"].items():
        added: dict[str, Any] = {}
        baseline_added: dict[str, Any] = {}
        for key, gateway in fixed["gateway"].items():
            floor, baseline = fixed["floor"][key]["latency_ms"], fixed["baseline"][key]["latency_ms"]
            added[key] = {q: _sub(gateway["latency_ms"][q], floor[q]) for q in ("p50", "p90", "p99")}
            baseline_added[key] = {q: _sub(baseline[q], floor[q]) for q in ("p50", "p90", "p99")}
        ref = _ref_key(fixed, ref_rate)
        cpu_b = fixed["baseline"][ref]["cpu_seconds_per_1000"] if ref else None
        cpu_g = fixed["gateway"][ref]["cpu_seconds_per_1000"] if ref else None
        max_rates = results["max_rate"].get(name, {})
        rate_b = max_rates.get("baseline", {}).get("rate")
        rate_g = max_rates.get("gateway", {}).get("rate")
        summary: dict[str, Any] = {
            "ref_rate": float(ref) if ref else None,
            "added_latency_ms": added,
            "baseline_added_latency_ms": baseline_added,
            "max_rate": {"baseline": rate_b, "gateway": rate_g, "ratio": _div(rate_g, rate_b)},
            "cpu_seconds_per_1000": {"baseline": cpu_b, "gateway": cpu_g, "ratio": _div(cpu_g, cpu_b)},
            "upstream_calls_per_request": {
                t: _calls_per_request(results["runs"], name, t) for t in ("floor", "baseline", "gateway")
            },
        }
        scenarios[name] = summary
        at_ref = added.get(ref or "", {})
        for key, value, limit, better in (
            ("added_p50_ms", at_ref.get("p50"), ADDED_P50_MS, "max"),
            ("added_p99_ms", at_ref.get("p99"), ADDED_P99_MS, "max"),
            ("max_rate_ratio", summary["max_rate"]["ratio"], MAX_RATE_RATIO, "min"),
            ("cpu_ratio", summary["cpu_seconds_per_1000"]["ratio"], CPU_RATIO, "max"),
        ):
            met: bool | None = None if value is None else (value <= limit if better == "max" else value >= limit)
            targets.append({"target": key, "scenario": name, "value": value, "limit": limit, "met": met})
    long_run = results.get("memory", {}).get("gateway_long_run")
    if long_run:
        judged = long_run["requests"] >= LONG_RUN_REQUESTS
        targets.append(
            {
                "target": "rss_growth_mb",
                "scenario": long_run["scenario"],
                "value": long_run["rss_growth_mb"],
                "limit": RSS_GROWTH_MB,
                "requests": long_run["requests"],
                "met": (long_run["rss_growth_mb"] < RSS_GROWTH_MB) if judged else None,
                "note": None if judged else f"only {long_run['requests']} requests: not judged",
            }
        )
    return {"ref_rate": ref_rate, "scenarios": scenarios, "targets": targets}


def _f(value: float | None, spec: str = ".2f", sign: bool = False) -> str:
    if value is None:
        return "-"
    return format(value, ("+" if sign else "") + spec)


_TARGET_TEXT: Final = {
    "added_p50_ms": "added latency p50 <= 1 ms (gateway - floor)",
    "added_p99_ms": "added latency p99 <= 5 ms (gateway - floor)",
    "max_rate_ratio": "max rate >= 0.8 x baseline",
    "cpu_ratio": "CPU per request <= 1.5 x baseline",
    "rss_growth_mb": "RSS growth < 10 MB over 100,000 requests",
}


def render(results: dict[str, Any]) -> str:
    meta, summary = results["meta"], results["summary"]
    opts = meta["options"]
    lines = [
        f"pos-coupon-gateway benchmark: {meta['mode']} mode, {meta['machine']['cpus']} CPUs, "
        f"upstream latency {opts['latency_ms']:g} ms per call, {meta['cache']} cache and ledger"
        + (f", {meta['replicas']} gateway replicas" if meta.get("replicas", 1) > 1 else "")
        + f", {'uvloop' if opts.get('uvloop') else 'asyncio'} event loop, {meta['seconds']:.0f} s",
        "",
        "Latency in ms, open loop, from each request's intended send time; cpu = target process CPU s per 1000 req",
        f"{'scenario':<9} {'rate/s':>6}  {'target':<8} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} "
        f"{'ok/sent':>11} {'cpu':>6}",
    ]
    for name, fixed in results["fixed"].items():
        for key in fixed["gateway"]:
            for index, target in enumerate(("floor", "baseline", "gateway")):
                run = fixed[target][key]
                lat = run["latency_ms"]
                head = f"{name:<9} {float(key):>6.0f}" if index == 0 else " " * 16
                cpu = "" if target == "floor" else _f(run["cpu_seconds_per_1000"])
                lines.append(
                    f"{head}  {target:<8} {_f(lat['p50'], '.1f'):>7} {_f(lat['p90'], '.1f'):>7} "
                    f"{_f(lat['p99'], '.1f'):>7} {_f(lat['max'], '.1f'):>7} "
                    f"{run['ok']:>5}/{run['requests']:<5} {cpu:>6}"
                )
    refs = [s["ref_rate"] for s in summary["scenarios"].values() if s["ref_rate"] is not None]
    used = refs[0] if refs else summary["ref_rate"]
    lines += [
        "",
        f"Gateway against the floor and the baseline (+p50/+p99: latency added to the floor, and CPU s/1000, at "
        f"{used:g}/s;",
        f"max: highest rate with p99 < {opts['p99_limit_ms']:g} ms, + when the search stopped at its cap)",
        f"{'scenario':<9} {'+p50':>6} {'+p99':>6} {'base+p99':>8} {'max base':>8} {'max gw':>7} {'ratio':>6} "
        f"{'cpu base':>8} {'cpu gw':>7} {'ratio':>6}  upstream calls/req floor/base/gw",
    ]
    for name, s in summary["scenarios"].items():
        key = f"{s['ref_rate']:g}" if s["ref_rate"] is not None else ""
        added = s["added_latency_ms"].get(key, {})
        base_added = s["baseline_added_latency_ms"].get(key, {})
        calls = s["upstream_calls_per_request"]
        mr, cpu = s["max_rate"], s["cpu_seconds_per_1000"]
        capped = results["max_rate"][name]
        gw_rate = _f(mr["gateway"], ".0f") + ("+" if capped["gateway"]["capped"] else "")
        base_rate = _f(mr["baseline"], ".0f") + ("+" if capped["baseline"]["capped"] else "")
        lines.append(
            f"{name:<9} {_f(added.get('p50'), '.2f', True):>6} {_f(added.get('p99'), '.2f', True):>6} "
            f"{_f(base_added.get('p99'), '.2f', True):>8} {base_rate:>8} {gw_rate:>7} {_f(mr['ratio']):>6} "
            f"{_f(cpu['baseline']):>8} {_f(cpu['gateway']):>7} {_f(cpu['ratio']):>6}  "
            + "/".join(_f(calls[t]["total"], ".2g") for t in ("floor", "baseline", "gateway"))
        )
    memory = results["memory"]
    peaks = memory.get("peak_rss_mb", {})
    lines += ["", "Memory"]
    long_run = memory.get("gateway_long_run")
    if long_run:
        lines.append(
            f"  gateway long run: {long_run['requests']} one-code redeems sent at {long_run['rate']:g}/s "
            f"(achieved {long_run['achieved_rate']:g}/s, at most {long_run['max_inflight']} in flight)"
            f"\n  {long_run['errors']} errors, {long_run['seconds']:.0f} s: RSS {long_run['rss_before_mb']:.1f} -> "
            f"{long_run['rss_after_mb']:.1f} MB ({long_run['rss_growth_mb']:+.1f} MB, "
            f"{long_run['rss_growth_mb_per_100k']:+.1f} MB per 100k)"
        )
        samples = ", ".join(f"{s['requests']}: {s['rss_mb']:.1f}" for s in long_run["samples"])
        lines.append(f"  RSS by requests: {samples}")
        if long_run.get("stopped_at_time_limit"):
            lines.append(f"  stopped at its time limit after {long_run['requests']} of {long_run['requests_planned']}")
    lines.append("  peak RSS (VmHWM): " + ", ".join(f"{name} {value:.1f} MB" for name, value in peaks.items()))
    trips = results.get("redis") or {}
    if trips:
        lines += ["", "Redis round trips per request (the gateway's count over the whole run, every scenario)"]
        lines += [f"  {route:<28} {value:.2f}" for route, value in sorted(trips.items())]
    lines += ["", "Targets"]
    for t in summary["targets"]:
        verdict = "n/a " if t["met"] is None else ("met " if t["met"] else "MISS")
        value = _f(t["value"], ".3g")
        note = f"  ({t['note']})" if t.get("note") else ""
        lines.append(f"  [{verdict}] {t['scenario']:<9} {_TARGET_TEXT[t['target']]}: {value}{note}")
    return "\n".join(line.rstrip() for line in lines)
