"""The operator CLI end to end: ``coupon-gateway coupons ...`` as a real process against a live gateway on a free
loopback port, in front of a sandbox running on the real clock (its upload jobs finish on their own)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.backoffice.conftest import ABS, ALICE, ANY, BOB, CAROL
from tests.conftest import ADMIN_KEY, TILL_KEY, GatewayClient, StartGateway, StartUpstream, Upstream, free_port


class Cli:
    def __init__(self, url: str) -> None:
        self.url = url

    async def __call__(self, *args: str, key: str = ADMIN_KEY) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "CAPILLARY_", "SANDBOX_"))}
        env.update(GATEWAY_URL=self.url, GATEWAY_API_KEY=key, COLUMNS="200", NO_COLOR="1")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "coupons",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=90)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def live(start_upstream: StartUpstream, start_gateway: StartGateway) -> tuple[Upstream, GatewayClient]:
    upstream = await start_upstream(clock=lambda: datetime.now(UTC), upload_job_seconds=0.4)
    return upstream, await start_gateway(upstream)


@pytest.fixture
def cli(live: tuple[Upstream, GatewayClient]) -> Cli:
    return Cli(str(live[1].make_url("")).rstrip("/"))


async def test_upload_follows_the_job_until_it_finishes(
    cli: Cli, live: tuple[Upstream, GatewayClient], tmp_path: Path
) -> None:
    upstream, _ = live
    path = tmp_path / "spring.csv"
    path.write_text(f"mobile,code\n{BOB.mobile},CLI-BOB-1\n{CAROL.mobile},CLI-CAROL-1\n")
    status, out, err = await cli(
        "upload", str(path), "--series", str(ABS), "--identifier-type", "mobile", "--poll-interval", "0.2"
    )
    assert status == 0, (out, err)
    assert "finished (FINISHED)" in out
    assert "2 / 2 / 0" in out  # rows / uploaded / errors
    assert "spring.csv" in out
    assert "upload spring.csv" in err  # the transfer's progress bar
    assert "job finished" in err  # then the job's
    assert upstream.sandbox.coupon("CLI-BOB-1").customer_id == BOB.id

    # the same file again: the first job, no second upload
    status, out, err = await cli("upload", str(path), "--series", str(ABS), "--identifier-type", "MOBILE", "--json")
    assert status == 0, (out, err)
    assert "already uploaded" in err
    assert json.loads(out)["status"] == "finished"
    assert upstream.sandbox.call_count("upload_coupons") == 1


async def test_a_bad_file_prints_the_report_and_fails(
    cli: Cli, live: tuple[Upstream, GatewayClient], tmp_path: Path
) -> None:
    upstream, _ = live
    path = tmp_path / "bad.csv"
    path.write_text(f"mobile,code\n{BOB.mobile},CLI-1\n12345,CLI-2\n{CAROL.mobile},CLI-1\n")
    status, out, err = await cli("upload", str(path), "--series", str(ABS), "--identifier-type", "MOBILE")
    assert status == 1
    assert "INVALID_UPLOAD" in err
    assert "Pre-flight report" in out
    lines = [line for line in out.splitlines() if "│" in line]
    assert any("3" in line and "mobile" in line and "not a mobile number" in line for line in lines), out
    assert any("4" in line and "already on row 2" in line for line in lines), out
    assert upstream.sandbox.call_count("upload_coupons") == 0

    status, out, _ = await cli("upload", str(path), "--series", str(ABS), "--identifier-type", "MOBILE", "--dry-run")
    assert status == 1
    assert "2 problem(s)" in out


async def test_redemptions_upload_and_dry_run(cli: Cli, live: tuple[Upstream, GatewayClient], tmp_path: Path) -> None:
    upstream, _ = live
    path = tmp_path / "offline.csv"
    path.write_text(f"code,mobile,date,store\nABS-ALICE-1,{ALICE.mobile},1893456000000,S004\n")
    mapping = '{"couponCode": "code", "mobile": 1, "redeemedDateInMillis": "date", "redeemedAt": "store"}'
    common = ["--series", str(ABS), "--customer-identifier", "MOBILE", "--coupon-identifier", "COUPON_CODE"]
    status, out, err = await cli("upload-redemptions", str(path), *common, "--headers", mapping, "--dry-run")
    assert (status, upstream.sandbox.call_count("upload_redeemed")) == (0, 0), (out, err)
    assert "valid" in out
    status, out, err = await cli(
        "upload-redemptions", str(path), *common, "--headers", mapping, "--poll-interval", "0.2", "--json"
    )
    assert status == 0, (out, err)
    job = json.loads(out)
    assert (job["kind"], job["status"], job["counts"]["uploaded"]) == ("redemptions", "finished", 1)
    assert [r.store for r in upstream.sandbox.redemptions_of("ABS-ALICE-1")] == ["S004"]

    status, out, _ = await cli("jobs", "--series", str(ABS), "--kind", "redemptions", "--json")
    assert status == 0
    assert [j["jobId"] for j in json.loads(out)["jobs"]] == [job["jobId"]]


async def test_issue_and_details(cli: Cli, live: tuple[Upstream, GatewayClient]) -> None:
    upstream, _ = live
    status, out, err = await cli("--json", "issue", "--series", str(ANY), "--email", BOB.email or "")
    assert status == 0, (out, err)
    code = json.loads(out)["code"]
    assert upstream.sandbox.coupon(code).customer_id == BOB.id

    status, out, _ = await cli("details", code, "ABS-ALICE-1")
    assert status == 0
    assert code in out
    assert "ABS-ALICE-1" in out

    status, _, err = await cli("details", "NO-SUCH-CODE")
    assert status == 1
    assert "COUPON_NOT_FOUND" in err


async def test_refusals_exit_non_zero(cli: Cli, tmp_path: Path) -> None:
    status, _, err = await cli("details", "ABS-ALICE-1", key=TILL_KEY)  # a till's key has no admin scope
    assert status == 1
    assert "FORBIDDEN" in err
    status, _, err = await cli(
        "upload", str(tmp_path / "missing.csv"), "--series", str(ABS), "--identifier-type", "MOBILE"
    )
    assert status == 2
    assert "no such file" in err
    unreachable = Cli(f"http://127.0.0.1:{free_port()}")
    status, _, err = await unreachable("details", "ABS-ALICE-1")
    assert status == 3
    assert "cannot reach the gateway" in err


def test_help_lists_the_commands() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "service", "coupons", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0
    for command in ("issue", "details", "upload", "upload-redemptions", "jobs", "job"):
        assert command in done.stdout


class _Run(Cli):
    """The CLI with any command group (``coupons``, ``series``) and the environment given."""

    async def run(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "CAPILLARY_", "SANDBOX_"))}
        base.pop("COLUMNS", None)
        base.update({"GATEWAY_URL": self.url, "GATEWAY_API_KEY": ADMIN_KEY, "NO_COLOR": "1", **(env or {})})
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            *args,
            env=base,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=90)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


async def test_a_job_is_found_by_its_id_alone(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "offline.csv"
    path.write_text(f"code,mobile,date,store\nABS-ALICE-2,{ALICE.mobile},1893456000000,S004\n")
    mapping = '{"couponCode": "code", "mobile": 1, "redeemedDateInMillis": "date", "redeemedAt": "store"}'
    status, out, err = await cli(
        "upload-redemptions", str(path), "--series", str(ABS), "--customer-identifier", "MOBILE",
        "--coupon-identifier", "COUPON_CODE", "--headers", mapping, "--no-wait", "--json",
    )  # fmt: skip
    assert status == 0, (out, err)
    job_id = json.loads(out)["jobId"]
    status, out, err = await cli("job", job_id, "--wait", "--poll-interval", "0.2", "--json")  # no --kind, no --series
    assert status == 0, (out, err)
    job = json.loads(out)
    assert (job["jobId"], job["kind"], job["seriesId"], job["status"]) == (job_id, "redemptions", ABS, "finished")
    status, out, _ = await cli("job", job_id, "--output", "tsv")
    header, row = out.splitlines()
    assert dict(zip(header.split("\t"), row.split("\t"), strict=True))["job"] == job_id
    status, _, err = await cli("job", "upl_000000000000000000000000")
    assert status == 1
    assert "UPLOAD_JOB_NOT_FOUND" in err


async def test_output_formats_never_cut_values_when_piped(
    cli: Cli, live: tuple[Upstream, GatewayClient], tmp_path: Path
) -> None:
    upstream, _ = live
    long_code = "SPRING-" + "X" * 33  # 40 characters: as wide as a narrow terminal
    path = tmp_path / "long.csv"
    path.write_text(f"mobile,code\n{BOB.mobile},{long_code}\n")
    status, out, err = await cli("upload", str(path), "--series", str(ABS), "--identifier-type", "MOBILE", "--json")
    assert status == 0, (out, err)
    run = _Run(cli.url)
    for columns in ("40", "80"):  # a narrow terminal's COLUMNS is ignored when stdout is not a terminal
        status, out, err = await run.run("coupons", "details", long_code, "ABS-ALICE-1", env={"COLUMNS": columns})
        assert status == 0, err
        assert long_code in out
        assert "…" not in out
    status, out, _ = await run.run("coupons", "details", long_code, "ABS-ALICE-1", "--output", "tsv")
    header, *rows = out.splitlines()
    assert header.split("\t") == ["code", "id", "series", "customer", "discount", "valid till", "redeemed"]
    assert {row.split("\t")[0] for row in rows} == {long_code, "ABS-ALICE-1"}
    status, out, _ = await run.run("coupons", "details", long_code, "--output", "json")
    assert json.loads(out)["coupons"][0]["code"] == long_code
    assert upstream.sandbox.coupon(long_code).customer_id == BOB.id


async def test_series_show_and_create(cli: Cli, live: tuple[Upstream, GatewayClient]) -> None:
    upstream, _ = live
    run = _Run(cli.url)
    status, out, err = await run.run("series", "show", "10003", "--json")
    assert status == 0, err
    shown = json.loads(out)
    assert (shown["id"], shown["discountType"], shown["discountUpto"]) == (10003, "PERC", "150")
    status, out, err = await run.run(
        "series", "create", "--description", "CLI spring", "--discount-type", "abs", "--discount-value", "50",
        "--valid-till", "2031-01-01T00:00:00Z", "--set", "maxRedeem=1000", "--output", "tsv",
    )  # fmt: skip
    assert status == 0, (out, err)
    header, row = out.splitlines()
    created = dict(zip(header.split("\t"), row.split("\t"), strict=True))
    assert (created["description"], created["discount"]) == ("CLI spring", "50 ABS")
    assert upstream.sandbox.state.series[int(created["id"])].description == "CLI spring"
    status, _, err = await run.run("series", "create", "--description", "x", "--discount-type", "PERC",
                                   "--discount-value", "150")  # fmt: skip
    assert status == 1
    assert "INVALID_REQUEST" in err


async def test_no_key_is_a_usage_error_before_any_request(aiohttp_server: Any) -> None:
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = await aiohttp_server(app)
    run = _Run(str(server.make_url("")).rstrip("/"))
    for args in (["coupons", "details", "ABS-ALICE-1"], ["series", "show", "10001"], ["coupons", "job", "upl_1"]):
        status, out, err = await run.run(*args, env={"GATEWAY_API_KEY": ""})
        assert status == 2, (args, out, err)
        assert "GATEWAY_API_KEY" in err
    assert seen == []


def _parsers() -> list[argparse.ArgumentParser]:
    """Every parser of the CLI, the top one first."""
    import service.__main__ as entry

    top = entry.build_parser()
    found, todo = [], [top]
    while todo:
        parser = todo.pop(0)
        found.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(dict.fromkeys(action.choices.values()))
    return found


def test_every_help_has_examples_and_every_option_says_what_it_does() -> None:
    parsers = _parsers()
    assert len(parsers) >= 12
    for parser in parsers:
        assert "examples:" in (parser.epilog or ""), parser.prog
        assert "examples:" in parser.format_help(), parser.prog
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{parser.prog}: {action.dest} has no help"
