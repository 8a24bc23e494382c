"""Settling provisional redemptions once Capillary is back: the documented redeemed-coupons upload.

Why the upload and not a late v2 redeem: Capillary's redeem takes a ``redemptionTime`` but public sources say it is
not stored (``capillary-notes.md``): a late redeem would be recorded at settling time, not at the till's. The upload
(``redeemFile``) records redemptions made elsewhere with their own date (``redeemedDateInMillis``), where
(``redeemedAt``: the till, else the store) and bill number, and reports each rejected row in the job's error file.

Exactly once: one settler at a time across replicas (a lease in the journal). Each upload is a batch recorded in
the journal *before* it is sent, its file named after the batch; the lines it carries are marked ``sent``. A batch
left behind (the answer lost, the process gone) is looked up in the series' job list by that file name: found, its
job is followed; absent (the upload never arrived), its lines are opened again for a later batch. A line is never
in two batches, and a batch is never sent twice.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from yarl import URL

from service.capillary.client import CapillaryClient
from service.capillary.coupons import CapillaryCoupons
from service.capillary.errors import CapillaryError
from service.capillary.models import IdentifierType, UploadJob
from service.idempotency.models import StoredResponse
from service.idempotency.store import StoreUnavailable
from service.offline.journal import Batch, JournalUnavailable, Provisional
from service.offline.service import Offline, provisional_body
from service.redemption.flow import UpstreamFailure
from service.redemption.models import CustomerRef

log = structlog.get_logger("service.offline.settler")

_IDENTIFIER: dict[str, IdentifierType] = {
    "mobile": "MOBILE",
    "email": "EMAIL",
    "externalId": "EXTERNAL_ID",
    "id": "USER_ID",
}
_COLUMN = {"mobile": "mobile", "email": "email", "externalId": "externalId", "id": "userId"}
_DONE = {"COMPLETED", "FINISHED", "FAILED"}
#: Columns of the uploaded file.
HEADER = ("redeemedDateInMillis", "redeemedAt", "customer", "couponCode", "billNumber", "details")


def reason_of(text: str) -> str:
    """A conflict reason from an error file's row message."""
    lowered = text.lower()
    if "already redeemed" in lowered or "already used" in lowered:
        return "COUPON_ALREADY_REDEEMED"
    if "customer not found" in lowered:
        return "CUSTOMER_NOT_FOUND"
    if "not issued to this customer" in lowered:
        return "COUPON_NOT_FOR_CUSTOMER"
    if "coupon not found" in lowered:
        return "COUPON_NOT_FOUND"
    if "expired" in lowered:
        return "COUPON_EXPIRED"
    return "REJECTED_BY_CAPILLARY"


