"""Offline acceptance: provisional redemptions under risk caps while Capillary cannot be reached, journaled
durably and settled exactly once through the documented redeemed-coupons upload when it is back (docs/offline.md)."""
