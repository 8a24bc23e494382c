"""A 100 MB CSV goes through the gateway in bounded memory: received to disk in chunks, checked line by line, and
sent upstream from disk. Measured as the growth of the process's peak resident set over the whole request (the
test's client, the gateway and a stand-in upload host all run in this process, so the bound covers all three)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from service.sandbox import DEMO
from tests.conftest import StartGateway, Upstream

MB = 1024 * 1024
FILE_BYTES = 100 * MB
#: Generous: the file is 100 MB; the duplicate-code table for its ~1 M rows takes ~25 MB (~38 MB while it grows).
MEMORY_BOUND = 64 * MB
SERIES = DEMO.series_of("any_user").id


def _generate(path: Path) -> tuple[int, int]:
    """A valid coupon CSV of about 100 MB: a mobile number, a unique code and a note per row."""
    note = "n" * 64
    rows = 0
    with path.open("w", encoding="utf-8", newline="") as file:
        file.write("mobile,code,note\n")
        written = 17
        while written < FILE_BYTES:
            lines = [
                f"91{9900000000 + (rows + i) % 99_999_999:010d},BULK-{rows + i:024d},{note}\n" for i in range(10_000)
            ]
            chunk = "".join(lines)
            file.write(chunk)
            written += len(chunk)
            rows += len(lines)
    return path.stat().st_size, rows


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakMemory:
    """The most memory the process took above where it started: its peak resident set size (Linux: reset with
    ``/proc/self/clear_refs``), else tracemalloc's peak (much slower: it traces every allocation)."""

    def __init__(self) -> None:
        self.how = "rss"
        self.peak = 0
        self._base = 0

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._base = _status("VmRSS")
        except (OSError, KeyError):
            self.how = "tracemalloc"
            tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.how == "rss":
            self.peak = _status("VmHWM") - self._base
        else:
            self.peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()


class Sink:
    """The upload host, reading the multipart stream in chunks and keeping only a count of the file's bytes."""

    def __init__(self) -> None:
        self.file_bytes = 0
        self.fields: dict[str, str] = {}

    async def upload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            if part.name == "file":
                while chunk := await part.read_chunk(256 * 1024):
                    self.file_bytes += len(chunk)
            else:
                self.fields[part.name or ""] = (await part.read()).decode()
        job = {
            "jobId": 1,
            "uploadStatus": "STARTED",
            "uploadedFileUrl": "bulk_1_10010.csv",
            "uploadedFileName": "bulk.csv",
        }
        result = {"couponSeriesId": SERIES, "uploadJobStatuses": [job], "fileName": "bulk_1_10010.csv"}
        return web.json_response({"success": True, "status": 200, "result": result})

    async def series(self, request: web.Request) -> web.Response:
        return web.json_response({"entity": [{"id": SERIES, "description": "bulk"}]})

    async def token(self, request: web.Request) -> web.Response:
        """The upload host takes OAuth only, so the gateway fetches a token even under Basic auth."""
        return web.json_response({"data": {"accessToken": "sink-token", "ttlSeconds": 300}, "errors": None})


async def test_a_100_mb_file_is_streamed_in_bounded_memory(
    start_gateway: StartGateway, upstream: Upstream, aiohttp_server: Any, tmp_path: Path
) -> None:
    path = tmp_path / "bulk.csv"
    size, rows = _generate(path)
    assert size >= FILE_BYTES
    sink = Sink()
    app = web.Application()
    app.router.add_post("/coupon/api/v1/upload/file/{seriesId}", sink.upload)
    app.router.add_get("/v2/coupon/series", sink.series)
    app.router.add_post("/v3/oauth/token/generate", sink.token)
    server = await aiohttp_server(app)
    gateway = await start_gateway(Upstream(upstream.sandbox, str(server.make_url("")).rstrip("/")), auth="basic")

    with PeakMemory() as memory, path.open("rb") as file:
        response = await gateway.post(
            f"/v1/series/{SERIES}/coupon-uploads",
            data=file,
            params={"identifierType": "MOBILE", "fileName": "bulk.csv"},
            headers={"Content-Type": "text/csv"},
            timeout=aiohttp.ClientTimeout(total=110),
        )
        body = await response.json()
    peak = memory.peak

    assert response.status == 202, body
    assert body["report"]["rows"] == rows
    assert body["report"]["bytes"] == size
    assert sink.file_bytes == size  # every byte went upstream
    assert sink.fields["customerIdentifier"] == "MOBILE"
    assert peak < MEMORY_BOUND, f"peak {peak / MB:.1f} MB for a {size / MB:.0f} MB file"
    print(f"\npeak memory ({memory.how}) {peak / MB:.1f} MB for a {size / MB:.0f} MB file of {rows} rows")
