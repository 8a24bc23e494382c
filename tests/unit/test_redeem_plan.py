"""The redeem's pure steps: what to send given the check's verdicts (plan), and how an answer reads into each
code's outcome (apply). Plain data in, plain data out; no upstream."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from service.redemption.catalog import CATALOG
from service.redemption.discount import DiscountRule
from service.redemption.flow import (
    SIBLING_FAILED,
    Redeemed,
    UpstreamFailure,
    conclude,
    hold_back,
    plan_redeem,
    plan_retry,
    read_answer,
    refuses_request,
)
from service.redemption.models import CodeOutcome, Failure, Mode

USED = Failure(CATALOG["COUPON_ALREADY_REDEEMED"], 711, "Coupon is already used")
EXPIRED = Failure(CATALOG["COUPON_EXPIRED"], 702, "expired")
SIBLING = Failure(CATALOG["SIBLING_COUPON_FAILED"], 749, "failure on other coupons")


def _checked(*verdicts: str) -> list[CodeOutcome]:
    """Outcomes after the check: ``"A"`` passes, ``"A!"`` is refused (used)."""
    return [
        CodeOutcome(v.rstrip("!"), ok=not v.endswith("!"), failure=USED if v.endswith("!") else None) for v in verdicts
    ]


@pytest.mark.parametrize(
    ("mode", "verdicts", "sent"),
    [
        pytest.param("all", ("A", "B"), ("A", "B"), id="all-pass"),
        pytest.param("all", ("A", "B!"), (), id="all-one-refused-sends-nothing"),
        pytest.param("partial", ("A", "B!", "C"), ("A", "C"), id="partial-sends-the-passing"),
        pytest.param("partial", ("A!", "B!"), (), id="partial-none-pass"),
        pytest.param("all", (), (), id="no-codes"),
    ],
)
def test_plan_sends_what_the_mode_allows(mode: Mode, verdicts: tuple[str, ...], sent: tuple[str, ...]) -> None:
    assert plan_redeem(mode, _checked(*verdicts)) == sent


def test_hold_back_marks_nothing_redeemed_and_the_left_out_as_siblings() -> None:
    outcomes = _checked("A", "B!", "C")
    hold_back(outcomes, ())  # mode all: nothing is sent
    assert [(o.code, o.ok, o.failure) for o in outcomes] == [
        ("A", False, SIBLING_FAILED),
        ("B", False, USED),  # its own reason stays
        ("C", False, SIBLING_FAILED),
    ]
    sent = _checked("A", "C")
    hold_back(sent, ("A", "C"))
    assert [(o.ok, o.failure) for o in sent] == [(False, None), (False, None)]


def test_read_answer_sets_ids_reasons_and_returns_the_siblings() -> None:
    outcomes = _checked("A", "B", "C", "D")
    hold_back(outcomes, ("A", "B", "C", "D"))
    by_code = {o.code: o for o in outcomes}
    results = {
        "A": Redeemed(True, redemption_id=501),
        "B": Redeemed(False, EXPIRED),
        "C": Redeemed(False, SIBLING),
        # D: no result at all
    }
    assert read_answer(by_code, ("A", "B", "C", "D"), results) == ["C"]
    assert (by_code["A"].ok, by_code["A"].redemption_id, by_code["A"].failure) == (True, 501, None)
    assert (by_code["B"].ok, by_code["B"].failure) == (False, EXPIRED)
    assert by_code["C"].failure is SIBLING_FAILED
    assert by_code["D"].failure is not None
    assert by_code["D"].failure.error.code == "UPSTREAM_ERROR"


@pytest.mark.parametrize(
    ("mode", "failures", "expected"),
    [
        pytest.param("partial", {"A": EXPIRED}, ("B",), id="partial-own-failure-retries-siblings"),
        pytest.param("all", {"A": EXPIRED}, (), id="all-never-retries"),
        pytest.param("partial", {}, (), id="partial-only-siblings-no-retry"),
    ],
)
def test_plan_retry(mode: Mode, failures: dict[str, Failure], expected: tuple[str, ...]) -> None:
    by_code = {c: CodeOutcome(c, failure=failures.get(c, SIBLING_FAILED)) for c in ("A", "B")}
    assert plan_retry(mode, by_code, ("A", "B"), ["B"]) == expected


def test_conclude_prices_the_redeemed_and_names_a_codes_own_failure_first() -> None:
    rule = DiscountRule.parse("ABS", D(100), None)
    redeemed = [CodeOutcome("A", rule=rule, ok=True), CodeOutcome("B", rule=rule, failure=EXPIRED)]
    outcome = conclude(redeemed, D(1000), "rdm_1")
    assert (outcome.failure, outcome.total_discount, outcome.ref) == (None, D("100.00"), "rdm_1")

    refused = [CodeOutcome("A", failure=SIBLING_FAILED), CodeOutcome("B", failure=EXPIRED)]
    assert conclude(refused, D(1000), "rdm_2").failure == EXPIRED


@pytest.mark.parametrize(
    ("code", "refuses"),
    [("CUSTOMER_NOT_FOUND", True), ("UPSTREAM_UNAVAILABLE", False), ("UPSTREAM_ERROR", False)],
)
def test_refuses_request_only_for_a_definitive_client_refusal(code: str, refuses: bool) -> None:
    assert refuses_request(UpstreamFailure(Failure(CATALOG[code]))) is refuses