@dataclass
class Settler:
    offline: Offline
    client: CapillaryClient
    coupons: CapillaryCoupons
    render_redeemed: Callable[[Provisional, dict[str, int]], StoredResponse]
    poll_interval: float = 1.0
    job_wait: float = 60.0  # how long one round follows a job before leaving it to the next round
    lease_seconds: float = 120.0
    clock: Callable[[], float] = time.time
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    last_round: float | None = None
    _round: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def journal(self) -> Any:
        return self.offline.journal

    def healthy(self) -> bool:
        return all(b.state.value == "closed" for b in self.client.breakers)

    async def settle(self) -> dict[str, int]:
        """One round, if this replica holds the lease and Capillary is up. Returns what it did."""
        if self._round.locked():  # the background round and POST /v1/offline/settle: one at a time here too
            return {"busy": 1}
        async with self._round:
            return await self._settle()

    async def _settle(self) -> dict[str, int]:
        done: dict[str, int] = {}
        self.offline.snapshot = await self.journal.outstanding()
        if not self.healthy():
            return {"skipped": 1}
        if not await self.journal.lease("settler", self.owner, self.lease_seconds):
            return {"busy": 1}
        try:
            outstanding = await self.journal.outstanding()
            batches = await self.journal.batches()
            if not outstanding and not batches:
                return done
            if not await self._probe(outstanding, batches):
                return {"skipped": 1}
            for batch in batches:
                await self._follow(batch, done)
            await self._expire(done)
            for batch in await self._new_batches():
                await self._send(batch, done)
            self.last_round = self.clock()
            self.offline.snapshot = await self.journal.outstanding()
        finally:
            await self.journal.release("settler", self.owner)
        return done

    async def _probe(self, outstanding: list[Provisional], batches: list[Batch]) -> bool:
        """The check that failed answers again: ``is_redeemable`` for the oldest outstanding code (any verdict will
        do); with only batches left, a read of their series."""
        try:
            if outstanding:
                item = outstanding[0]
                customer = CustomerRef(item.customer_kind, item.customer)
                await self.coupons.check(customer, item.codes[:1], store=item.store)
            else:
                await self.client.series([batches[0].series_id])
        except (CapillaryError, UpstreamFailure) as exc:
            log.info("settler_upstream_not_answering", error=type(exc).__name__)
            return False
        return True

    async def _expire(self, done: dict[str, int]) -> None:
        limit = self.offline.policy.expire_after_seconds
        async with self.journal.exclusive():
            for item in await self.journal.outstanding():
                if self.clock() - item.at > limit and all(line.state == "open" for line in item.lines):
                    await self._conflict(item, "EXPIRED_OFFLINE")
                    done["expired"] = done.get("expired", 0) + 1

    async def _new_batches(self) -> list[Batch]:
        """Mark every open line as sent in a new batch (one per series and identifier type), under the mutex."""
        batches: dict[tuple[int, str], Batch] = {}
        async with self.journal.exclusive():
            items = await self.journal.outstanding()
            for item in items:
                touched = False
                for line in item.lines:
                    if line.state != "open":
                        continue
                    group = (line.series_id, item.customer_kind)
                    if group not in batches:
                        name = f"offline_{line.series_id}_{uuid.uuid4().hex[:16]}"
                        batches[group] = Batch(
                            id=name,
                            series_id=line.series_id,
                            customer_kind=item.customer_kind,
                            rows=[],
                            created_at=self.clock(),
                        )
                    batches[group].rows.append((item.ref, line.code))
                    line.state, line.batch, touched = "sent", batches[group].id, True
                if touched:
                    await self.journal.put(item)
            for batch in batches.values():  # recorded before the items say "sent"? both in one exclusive block
                await self.journal.put_batch(batch)
        return list(batches.values())

    def _file(self, batch: Batch, items: dict[str, Provisional]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        for ref, code in batch.rows:
            item = items[ref]
            writer.writerow(
                (
                    str(int(item.at * 1000)),
                    item.till or item.store,
                    item.customer,
                    code,
                    item.transaction_number,
                    f"gateway ref {ref} store {item.store} till {item.till or '-'}",
                )
            )
        return out.getvalue().encode()

    async def _send(self, batch: Batch, done: dict[str, int]) -> None:
        items = {item.ref: item for item in await self.journal.outstanding()}
        data = self._file(batch, items)
        headers = {key: i for i, key in enumerate(HEADER) if key != "customer"}
        headers[_COLUMN[batch.customer_kind]] = HEADER.index("customer")
        headers.pop("details")
        try:
            reply = await self.client.upload_redeemed_coupons(
                batch.series_id,
                data,
                customer_identifier=_IDENTIFIER[batch.customer_kind],
                coupon_identifier="COUPON_CODE",
                upload_headers=headers,
                details="offline redemptions settled by the gateway",
                filename=batch.id + ".csv",
            )
        except CapillaryError as exc:
            log.warning("settler_upload_unanswered", batch=batch.id, error=type(exc).__name__)  # the job list will tell
            return  # reconciled by the job list in the next round, never resent blindly
        job = next(iter(reply.result.jobs), None) if reply.result else None
        if job is not None:
            batch.job_id = job.job_id
            await self.journal.put_batch(batch)
        await self._follow(batch, done)

    async def _job(self, batch: Batch) -> UploadJob | None:
        reply = await self.client.redeemed_upload_status(batch.series_id)
        jobs = reply.result.jobs if reply.result else []
        for job in jobs:
            if job.job_id == batch.job_id or (job.uploaded_file_name or "") in (batch.id + ".csv", batch.id):
                return job
        return None

    async def _follow(self, batch: Batch, done: dict[str, int]) -> None:
        """Follow a batch's job to its end, then settle its lines from the error file."""
        deadline = time.monotonic() + self.job_wait
        while True:
            try:
                job = await self._job(batch)
            except CapillaryError as exc:
                log.info("settler_job_list_unavailable", series_id=batch.series_id, error=type(exc).__name__)
                return
            if job is None:
                if batch.job_id is None:  # the upload never arrived: its lines go into a later batch
                    await self._reopen(batch)
                    done["reopened"] = done.get("reopened", 0) + len(batch.rows)
                return
            if batch.job_id is None:
                batch.job_id = job.job_id
                await self.journal.put_batch(batch)
            if (job.status or "").upper() in _DONE:
                break
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(self.poll_interval)
            if not await self.journal.lease("settler", self.owner, self.lease_seconds):  # renewed while it waits
                return
        try:
            refused = await self._errors(job) if job.error_count else {}
        except (aiohttp.ClientError, TimeoutError) as exc:  # the batch stays: the next round reads it again
            log.warning("settler_error_file_unreadable", job=job.job_id, error=type(exc).__name__)
            return
        await self._settle_lines(batch, refused, done)

    async def _errors(self, job: UploadJob) -> dict[str, str]:
        """The rejected rows of a job: coupon code -> reason, from its error file."""
        if not job.error_file_url:
            return {}
        url = URL(self.client_upload_url()).join(URL(job.error_file_url))
        timeout = aiohttp.ClientTimeout(total=self.client.settings.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            response.raise_for_status()
            text = await response.text()
        refused = {}
        for row in csv.DictReader(io.StringIO(text)):
            code = row.get("couponCode") or ""
            if code:
                refused[code] = row.get("error") or row.get("reason") or ""
        return refused

    def client_upload_url(self) -> str:
        return self.client.settings.upload_url.rstrip("/") + "/"

    async def _reopen(self, batch: Batch) -> None:
        async with self.journal.exclusive():
            for ref, code in batch.rows:
                item = await self.journal.get(ref)
                if item is None:
                    continue
                for line in item.lines:
                    if line.code == code and line.batch == batch.id:
                        line.state, line.batch = "open", None
                await self.journal.put(item)
            await self.journal.remove_batch(batch.id)

    async def _settle_lines(self, batch: Batch, refused: dict[str, str], done: dict[str, int]) -> None:
        async with self.journal.exclusive():
            touched: dict[str, Provisional] = {}
            for ref, code in batch.rows:
                item = touched.get(ref) or await self.journal.get(ref)
                if item is None:
                    continue
                touched[ref] = item
                for line in item.lines:
                    if line.code == code and line.batch == batch.id:
                        if code in refused:
                            line.state, line.reason = "refused", reason_of(refused[code])
                        else:
                            line.state = "ok"
            for item in touched.values():
                await self.journal.put(item)
            await self.journal.remove_batch(batch.id)
        for item in touched.values():
            if all(line.state in ("ok", "refused") for line in item.lines):
                await self._resolve(item, done)

    async def _resolve(self, item: Provisional, done: dict[str, int]) -> None:
        refused = [line for line in item.lines if line.state == "refused"]
        if refused:
            async with self.journal.exclusive():
                await self._conflict(item, refused[0].reason or "REJECTED_BY_CAPILLARY")
            done["conflict"] = done.get("conflict", 0) + 1
            return
        ids: dict[str, int] = {}
        try:
            found = await self.coupons.find_redemptions(
                CustomerRef(item.customer_kind, item.customer),
                tuple(item.codes),
                item.transaction_number,
            )
            for code in item.codes:
                best = max((r.id for r in found.get(code, ()) if r.id), default=0)
                ids[code] = best
        except Exception as exc:  # the ids are a nicety: the redemption is recorded either way
            log.info("settler_redemption_ids_not_found", ref=item.ref, error=type(exc).__name__)
            ids = dict.fromkeys(item.codes, 0)
        answer = self.render_redeemed(item, ids)
        await self.journal.settled(item.ref, item.store.encode() + b"\n" + answer.body, self.offline.ttl)
        entry = await self.offline.ledger.load(item.ref)
        if entry is not None:
            entry.state, entry.redemption_ids = "done", ids
            entry.response = answer
            try:
                await self.offline.ledger.resolve(entry, self.offline.ttl, force=True)
            except StoreUnavailable:
                log.error("settler_settled_not_in_ledger", ref=item.ref)  # the ledger could not record it
                return
        await self.journal.remove(item.ref)
        self.offline.settled["redeemed"] += 1
        done["redeemed"] = done.get("redeemed", 0) + 1
        log.info("provisional_redemption_settled", ref=item.ref)

    async def _conflict(self, item: Provisional, reason: str) -> None:
        """Inside the journal's exclusive block: the item becomes a conflict; its ledger answer says so."""
        item.state, item.reason, item.resolved_at = "conflict", reason, self.clock()
        await self.journal.conflict(item)
        self.offline.conflicts_by_reason[reason] += 1
        entry = await self.offline.ledger.load(item.ref)
        if entry is not None:
            entry.state, entry.redemption_ids = "done", {}
            entry.response = StoredResponse("provisional", provisional_body(item, "conflict"), status=200)
            try:
                await self.offline.ledger.resolve(entry, self.offline.ttl, force=True)
            except StoreUnavailable:
                log.error("settler_conflict_not_in_ledger", ref=item.ref)
        log.warning("provisional_redemption_conflict", ref=item.ref, reason=reason)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.settle()
            except (JournalUnavailable, StoreUnavailable) as exc:
                log.warning("settler_round_skipped", error=str(exc))
            except Exception:
                log.exception("settler_round_failed")
