"""Both auth schemes against the sandbox: token reuse, renewal before expiry, one refresh-and-retry on 401,
one refresh at a time under concurrency, and refused credentials as typed errors."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from service.capillary.client import CapillaryClient
from service.capillary.errors import CapillaryAuthError
from service.capillary.models import Customer
from service.sandbox import DEMO
from tests.conftest import StartUpstream, Upstream

ALICE = Customer(mobile=DEMO.customer("alice").mobile)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def timed(upstream: Upstream) -> AsyncIterator[tuple[CapillaryClient, FakeClock]]:
    clock = FakeClock()
    client = CapillaryClient(upstream.settings("oauth"), clock=clock)
    yield client, clock
    await client.close()


async def test_the_auth_scheme_is_the_configured_one(capillary: CapillaryClient, upstream: Upstream) -> None:
    await capillary.is_redeemable(ALICE, ["ABS-ALICE-1"])
    [call] = upstream.sandbox.calls_of("is_redeemable")
    assert call.auth == capillary.settings.auth
    assert call.status == 200
    assert upstream.sandbox.call_count("token") == (1 if capillary.settings.auth == "oauth" else 0)


async def test_token_is_reused_then_renewed_before_it_expires(
    timed: tuple[CapillaryClient, FakeClock], upstream: Upstream
) -> None:
    client, clock = timed
    sandbox = upstream.sandbox
    await client.is_redeemable(ALICE, ["ABS-ALICE-1"])
    clock.now += 250
    sandbox.advance(250)
    await client.is_redeemable(ALICE, ["ABS-ALICE-1"])
    assert sandbox.call_count("token") == 1  # still fresh: reused

    clock.now += 25  # 275 s of a 300 s token: inside the renewal margin
    sandbox.advance(25)
    await client.is_redeemable(ALICE, ["ABS-ALICE-1"])
    assert sandbox.call_count("token") == 2
    assert [c.status for c in sandbox.calls_of("is_redeemable")] == [200, 200, 200]  # never a 401


async def test_a_401_refreshes_once_and_retries_once(
    timed: tuple[CapillaryClient, FakeClock], upstream: Upstream
) -> None:
    client, _ = timed
    sandbox = upstream.sandbox
    await client.is_redeemable(ALICE, ["ABS-ALICE-1"])
    sandbox.advance(400)  # the token expired upstream while the client thinks it fresh
    reply = await client.is_redeemable(ALICE, ["ABS-ALICE-1"])
    assert reply.redemption[0].is_redeemable
    assert [c.status for c in sandbox.calls_of("is_redeemable")] == [200, 401, 200]
    assert sandbox.call_count("token") == 2


async def test_concurrent_401s_share_one_refresh(oauth_client: CapillaryClient, upstream: Upstream) -> None:
    sandbox = upstream.sandbox
    await oauth_client.is_redeemable(ALICE, ["ABS-ALICE-1"])
    sandbox.revoke_tokens()
    replies = await asyncio.gather(*(oauth_client.is_redeemable(ALICE, ["ABS-ALICE-1"]) for _ in range(10)))
    assert all(r.redemption[0].is_redeemable for r in replies)
    assert sandbox.call_count("token") == 2


async def test_concurrent_first_calls_fetch_one_token(oauth_client: CapillaryClient, upstream: Upstream) -> None:
    await asyncio.gather(*(oauth_client.is_redeemable(ALICE, ["ABS-ALICE-1"]) for _ in range(10)))
    assert upstream.sandbox.call_count("token") == 1


async def test_a_multipart_upload_is_resent_after_a_401(oauth_client: CapillaryClient, upstream: Upstream) -> None:
    sandbox = upstream.sandbox
    await oauth_client.upload_status(DEMO.series_of("any_user").id)
    sandbox.revoke_tokens()
    reply = await oauth_client.upload_coupons(
        DEMO.series_of("any_user").id, b"code\nRESENT-1\n", identifier_type="NOT_TAGGED", identifier_column=0
    )
    assert reply.success
    assert [c.status for c in sandbox.calls_of("upload_coupons")] == [401, 200]
    assert len(sandbox.state.upload_jobs) == 1  # one job, not two


async def test_a_refused_key_is_a_typed_auth_error(upstream: Upstream) -> None:
    settings = dataclasses.replace(upstream.settings("oauth"), client_secret="wrong")
    async with CapillaryClient(settings) as client:
        with pytest.raises(CapillaryAuthError) as caught:
            await client.is_redeemable(ALICE, ["ABS-ALICE-1"])
    assert (caught.value.operation, caught.value.http_status) == ("token", 401)
    assert upstream.sandbox.call_count("is_redeemable") == 0


async def test_a_refused_till_password_is_not_retried(upstream: Upstream) -> None:
    settings = dataclasses.replace(upstream.settings("basic"), till_password="wrong")
    async with CapillaryClient(settings) as client:
        with pytest.raises(CapillaryAuthError) as caught:
            await client.is_redeemable(ALICE, ["ABS-ALICE-1"])
    assert (caught.value.operation, caught.value.http_status) == ("is_redeemable", 401)
    assert upstream.sandbox.call_count("is_redeemable") == 1


async def test_a_short_token_lifetime_is_honoured(start_upstream: StartUpstream) -> None:
    upstream = await start_upstream(token_ttl_seconds=5)
    clock = FakeClock()
    async with CapillaryClient(upstream.settings("oauth"), clock=clock) as client:
        for _ in range(3):
            await client.is_redeemable(ALICE, ["ABS-ALICE-1"])
            clock.now += 4.5  # a 5 s token is renewed 1 s before it lapses
            upstream.sandbox.advance(4.5)
    assert upstream.sandbox.call_count("token") == 3
    assert {c.status for c in upstream.sandbox.calls_of("is_redeemable")} == {200}
