"""The redemption domain: pure decisions (discounts, eligibility, outcomes); no I/O."""
