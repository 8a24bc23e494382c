"""Fixtures for the sandbox rule tests: a sandbox app on a test server with a frozen clock, and `Kit`, a
thin raw-HTTP helper (these tests deliberately do not use the project's Capillary client)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.sandbox import DEMO, SANDBOX_KEY, Sandbox, SandboxConfig, create_sandbox_app

#: A Tuesday, 10:00 UTC. The seeded "range_restricted" series is then only redeemable at 22:00.
FIXED_NOW = datetime(2030, 1, 15, 10, 0, tzinfo=UTC)

Json = dict[str, Any]


def basic_header(username: str, password: str) -> dict[str, str]:
    digest = hashlib.md5(password.encode()).hexdigest()
    raw = base64.b64encode(f"{username}:{digest}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


class Kit:
    """Raw HTTP calls against one sandbox; `sandbox` is the app's `Sandbox` for state assertions."""

    def __init__(self, client: TestClient[Any, Any], sandbox: Sandbox) -> None:
        self.client = client
        self.sandbox = sandbox

    # ---- auth ----
    def basic(self, store: str = "S001") -> dict[str, str]:
        till = DEMO.till(store)
        return basic_header(till.username, till.password)

    @staticmethod
    def basic_for(username: str, password: str) -> dict[str, str]:
        return basic_header(username, password)

    async def token(self) -> str:
        response = await self.client.post(
            "/v3/oauth/token/generate", json={"key": DEMO.client_key, "secret": DEMO.client_secret}
        )
        assert response.status == 200
        body = await response.json()
        token: str = body["data"]["accessToken"]
        return token

    async def oauth(self, store: str | None = None) -> dict[str, str]:
        headers = {"X-CAP-API-OAUTH-TOKEN": await self.token()}
        if store is not None:
            headers["X-CAP-API-ATTRIBUTION-ENTITY-TYPE"] = "STORE_CODE"
            headers["X-CAP-API-ATTRIBUTION-ENTITY-CODE"] = store
        return headers

    # ---- raw calls ----
    async def get(self, path: str, params: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Json]:
        response = await self.client.get(path, params=params, headers=headers or self.basic())
        return response.status, await response.json()

    async def post(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None, params: Any = None
    ) -> tuple[int, Json]:
        response = await self.client.post(path, json=body, headers=headers or self.basic(), params=params)
        return response.status, await response.json()

    # ---- operations ----
    async def is_redeemable(
        self, *codes: str, customer: str = "alice", headers: dict[str, str] | None = None
    ) -> tuple[int, Json]:
        params = {"mobile": DEMO.customer(customer).mobile, "code": ",".join(codes), "details": "false"}
        return await self.get("/v2/coupon/is_redeemable", params, headers)

    def redeem_body(self, *codes: str, customer: str = "alice", bill: Any = "2000", txn: str | None = "TXN-1") -> Json:
        body: Json = {
            "billAmount": bill,
            "user": {"mobile": DEMO.customer(customer).mobile},
            "redemptionTime": "2030-01-15 10:00:00",
            "redemptionRequestList": [{"code": c} for c in codes],
        }
        if txn is not None:
            body["transactionNumber"] = txn
        return body

    async def redeem(
        self,
        code: str,
        *,
        customer: str = "alice",
        bill: Any = "2000",
        txn: str | None = "TXN-1",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Json]:
        body = self.redeem_body(code, customer=customer, bill=bill, txn=txn)
        return await self.post("/v2/coupon/redeem", body, headers)

    async def bulk_redeem(
        self,
        *codes: str,
        customer: str = "alice",
        bill: Any = "2000",
        txn: str | None = "TXN-B",
        headers: dict[str, str] | None = None,
        params: Any = None,
    ) -> tuple[int, Json]:
        body = self.redeem_body(*codes, customer=customer, bill=bill, txn=txn)
        query = {"source": "INSTORE"} if params is None else params
        return await self.post("/v2/coupon/bulk/redeem", body, headers, params=query)

    def active_redemptions(self) -> int:
        return sum(1 for r in self.sandbox.state.redemptions.values() if not r.reversed)


def redeem_code(body: Json) -> int:
    """The business code of a single-redeem response (top-level aggregate)."""
    code: int = body["redemptionStatus"]["code"]
    return code


MakeKit = Callable[..., Awaitable[Kit]]


@pytest.fixture
def now() -> datetime:
    return FIXED_NOW


@pytest.fixture
def base_config() -> SandboxConfig:
    return SandboxConfig(clock=lambda: FIXED_NOW, upload_job_seconds=1.0)


@pytest.fixture
def make_kit(aiohttp_client: Any, base_config: SandboxConfig) -> MakeKit:
    async def make(**overrides: Any) -> Kit:
        app = create_sandbox_app(replace(base_config, **overrides))
        client = await aiohttp_client(app)
        return Kit(client, app[SANDBOX_KEY])

    return make


@pytest.fixture
async def kit(make_kit: MakeKit) -> Kit:
    return await make_kit()
