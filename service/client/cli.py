"""``coupon-gateway coupons ...`` and ``coupon-gateway series ...``: the operator's commands, over the gateway's API
(never Capillary directly).

The gateway's address and API key come from ``--url`` / ``--api-key`` or ``GATEWAY_URL`` / ``GATEWAY_API_KEY``; no key
is a usage error before any request. Results go to stdout: ``--output table`` (never cut when piped: ids and codes
are what the next command needs), ``json`` (or ``--json``) or ``tsv`` (a header row, then a line a row, for ``cut``
and ``awk``); progress bars and messages to stderr. Every ``--help`` ends with examples.

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
from service.client.client import GatewayClient, GatewayError, GatewayUnavailable
from service.redemption.models import SeriesSummary
from service.text import digits
from service.web.backoffice_schemas import CouponOut, DryRunOut, JobOut, ReportOut, UploadAcceptedOut
from service.web.schemas import CustomerIn

DEFAULT_URL: Final = "http://127.0.0.1:8080"
OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
OUTPUTS: Final = ("table", "json", "tsv")

_KINDS: Final[Mapping[str, UploadKind]] = {"coupons": "coupons", "redemptions": "redemptions"}
_SETUP: Final = "export GATEWAY_URL=http://127.0.0.1:8080 GATEWAY_API_KEY=sandbox-admin-key  # once per shell\n"


def _wait_options(parser: argparse.ArgumentParser) -> None:
    """How a command that follows an upload job polls it, and for how long."""
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between job checks (1)")
    parser.add_argument("--wait-timeout", type=float, default=3600.0, help="give up waiting after (3600 s)")


def _command_group(
    commands: Any, shared: argparse.ArgumentParser, name: str, help: str, *examples: str
) -> Callable[..., argparse.ArgumentParser]:
    """Add the command ``name`` (taking the shared options, its examples as epilog) whose subcommand is the
    required ACTION; returns the adder of its actions (see :func:`_action_adder`)."""
    group = commands.add_parser(name, parents=[shared], help=help, formatter_class=_Help, epilog=_examples(*examples))
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    return _action_adder(actions, shared)


def _action_adder(subparsers: Any, shared: argparse.ArgumentParser) -> Callable[..., argparse.ArgumentParser]:
    """``add(name, help, *examples)``: one subcommand with the shared options, its help as description, examples."""

    def add(name: str, help: str, *examples: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, parents=[shared], help=help, description=help, formatter_class=_Help, epilog=_examples(*examples)
        )
        return parser

    return add


def _examples(*lines: str) -> str:
    return "examples:\n  " + _SETUP.replace("\n", "") + "".join(f"\n  {line}" for line in lines)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' lines as written."""


