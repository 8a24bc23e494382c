"""``coupon-gateway coupons ...``: the operator's commands, over the gateway's API (never Capillary directly).

The gateway's address and API key come from ``--url`` / ``--api-key`` or ``GATEWAY_URL`` / ``GATEWAY_API_KEY``.
Results go to stdout (tables, or JSON with ``--json``); progress bars and messages to stderr.

Exit status: 0 done; 1 refused (an error answer, a file that fails the pre-flight checks, a failed job, or rows the
upstream rejected); 2 bad usage; 3 the gateway could not be reached or the wait timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from service.backoffice.jobs import UploadKind
from service.backoffice.preflight import COUPON_IDENTIFIER_TYPES, IDENTIFIER_TYPES
from service.backoffice.schemas import CouponOut, DryRunOut, JobOut, ReportOut, UploadAcceptedOut
from service.client.client import GatewayClient, GatewayError, GatewayUnavailable
from service.text import digits
from service.web.schemas import CustomerIn

DEFAULT_URL: Final = "http://127.0.0.1:8080"
OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3

_KINDS: Final[Mapping[str, UploadKind]] = {"coupons": "coupons", "redemptions": "redemptions"}


def add_parser(commands: Any) -> None:
    """Add ``coupons`` and its subcommands to the main parser's subcommands."""
    # Options taken before or after the action's name (``coupons --json jobs`` or ``coupons jobs --json``).
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--url", default=argparse.SUPPRESS, help=f"the gateway (env GATEWAY_URL; {DEFAULT_URL})")
    shared.add_argument("--api-key", default=argparse.SUPPRESS, help="an admin API key (env GATEWAY_API_KEY)")
    shared.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds per request (30)")
    shared.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON, not tables")
    coupons = commands.add_parser(
        "coupons", parents=[shared], help="back office: issue, look up and upload coupons via a gateway"
    )
    subparsers = coupons.add_subparsers(dest="action", required=True)

    class _Actions:
        def add_parser(self, name: str, **options: Any) -> argparse.ArgumentParser:
            parser: argparse.ArgumentParser = subparsers.add_parser(name, parents=[shared], **options)
            return parser

    actions = _Actions()

    def customer(parser: argparse.ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--mobile")
        group.add_argument("--email")
        group.add_argument("--external-id")
        group.add_argument("--customer-id", type=int)

    issue = actions.add_parser("issue", help="issue a coupon of one or more series to a customer")
    issue.add_argument("--series", type=int, action="append", required=True, help="series id (repeat for several)")
    issue.add_argument("--source", help="bulk issue source (e.g. INSTORE)")
    customer(issue)

    details = actions.add_parser("details", help="coupon details by code, id or customer id")
    details.add_argument("codes", nargs="*", help="coupon codes")
    details.add_argument("--id", type=int, action="append", default=[], dest="ids", help="coupon id")
    details.add_argument("--customer", type=int, action="append", default=[], dest="customers", help="customer id")

    def upload_common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", type=Path, help="the CSV file (UTF-8, comma separated, header row first)")
        parser.add_argument("--series", type=int, required=True)
        parser.add_argument("--dry-run", action="store_true", help="check the file only; upload nothing")
        parser.add_argument("--no-wait", action="store_true", help="do not follow the job until it finishes")
        parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between job checks")
        parser.add_argument("--wait-timeout", type=float, default=3600.0, help="give up waiting after (seconds)")

    upload = actions.add_parser("upload", help="upload a CSV of coupons, with pre-flight checks")
    upload_common(upload)
    upload.add_argument("--identifier-type", required=True, choices=IDENTIFIER_TYPES, type=str.upper)
    upload.add_argument("--identifier-column", help="column of the customer identifier: index or header name")

    redemptions = actions.add_parser("upload-redemptions", help="upload a CSV of redemptions made elsewhere")
    upload_common(redemptions)
    redemptions.add_argument("--customer-identifier", required=True, choices=IDENTIFIER_TYPES[:-1], type=str.upper)
    redemptions.add_argument("--coupon-identifier", required=True, choices=COUPON_IDENTIFIER_TYPES, type=str.upper)
    redemptions.add_argument(
        "--headers",
        required=True,
        help='column map as JSON, e.g. \'{"couponCode": "code", "mobile": 1, "redeemedDateInMillis": 2, ...}\'',
    )
    redemptions.add_argument("--details", help="a note kept with the upload")

    jobs = actions.add_parser("jobs", help="the upload jobs of a series")
    jobs.add_argument("--series", type=int, required=True)
    jobs.add_argument("--kind", choices=tuple(_KINDS), default="coupons")

    job = actions.add_parser("job", help="one upload job; --wait follows it until it finishes")
    job.add_argument("job_id")
    job.add_argument("--series", type=int, required=True)
    job.add_argument("--kind", choices=tuple(_KINDS), default="coupons")
    job.add_argument("--wait", action="store_true")
    job.add_argument("--poll-interval", type=float, default=1.0)
    job.add_argument("--wait-timeout", type=float, default=3600.0)


def run(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> int:
    """Run a parsed ``coupons`` command; return the exit status."""
    out = Console(soft_wrap=True)
    err = Console(stderr=True)
    for name, default in (("url", None), ("api_key", None), ("timeout", 30.0), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    url = args.url or env.get("GATEWAY_URL") or DEFAULT_URL
    key = args.api_key or env.get("GATEWAY_API_KEY")
    commands: dict[str, Callable[[GatewayClient, argparse.Namespace, Console, Console], Any]] = {
        "issue": _issue,
        "details": _details,
        "upload": _upload,
        "upload-redemptions": _upload,
        "jobs": _jobs,
        "job": _job,
    }

    async def main() -> int:
        async with GatewayClient(url, key, timeout=args.timeout) as client:
            status: int = await commands[args.action](client, args, out, err)
            return status

    try:
        return asyncio.run(main())
    except GatewayUnavailable as exc:
        err.print(f"[red]cannot reach the gateway at {url}:[/] {exc.message}")
        return UNREACHABLE
    except GatewayError as exc:
        _print_error(err, exc)
        if exc.report is not None:
            _print_report(out if not args.json else err, exc.report)
            if args.json:
                _print_json(out, exc.report)
        return REFUSED
    except TimeoutError:
        err.print("[red]gave up waiting for the job[/] (see --wait-timeout); it may still finish")
        return UNREACHABLE
    except _UsageError as exc:
        err.print(f"[red]{exc}[/]")
        return USAGE


class _UsageError(Exception):
    pass


def _print_error(err: Console, exc: GatewayError) -> None:
    err.print(f"[red]refused: {exc.code}[/] ({exc.status}) {exc.message}", highlight=False)
    if exc.upstream is not None:
        err.print(f"  upstream: {exc.upstream.code} {exc.upstream.message or ''}", highlight=False)
    if exc.request_id:
        err.print(f"  request id: {exc.request_id}", highlight=False)


def _print_json(out: Console, value: object) -> None:
    out.print_json(msgspec.json.encode(value).decode())


def _customer(args: argparse.Namespace) -> CustomerIn:
    return CustomerIn(mobile=args.mobile, email=args.email, external_id=args.external_id, id=args.customer_id)


def _coupon_table(coupons: Sequence[CouponOut], title: str) -> Table:
    table = Table(title=title)
    for name in ("code", "id", "series", "customer", "discount", "valid till", "redeemed"):
        table.add_column(name)
    for c in coupons:
        discount = f"{c.discount_value} {c.discount_type}" if c.discount_value is not None else ""
        table.add_row(
            c.code or "",
            str(c.id or ""),
            str(c.series_id or ""),
            str(c.customer_id or ""),
            discount,
            c.valid_till or "",
            str(c.redemption_count if c.redemption_count is not None else ""),
        )
    return table


async def _issue(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    customer = _customer(args)
    if len(args.series) == 1 and not args.source:
        coupon = await client.issue(args.series[0], customer)
        if args.json:
            _print_json(out, coupon)
        else:
            out.print(_coupon_table([coupon], "Issued"))
        return OK
    result = await client.bulk_issue(args.series, customer, source=args.source)
    if args.json:
        _print_json(out, result)
    else:
        out.print(_coupon_table([r.coupon for r in result.results if r.coupon], f"Issued {result.issued}"))
        for r in result.results:
            if r.error is not None:
                err.print(f"[red]series {r.series_id}: {r.error.code}[/] {r.error.message}", highlight=False)
    return OK if result.failed == 0 else REFUSED


async def _details(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    if not (args.codes or args.ids or args.customers):
        raise _UsageError("give coupon codes, --id or --customer")
    found = await client.coupons(codes=args.codes, ids=args.ids, customer_ids=args.customers)
    if args.json:
        _print_json(out, found)
    else:
        out.print(_coupon_table(found.coupons, "Coupons"))
        for e in found.errors:
            err.print(f"[yellow]{e.code}[/] {e.message}", highlight=False)
    return OK if not found.errors else REFUSED


def _print_report(out: Console, report: ReportOut) -> None:
    verdict = "[green]valid[/]" if report.valid else f"[red]{report.error_count} problem(s)[/]"
    out.print(f"{report.rows} data row(s), {report.bytes} bytes: {verdict}")
    if not report.errors:
        return
    shown = len(report.errors)
    title = "Pre-flight report" + (f" (first {shown} of {report.error_count})" if shown < report.error_count else "")
    table = Table(title=title)
    table.add_column("row", justify="right")
    table.add_column("column")
    table.add_column("reason")
    for e in report.errors:
        table.add_row("" if e.row is None else str(e.row), e.column or "", e.reason)
    out.print(table)
    if not report.complete:
        out.print("[yellow]the check stopped at a problem that makes the rest of the file unreadable[/]")


def _print_job(out: Console, job: JobOut) -> None:
    table = Table(title=f"Upload job {job.job_id or job.upstream_job_id}")
    table.add_column("field")
    table.add_column("value")
    counts = job.counts
    for name, value in (
        ("status", f"{job.status} ({job.upstream_status or '-'})"),
        ("series", str(job.series_id)),
        ("upstream job", str(job.upstream_job_id or "")),
        ("rows / uploaded / errors", f"{counts.rows} / {counts.uploaded} / {counts.errors}"),
        ("file", job.file_name or ""),
        ("upstream file", job.upstream_file_name or ""),
        ("error file", job.error_file_name or ""),
    ):
        table.add_row(name, value)
    out.print(table)


def _job_verdict(job: JobOut) -> int:
    return OK if job.status == "finished" and job.counts.errors == 0 else REFUSED


async def _follow(
    client: GatewayClient, series_id: int, kind: UploadKind, job_id: str, args: argparse.Namespace, err: Console
) -> JobOut:
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]job[/] {task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("errors {task.fields[errors]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task("job", total=None, status="queued", errors=0)

        def update(job: JobOut) -> None:
            counts = job.counts
            progress.update(
                task,
                total=counts.rows or None,
                completed=counts.uploaded + counts.errors,
                status=job.status,
                errors=counts.errors,
            )

        job = await client.wait_for_job(
            series_id, kind, job_id, interval=args.poll_interval, timeout=args.wait_timeout, on_update=update
        )
        progress.update(task, total=job.counts.rows or 1, completed=job.counts.rows or 1)
    return job


async def _upload(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    path: Path = args.file
    if not await asyncio.to_thread(path.is_file):
        raise _UsageError(f"no such file: {path}")
    size = (await asyncio.to_thread(path.stat)).st_size
    kind: UploadKind = "coupons" if args.action == "upload" else "redemptions"
    with Progress(
        TextColumn("[bold]upload[/] {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task(path.name, total=size)

        def sent(done: int) -> None:
            progress.update(task, completed=done)

        if kind == "coupons":
            column = args.identifier_column
            answer = await client.upload_coupons(
                args.series,
                path,
                identifier_type=args.identifier_type,
                identifier_column=int(column) if column and digits(column) else column,
                dry_run=args.dry_run,
                progress=sent,
            )
        else:
            try:
                headers = json.loads(args.headers)
            except json.JSONDecodeError:
                raise _UsageError("--headers: not valid JSON") from None
            if not isinstance(headers, dict):
                raise _UsageError("--headers: a JSON object")
            answer = await client.upload_redemptions(
                args.series,
                path,
                customer_identifier=args.customer_identifier,
                coupon_identifier=args.coupon_identifier,
                upload_headers=headers,
                details=args.details,
                dry_run=args.dry_run,
                progress=sent,
            )
        progress.update(task, completed=size)
    if isinstance(answer, DryRunOut):
        if args.json:
            _print_json(out, answer)
        else:
            _print_report(out, answer.report)
        return OK if answer.report.valid else REFUSED
    return await _accepted(client, args, answer, kind, out, err)


async def _accepted(
    client: GatewayClient,
    args: argparse.Namespace,
    answer: UploadAcceptedOut,
    kind: UploadKind,
    out: Console,
    err: Console,
) -> int:
    job = answer.job
    if answer.duplicate:
        err.print(f"[yellow]this file was already uploaded to series {args.series}: job {job.job_id}[/]")
    elif answer.report is not None and not args.json:
        _print_report(out, answer.report)
    if not args.no_wait and job.job_id:
        job = await _follow(client, args.series, kind, job.job_id, args, err)
    if args.json:
        _print_json(out, job)
    else:
        _print_job(out, job)
    if args.no_wait:
        return OK
    return _job_verdict(job)


async def _jobs(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    listing = await client.upload_jobs(args.series, _KINDS[args.kind])
    if args.json:
        _print_json(out, listing)
        return OK
    table = Table(title=f"{args.kind} uploads of series {args.series}")
    for name in ("job", "upstream job", "status", "rows", "uploaded", "errors", "file", "error file"):
        table.add_column(name)
    for job in listing.jobs:
        table.add_row(
            job.job_id or "",
            str(job.upstream_job_id or ""),
            job.status,
            str(job.counts.rows),
            str(job.counts.uploaded),
            str(job.counts.errors),
            job.file_name or "",
            job.error_file_name or "",
        )
    out.print(table)
    return OK


async def _job(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    kind = _KINDS[args.kind]
    if args.wait:
        job = await _follow(client, args.series, kind, args.job_id, args, err)
    else:
        job = await client.upload_job(args.series, kind, args.job_id)
    if args.json:
        _print_json(out, job)
    else:
        _print_job(out, job)
    return _job_verdict(job) if args.wait else OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.client.cli ...``: the same commands without the rest of ``coupon-gateway``."""
    parser = argparse.ArgumentParser(prog="coupon-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
