"""The vendored upstream documents are the originals, byte for byte, whenever the originals are at hand."""

from __future__ import annotations

import pytest

from tests.contract.samples import DOCS, ORIGINAL_DOCS, load_samples


def test_the_vendored_documents_hold_the_samples() -> None:
    names = {p.name for p in DOCS.glob("*.txt")}
    assert len(names) == 5
    headings = {s.heading for s in load_samples()}
    assert {"Redeem Coupons", "Redeem Coupon (Single)", "Redeem Customer Coupons (Bulk)"} <= headings


def test_the_vendored_documents_equal_the_originals() -> None:
    if not ORIGINAL_DOCS.is_dir():
        pytest.skip("the original documents are not beside this checkout")
    originals = {p.name: p.read_bytes() for p in ORIGINAL_DOCS.glob("*.txt")}
    vendored = {p.name: p.read_bytes() for p in DOCS.glob("*.txt")}
    assert vendored == originals
    notes = ORIGINAL_DOCS.parent / "design" / "capillary-notes.md"
    if notes.is_file():
        assert (DOCS.parent / "capillary-notes.md").read_bytes() == notes.read_bytes()