def add_parser(commands: Any) -> None:
    """Add ``coupons`` and ``series`` and their subcommands to the main parser's subcommands."""
    # Options taken before or after the action's name (``coupons --output json jobs`` or ``coupons jobs --json``).
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--url", default=argparse.SUPPRESS, help=f"the gateway (env GATEWAY_URL; {DEFAULT_URL})")
    shared.add_argument("--api-key", default=argparse.SUPPRESS, help="an admin API key (env GATEWAY_API_KEY); required")
    shared.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds per request (30)")
    shared.add_argument(
        "--output",
        "-o",
        choices=OUTPUTS,
        default=argparse.SUPPRESS,
        help="table (default; never cut when piped), json, or tsv (a header row, then one line a row)",
    )
    shared.add_argument(
        "--json", action="store_const", const="json", dest="output", default=argparse.SUPPRESS, help="--output json"
    )
    action = _command_group(
        commands,
        shared,
        "coupons",
        "back office: issue, look up and upload coupons via a gateway",
        "coupon-gateway coupons issue --series 10001 --mobile 919900000002",
        "coupon-gateway coupons details ABS-ALICE-1 --output tsv",
        "coupon-gateway coupons job upl_0123456789abcdef01234567 --wait",
    )

    def customer(parser: argparse.ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--mobile", help="the customer's mobile number, country code first")
        group.add_argument("--email", help="the customer's email address")
        group.add_argument("--external-id", help="the customer's external id")
        group.add_argument("--customer-id", type=int, help="the customer's Capillary id")

    issue = action(
        "issue",
        "issue a coupon of one or more series to a customer",
        "coupon-gateway coupons issue --series 10001 --mobile 919900000002",
        "coupon-gateway coupons issue --series 10001 --series 10002 --email bob@example.com   # bulk",
    )
    issue.add_argument("--series", type=int, action="append", required=True, help="series id (repeat for several)")
    issue.add_argument("--source", help="bulk issue source (e.g. INSTORE)")
    customer(issue)

    details = action(
        "details",
        "coupon details by code, id or customer id",
        "coupon-gateway coupons details ABS-ALICE-1 PERC-ALICE-1",
        "coupon-gateway coupons details --customer 500002 --output json",
    )
    details.add_argument("codes", nargs="*", help="coupon codes")
    details.add_argument("--id", type=int, action="append", default=[], dest="ids", help="coupon id (repeatable)")
    details.add_argument(
        "--customer", type=int, action="append", default=[], dest="customers", help="customer id (repeatable)"
    )

    def upload_common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", type=Path, help="the CSV file (UTF-8, comma separated, header row first)")
        parser.add_argument("--series", type=int, required=True, help="the series the file is for")
        parser.add_argument("--dry-run", action="store_true", help="check the file only; upload nothing")
        parser.add_argument("--no-wait", action="store_true", help="do not follow the job until it finishes")
        _wait_options(parser)

    upload = action(
        "upload",
        "upload a CSV of coupons, with pre-flight checks",
        "printf 'mobile,code\\n919900000002,SPRING-1\\n' > spring.csv",
        "coupon-gateway coupons upload spring.csv --series 10001 --identifier-type MOBILE --dry-run",
        "coupon-gateway coupons upload spring.csv --series 10001 --identifier-type MOBILE --identifier-column mobile",
    )
    upload_common(upload)
    upload.add_argument(
        "--identifier-type", required=True, choices=IDENTIFIER_TYPES, type=str.upper, help="what identifies customers"
    )
    upload.add_argument("--identifier-column", help="column of the customer identifier: index or header name")

    redemptions = action(
        "upload-redemptions",
        "upload a CSV of redemptions made elsewhere",
        "printf 'code,mobile,date,store\\nABS-ALICE-1,919900000001,1893456000000,S004\\n' > offline.csv",
        "coupon-gateway coupons upload-redemptions offline.csv --series 10001 --customer-identifier MOBILE \\",
        "  --coupon-identifier COUPON_CODE \\",
        '  --headers \'{"couponCode": "code", "mobile": "mobile", "redeemedDateInMillis": "date", '
        '"redeemedAt": "store"}\'',
    )
    upload_common(redemptions)
    redemptions.add_argument(
        "--customer-identifier",
        required=True,
        choices=IDENTIFIER_TYPES[:-1],
        type=str.upper,
        help="what identifies customers",
    )
    redemptions.add_argument(
        "--coupon-identifier",
        required=True,
        choices=COUPON_IDENTIFIER_TYPES,
        type=str.upper,
        help="what identifies coupons",
    )
    redemptions.add_argument(
        "--headers",
        required=True,
        help='column map as JSON, e.g. \'{"couponCode": "code", "mobile": 1, "redeemedDateInMillis": 2, ...}\'',
    )
    redemptions.add_argument("--details", help="a note kept with the upload")

    jobs = action(
        "jobs",
        "the upload jobs of a series",
        "coupon-gateway coupons jobs --series 10001",
        "coupon-gateway coupons jobs --series 10001 --kind redemptions --output tsv | cut -f1",
    )
    jobs.add_argument("--series", type=int, required=True, help="the series")
    jobs.add_argument("--kind", choices=tuple(_KINDS), default="coupons", help="coupon or redemption uploads")

    job = action(
        "job",
        "one upload job, found by its id alone; --wait follows it until it finishes",
        "coupon-gateway coupons job upl_0123456789abcdef01234567",
        "coupon-gateway coupons job upl_0123456789abcdef01234567 --wait --output json",
    )
    job.add_argument("job_id", help="the job's id (upl_...), as the upload printed it")
    job.add_argument("--series", type=int, help="its series (optional: the id alone finds it)")
    job.add_argument("--kind", choices=tuple(_KINDS), help="its kind (optional: the id alone finds it)")
    job.add_argument("--wait", action="store_true", help="follow the job until it is finished or failed")
    _wait_options(job)

    series_action = _command_group(
        commands,
        shared,
        "series",
        "back office: look up and create coupon series via a gateway",
        "coupon-gateway series show 10003",
        "coupon-gateway series create --description 'Spring 50 off' --discount-type ABS --discount-value 50",
    )

    show = series_action(
        "show",
        "a series as the gateway caches it (discount, bill limits, validity)",
        "coupon-gateway series show 10003",
        "coupon-gateway series show 10003 --output json",
    )
    show.add_argument("series_id", type=int, help="the series id")
    create = series_action(
        "create",
        "create a coupon series in Capillary",
        "coupon-gateway series create --description 'Spring 50 off' --discount-type ABS --discount-value 50",
        "coupon-gateway series create --description '10% up to 100' --discount-type PERC --discount-value 10 \\",
        "  --discount-upto 100 --valid-till 2031-01-01T00:00:00Z --set maxRedeem=1000",
    )
    create.add_argument("--description", required=True, help="what the till and the customer see")
    create.add_argument(
        "--discount-type", required=True, choices=("ABS", "PERC"), type=str.upper, help="ABS: an amount off; PERC: a %%"
    )
    create.add_argument("--discount-value", required=True, help="the amount, or the percentage for PERC")
    create.add_argument("--discount-upto", help="the most a PERC discount gives")
    create.add_argument("--min-bill", help="the smallest bill the coupon applies to")
    create.add_argument("--max-bill", help="the largest bill the coupon applies to")
    create.add_argument("--valid-till", help="the last day, as an ISO-8601 date-time (2031-01-01T00:00:00Z)")
    create.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="any other field of Capillary's series, its value as JSON (maxRedeem=1000, anyUser=true); repeatable",
    )


