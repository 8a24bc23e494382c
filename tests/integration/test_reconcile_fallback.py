"""Reconciliation's fallback: where Capillary refuses the customer-coupons lookup outright, a single-use code this
request holds the lock on and that ``is_redeemable`` now calls used went through with it. Every cluster's word for
"already used" counts, 706 ("cannot redeem the same voucher multiple times") included; any other refusal does not.
"""

from __future__ import annotations

import pytest

from service.capillary.client import CapillaryClient
from service.capillary.coupons import CapillaryCoupons
from service.redemption.models import CustomerRef
from service.sandbox import DEMO, Fault, FaultKind
from tests.conftest import Upstream

ALICE = CustomerRef("mobile", DEMO.customer("alice").mobile or "")


@pytest.mark.parametrize(("code", "used"), [(706, True), (711, True), (716, True), (747, True), (713, False)])
async def test_is_redeemable_says_whether_it_went_through(
    oauth_client: CapillaryClient, upstream: Upstream, code: int, used: bool
) -> None:
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "customer_coupons", status=403))
    upstream.sandbox.add_fault(Fault(FaultKind.CODE, "is_redeemable", code=code))
    found = await CapillaryCoupons(oauth_client).find_redemptions(ALICE, ("ABS-ALICE-1",), "T-1")
    assert ("ABS-ALICE-1" in found) is used
    assert upstream.sandbox.call_count("is_redeemable") == 1
