"""The breaker, the outbound limiter and the retry budget as plain state machines, on a fake clock."""

from __future__ import annotations

import pytest

from service.capillary.errors import (
    CapillaryAuthError,
    CapillaryBadResponse,
    CapillaryConnectionError,
    CapillaryHTTPError,
    CapillaryTimeoutError,
    CapillaryUnavailable,
)
from service.capillary.resilience import (
    REJECTED,
    Breaker,
    BreakerPolicy,
    BreakerState,
    OutboundLimiter,
    Priority,
    RetryBudget,
    backoff,
    is_outage,
    may_retry,
    retry_after_seconds,
)
from service.config import ConfigError, capillary_from_env, gateway_from_env


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


POLICY = BreakerPolicy(failure_ratio=0.5, slow_call_seconds=1.0, slow_call_ratio=0.5, min_calls=4, window=8)


def _calls(breaker: Breaker, *outcomes: str) -> None:
    for outcome in outcomes:
        ticket = breaker.admit()
        assert ticket != REJECTED
        breaker.record(ticket, failed=outcome == "fail", seconds=2.0 if outcome == "slow" else 0.01)


def test_the_breaker_waits_for_the_minimum_number_of_calls() -> None:
    breaker = Breaker("h", POLICY, clock=Clock())
    _calls(breaker, "fail", "fail", "fail")
    assert breaker.state is BreakerState.CLOSED
    _calls(breaker, "fail")
    assert breaker.state is BreakerState.OPEN


def test_the_failure_ratio_is_over_a_sliding_window() -> None:
    breaker = Breaker("h", POLICY, clock=Clock())
    _calls(breaker, "ok", "ok", "ok", "ok", "ok", "ok", "fail", "fail", "fail")  # 3 of the last 8
    assert breaker.state is BreakerState.CLOSED
    _calls(breaker, "fail")  # 4 of the last 8
    assert breaker.state is BreakerState.OPEN


def test_slow_calls_open_it_too() -> None:
    breaker = Breaker("h", POLICY, clock=Clock())
    _calls(breaker, "ok", "slow", "ok", "slow")
    assert breaker.state is BreakerState.OPEN


def test_open_then_half_open_with_a_few_probes_then_closed() -> None:
    clock = Clock()
    breaker = Breaker("h", BreakerPolicy(min_calls=2, window=2, open_seconds=5, probes=2), clock=clock)
    _calls(breaker, "fail", "fail")
    assert breaker.admit() == REJECTED
    assert breaker.retry_after() == 5
    clock.now += 5
    first, second = breaker.admit(), breaker.admit()
    assert breaker.state is BreakerState.HALF_OPEN
    assert REJECTED not in (first, second)
    assert breaker.admit() == REJECTED  # no more probes than allowed
    breaker.record(first, failed=False, seconds=0.01)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(second, failed=False, seconds=0.01)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.transitions == {BreakerState.CLOSED: 1, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 1}


def test_a_failed_probe_reopens_and_a_released_probe_frees_its_slot() -> None:
    clock = Clock()
    breaker = Breaker("h", BreakerPolicy(min_calls=1, window=1, open_seconds=5, probes=1), clock=clock)
    _calls(breaker, "fail")
    clock.now += 5
    probe = breaker.admit()
    breaker.release(probe)  # cancelled: says nothing
    probe = breaker.admit()
    assert probe != REJECTED
    breaker.record(probe, failed=True, seconds=0.01)
    assert breaker.state is BreakerState.OPEN
    assert breaker.admit() == REJECTED


def test_a_call_admitted_before_a_state_change_is_ignored() -> None:
    clock = Clock()
    breaker = Breaker("h", BreakerPolicy(min_calls=1, window=1, open_seconds=5, probes=1), clock=clock)
    old = breaker.admit()
    _calls(breaker, "fail")
    clock.now += 5
    probe = breaker.admit()
    breaker.record(old, failed=False, seconds=0.01)  # from the closed period: not the probe's verdict
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(probe, failed=False, seconds=0.01)
    assert breaker.state is BreakerState.CLOSED


def test_the_limiter_serves_the_burst_then_makes_callers_wait_or_sheds() -> None:
    clock = Clock()
    limiter = OutboundLimiter(60, clock=clock)  # 1 per second, a burst of 6
    assert [limiter.reserve(Priority.REDEEM, 0.0) for _ in range(6)] == [0.0] * 6
    assert limiter.reserve(Priority.REDEEM, 0.5) == pytest.approx(-1.0)  # would wait 1 s: refused
    assert limiter.reserve(Priority.REDEEM, 2.0) == pytest.approx(1.0)  # reserved: go in 1 s
    assert limiter.reserve(Priority.REDEEM, 5.0) == pytest.approx(2.0)  # behind the previous one
    clock.now += 10
    assert limiter.reserve(Priority.REDEEM, 0.0) == 0.0
    assert limiter.shed[Priority.REDEEM] == 1