def run(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> int:
    """Run a parsed ``coupons`` or ``series`` command; return the exit status."""
    out = _console()
    err = Console(stderr=True)
    for name, default in (("url", None), ("api_key", None), ("timeout", 30.0), ("output", "table")):
        if not hasattr(args, name):
            setattr(args, name, default)
    args.json = args.output == "json"
    url = args.url or env.get("GATEWAY_URL") or DEFAULT_URL
    key = args.api_key or env.get("GATEWAY_API_KEY")
    if not key:  # a usage error, found here: no request is sent without a key
        err.print("[red]no API key:[/] give --api-key KEY or set GATEWAY_API_KEY", highlight=False)
        return USAGE
    commands: dict[str, Callable[[GatewayClient, argparse.Namespace, Console, Console], Any]] = (
        {"show": _series_show, "create": _series_create}
        if args.command == "series"
        else {
            "issue": _issue,
            "details": _details,
            "upload": _upload,
            "upload-redemptions": _upload,
            "jobs": _jobs,
            "job": _job,
        }
    )

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
            _print_report(out if not args.json else err, exc.report, args.output)
            if args.json:
                _print_json(out, exc.report)
        return REFUSED
    except TimeoutError:
        err.print("[red]gave up waiting for the job[/] (see --wait-timeout); it may still finish")
        return UNREACHABLE
    except _UsageError as exc:
        err.print(f"[red]{exc}[/]")
        return USAGE


def _console() -> Console:
    """Results on stdout: as wide as the terminal on one, and never cut when piped or redirected."""
    probe = Console(soft_wrap=True)
    if probe.is_terminal:
        return probe
    return Console(soft_wrap=True, width=100_000, no_color=True, highlight=False)


class _UsageError(Exception):
    pass


def _print_error(err: Console, exc: GatewayError) -> None:
    err.print(f"[red]refused: {exc.code}[/] ({exc.status}) {exc.message}", highlight=False)
    if exc.upstream is not None:
        err.print(f"  upstream: {exc.upstream.code} {exc.upstream.message or ''}", highlight=False)
    if exc.request_id:
        err.print(f"  request id: {exc.request_id}", highlight=False)


def _write(out: Console, text: str) -> None:
    """Text as it is (rich would expand tabs and wrap)."""
    out.file.write(text + "\n")
    out.file.flush()


def _print_json(out: Console, value: object) -> None:
    _write(out, msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


#: Columns whose values are what the next command needs (ids, codes): never wrapped or cut in a table.
_WHOLE: Final = frozenset({"code", "id", "job", "upstream job", "series", "customer", "file", "error file"})


def _print_rows(out: Console, output: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Rows as a table (title above) or as TSV (a header row, tabs between values, no title)."""
    if output == "tsv":
        clean = [[str(v).replace("\t", " ").replace("\n", " ") for v in row] for row in ([*columns], *rows)]
        _write(out, "\n".join("\t".join(row) for row in clean))
        return
    table = Table(title=title)
    for index, name in enumerate(columns):
        widest = max((len(str(row[index])) for row in rows), default=0)
        if name in _WHOLE:
            table.add_column(name, no_wrap=True, min_width=max(len(name), widest))
        else:
            table.add_column(name)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    out.print(table)


def _customer(args: argparse.Namespace) -> CustomerIn:
    return CustomerIn(mobile=args.mobile, email=args.email, external_id=args.external_id, id=args.customer_id)


_COUPON_COLUMNS: Final = ("code", "id", "series", "customer", "discount", "valid till", "redeemed")


def _coupon_rows(coupons: Sequence[CouponOut]) -> list[list[str]]:
    rows = []
    for c in coupons:
        discount = f"{c.discount_value} {c.discount_type}" if c.discount_value is not None else ""
        rows.append(
            [
                c.code or "",
                str(c.id or ""),
                str(c.series_id or ""),
                str(c.customer_id or ""),
                discount,
                c.valid_till or "",
                str(c.redemption_count if c.redemption_count is not None else ""),
            ]
        )
    return rows


async def _issue(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    customer = _customer(args)
    if len(args.series) == 1 and not args.source:
        coupon = await client.issue(args.series[0], customer)
        if args.json:
            _print_json(out, coupon)
        else:
            _print_rows(out, args.output, "Issued", _COUPON_COLUMNS, _coupon_rows([coupon]))
        return OK
    result = await client.bulk_issue(args.series, customer, source=args.source)
    if args.json:
        _print_json(out, result)
    else:
        issued = [r.coupon for r in result.results if r.coupon]
        _print_rows(out, args.output, f"Issued {result.issued}", _COUPON_COLUMNS, _coupon_rows(issued))
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
        _print_rows(out, args.output, "Coupons", _COUPON_COLUMNS, _coupon_rows(found.coupons))
        for e in found.errors:
            which = e.coupon_code or (f"coupon id {e.coupon_id}" if e.coupon_id else "")
            which = which or (f"customer {e.customer_id}" if e.customer_id else "")
            err.print(f"[yellow]{e.code}[/] {which + ': ' if which else ''}{e.message}", highlight=False)
    return OK if not found.errors else REFUSED


def _print_report(out: Console, report: ReportOut, output: str = "table") -> None:
    verdict = "[green]valid[/]" if report.valid else f"[red]{report.error_count} problem(s)[/]"
    if output != "tsv":
        out.print(f"{report.rows} data row(s), {report.bytes} bytes: {verdict}")
    if not report.errors:
        return
    shown = len(report.errors)
    title = "Pre-flight report" + (f" (first {shown} of {report.error_count})" if shown < report.error_count else "")
    rows = [["" if e.row is None else str(e.row), e.column or "", e.reason] for e in report.errors]
    _print_rows(out, output, title, ("row", "column", "reason"), rows)
    if not report.complete and output != "tsv":
        out.print("[yellow]the check stopped at a problem that makes the rest of the file unreadable[/]")


def _print_job(out: Console, job: JobOut, output: str = "table") -> None:
    counts = job.counts
    fields = (
        ("status", f"{job.status} ({job.upstream_status or '-'})"),
        ("series", str(job.series_id)),
        ("upstream job", str(job.upstream_job_id or "")),
        ("rows / uploaded / errors", f"{counts.rows} / {counts.uploaded} / {counts.errors}"),
        ("file", job.file_name or ""),
        ("upstream file", job.upstream_file_name or ""),
        ("error file", job.error_file_name or ""),
    )
    if output == "tsv":  # one row, a column a field
        _print_rows(
            out,
            output,
            "",
            ("job", "kind", *(n for n, _ in fields)),
            [[job.job_id or "", job.kind, *(v for _, v in fields)]],
        )
        return
    table = Table(title=f"Upload job {job.job_id or job.upstream_job_id}")
    table.add_column("field")
    table.add_column("value", no_wrap=True)
    for name, value in fields:
        table.add_row(name, value)
    out.print(table)


def _job_verdict(job: JobOut) -> int:
    return OK if job.status == "finished" and job.counts.errors == 0 else REFUSED


async def _follow(
    client: GatewayClient,
    series_id: int | None,
    kind: UploadKind | None,
    job_id: str,
    args: argparse.Namespace,
    err: Console,
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
            _print_report(out, answer.report, args.output)
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
    elif answer.report is not None and args.output == "table":
        _print_report(out, answer.report)
    if not args.no_wait and job.job_id:
        job = await _follow(client, args.series, kind, job.job_id, args, err)
    if args.json:
        _print_json(out, job)
    else:
        _print_job(out, job, args.output)
    if args.no_wait:
        return OK
    return _job_verdict(job)


async def _jobs(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    listing = await client.upload_jobs(args.series, _KINDS[args.kind])
    if args.json:
        _print_json(out, listing)
        return OK
    columns = ("job", "upstream job", "status", "rows", "uploaded", "errors", "file", "error file")
    rows = [
        [
            job.job_id or "",
            str(job.upstream_job_id or ""),
            job.status,
            str(job.counts.rows),
            str(job.counts.uploaded),
            str(job.counts.errors),
            job.file_name or "",
            job.error_file_name or "",
        ]
        for job in listing.jobs
    ]
    _print_rows(out, args.output, f"{args.kind} uploads of series {args.series}", columns, rows)
    return OK


async def _job(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    kind = _KINDS[args.kind] if args.kind else None
    series = args.series if kind is not None else None  # both, or the id alone
    if args.wait:
        job = await _follow(client, series, kind, args.job_id, args, err)
    elif series is not None and kind is not None:
        job = await client.upload_job(series, kind, args.job_id)
    else:
        job = await client.job(args.job_id)
    if args.json:
        _print_json(out, job)
    else:
        _print_job(out, job, args.output)
    return _job_verdict(job) if args.wait else OK


_SERIES_COLUMNS: Final = (
    "id",
    "description",
    "discount",
    "up to",
    "min bill",
    "max bill",
    "valid till",
    "valid from",
    "stores",
    "multiple use",
)


def _series_rows(summary: SeriesSummary) -> list[list[str]]:
    def text(value: object) -> str:
        return "" if value is None else str(value)

    discount = f"{summary.discount_value} {summary.discount_type}" if summary.discount_value is not None else ""
    return [
        [
            str(summary.id),
            text(summary.description),
            discount,
            text(summary.discount_upto),
            text(summary.min_bill_amount),
            text(summary.max_bill_amount),
            summary.valid_till.isoformat() if summary.valid_till else "",
            summary.redemption_valid_from.isoformat() if summary.redemption_valid_from else "",
            "all" if summary.stores is None else ",".join(summary.stores),
            "yes" if summary.multiple_use else "no",
        ]
    ]


async def _series_show(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    summary = await client.series(args.series_id)
    if args.json:
        _print_json(out, summary)
    else:
        _print_rows(out, args.output, f"Series {summary.id}", _SERIES_COLUMNS, _series_rows(summary))
    return OK


async def _series_create(client: GatewayClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    spec: dict[str, Any] = {
        "description": args.description,
        "discountType": args.discount_type,
        "discountValue": args.discount_value,
    }
    for flag, name in (
        ("discount_upto", "discountUpto"),
        ("min_bill", "minBillAmount"),
        ("max_bill", "maxBillAmount"),
        ("valid_till", "validTillDate"),
    ):
        if getattr(args, flag) is not None:
            spec[name] = getattr(args, flag)
    for item in args.set:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise _UsageError(f"--set {item!r}: FIELD=JSON, e.g. maxRedeem=1000")
        try:
            spec[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            spec[name.strip()] = raw  # a bare word is a string
    summary = await client.create_series(spec)
    if args.json:
        _print_json(out, summary)
    else:
        _print_rows(out, args.output, f"Created series {summary.id}", _SERIES_COLUMNS, _series_rows(summary))
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.client.cli ...``: the same commands without the rest of ``coupon-gateway``."""
    parser = argparse.ArgumentParser(prog="coupon-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
