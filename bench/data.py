"""Deterministic benchmark data shared by the upstream process and the load generator.

Customer ``i`` has mobile ``mobile(i)`` and ``CODES_PER_CUSTOMER`` fresh codes of one ABS series with no limits.
Codes are addressed by a *unit* number: unit ``u`` is code ``u % CODES_PER_CUSTOMER`` of customer
``u // CODES_PER_CUSTOMER``. A one-code request uses one unit; a several-code request uses one whole customer
(``CODES_PER_CUSTOMER`` units, of which its first codes), so every request of a run gets coupons never used before.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

CODES_PER_CUSTOMER: Final = 5
SERIES_ID: Final = 990001
BILL_AMOUNT: Final = "2000.00"
CLIENT_KEY: Final = "sandbox-client-key"
CLIENT_SECRET: Final = "sandbox-client-secret"
#: The API key the load generator sends to the gateway and the baseline (``Authorization: Bearer``); the gateway
#: is started with a key file holding its SHA-256 (see `api_keys_json`).
API_KEY: Final = "bench-api-key-0123456789abcdef"
API_KEY_STORE: Final = "S001"  # the sandbox's default store: the same store the baseline's calls are attributed to
CALLS_PATH: Final = "/__bench/calls"
SEED_PATH: Final = "/__bench/seed"


def mobile(customer: int) -> str:
    return f"9170{customer:08d}"


def code(unit: int) -> str:
    return f"BX{unit // CODES_PER_CUSTOMER:08d}{unit % CODES_PER_CUSTOMER}"


def units_per_request(codes: int) -> int:
    if not 1 <= codes <= CODES_PER_CUSTOMER:
        raise ValueError(f"between 1 and {CODES_PER_CUSTOMER} codes per request, got {codes}")
    return 1 if codes == 1 else CODES_PER_CUSTOMER


def request_codes(first_unit: int, index: int, codes: int) -> tuple[str, list[str]]:
    """The customer's mobile and the codes of request ``index`` of a run starting at ``first_unit``."""
    start = first_unit + index * units_per_request(codes)
    customer = start // CODES_PER_CUSTOMER
    return mobile(customer), [code(start + k) for k in range(codes)]


def api_keys_json() -> str:
    """The gateway's key file (``GATEWAY_API_KEYS_FILE``): one key, ``API_KEY``, allowed to redeem."""
    entry = {
        "keySha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
        "name": "bench",
        "store": API_KEY_STORE,
        "scopes": ["redeem"],
    }
    return json.dumps([entry], indent=2)