def test_the_limiter_keeps_a_reserve_for_redeems() -> None:
    clock = Clock()
    limiter = OutboundLimiter(60, clock=clock)  # burst 6: checks leave 1.2, back office 2.4
    backoffice = [limiter.reserve(Priority.BACKOFFICE, 0.0) for _ in range(4)]
    assert backoffice == [0.0, 0.0, 0.0, pytest.approx(-0.4)]  # 3 taken, the 4th would dip into the reserve
    assert limiter.reserve(Priority.CHECK, 0.0) == 0.0  # 3 -> 2
    assert limiter.reserve(Priority.CHECK, 0.0) < 0  # 2 -> 1 would leave less than 1.2
    assert [limiter.reserve(Priority.REDEEM, 0.0) for _ in range(2)] == [0.0, 0.0]  # redeems take the rest


def test_a_limit_of_zero_is_no_limit() -> None:
    limiter = OutboundLimiter(0)
    assert all(limiter.reserve(Priority.BACKOFFICE, 0.0) == 0.0 for _ in range(10_000))


def test_the_retry_budget_is_a_share_of_calls() -> None:
    budget = RetryBudget(0.1, floor=2)
    assert budget.withdraw()
    assert budget.withdraw()
    assert not budget.withdraw()
    for _ in range(11):  # a tenth of a retry per call
        budget.deposit()
    assert budget.withdraw()
    assert not budget.withdraw()
    assert budget.exhausted == 2


def test_backoff_is_jittered_and_capped() -> None:
    assert backoff(0, lambda: 0.999) < 0.05
    assert backoff(3, lambda: 0.5) == pytest.approx(0.2)
    assert backoff(10, lambda: 0.999) < 1.0
    assert backoff(2, lambda: 0.0) == 0.0


@pytest.mark.parametrize(
    ("error", "safe", "retried", "outage"),
    [
        (CapillaryHTTPError("op", "x", http_status=503, maybe_applied=True), True, True, True),
        (CapillaryHTTPError("op", "x", http_status=503, maybe_applied=True), False, False, True),
        (CapillaryHTTPError("op", "x", http_status=429), True, True, True),
        (CapillaryHTTPError("op", "x", http_status=429), False, False, True),
        (CapillaryHTTPError("op", "x", http_status=400, code=702), True, False, False),
        (CapillaryAuthError("op", "x", http_status=401), True, False, False),
        (CapillaryBadResponse("op", "x", http_status=200, maybe_applied=True), True, False, True),
        (CapillaryTimeoutError("op", "x", maybe_applied=True), True, True, True),
        (CapillaryTimeoutError("op", "x", maybe_applied=True), False, False, True),
        (CapillaryTimeoutError("op", "connect", maybe_applied=False), False, True, True),
        (CapillaryConnectionError("op", "reset", maybe_applied=True), False, False, True),
        (CapillaryConnectionError("op", "refused", maybe_applied=False), False, True, True),
        (CapillaryUnavailable("op", "open", reason="circuit_open", retry_after=1), True, False, True),
    ],
)
def test_what_is_retried_and_what_counts_against_the_host(
    error: CapillaryHTTPError, safe: bool, retried: bool, outage: bool
) -> None:
    assert may_retry(error, safe=safe) is retried
    assert is_outage(error) is outage


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after_seconds(s) for s in (0, 0.2, 1.0, 1.1, 29.5)] == [1, 1, 1, 2, 30]


# ---------------------------------------------------------------------------------------------- settings

ENV = {
    "CAPILLARY_API_URL": "https://eu.api.capillarytech.com",
    "CAPILLARY_UPLOAD_URL": "https://eu.intouch.capillarytech.com",
    "CAPILLARY_AUTH": "oauth",
    "CAPILLARY_CLIENT_KEY": "key",
    "CAPILLARY_CLIENT_SECRET": "secret",
}


def test_resilience_settings_from_the_environment() -> None:
    settings = capillary_from_env(
        {
            **ENV,
            "CAPILLARY_RATE_LIMIT_PER_MINUTE": "900",
            "CAPILLARY_RETRY_ATTEMPTS": "0",
            "CAPILLARY_BREAKER_MIN_CALLS": "20",
            "CAPILLARY_BREAKER_SLOW_CALL_SECONDS": "1.5",
        }
    )
    assert (settings.rate_limit_per_minute, settings.retry_attempts) == (900, 0)
    assert (settings.breaker_min_calls, settings.breaker_slow_call_seconds) == (20, 1.5)
    assert (
        gateway_from_env({"GATEWAY_REQUEST_DEADLINE_SECONDS": "2.5"}, settings, keys_required=False).request_deadline
        == 2.5
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CAPILLARY_RATE_LIMIT_PER_MINUTE", "-1"),
        ("CAPILLARY_RETRY_ATTEMPTS", "1.5"),
        ("CAPILLARY_RETRY_BUDGET_RATIO", "2"),
        ("CAPILLARY_BREAKER_FAILURE_RATIO", "0"),
        ("CAPILLARY_BREAKER_PROBES", "0"),
        ("CAPILLARY_BREAKER_MIN_CALLS", "ten"),
        ("CAPILLARY_BREAKER_OPEN_SECONDS", "0"),
    ],
)
def test_a_bad_resilience_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        capillary_from_env({**ENV, variable: value})
    assert caught.value.variable == variable


def test_a_bad_request_deadline_names_its_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        gateway_from_env({"GATEWAY_REQUEST_DEADLINE_SECONDS": "0"}, capillary_from_env(ENV), keys_required=False)
    assert caught.value.variable == "GATEWAY_REQUEST_DEADLINE_SECONDS"
