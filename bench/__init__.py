"""Benchmark harness for the gateway: ``python -m bench [--quick] [--redis] [--json PATH]``.

One run starts, on 127.0.0.1 only: the Capillary sandbox as the upstream (its own process, fixed injected latency,
faults off, seeded with fresh coupons on demand), the gateway, a bare pass-through baseline, and an open-loop load
generator (its own process). It measures each against the same upstream and the direct floor (the generator making
the upstream calls itself), prints a table and writes JSON. See ``bench.harness`` for the plan.
"""
