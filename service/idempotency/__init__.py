"""Exactly-once redemption: the idempotency ledger, per-coupon locks, and reconciliation of unknown outcomes.

One port (:class:`~service.idempotency.store.LedgerStore`), two implementations: in memory (one process) and
Redis (several replicas; state survives a restart).
"""
