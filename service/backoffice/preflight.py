"""Pre-flight checks of an upload CSV, made before anything is sent upstream.

Pure and synchronous: the checks read a binary file object line by line (never the whole file), so a 100 MB file
costs a few lines of memory plus the duplicate-code table, which holds 12 bytes per slot and is bounded by
``Limits.max_rows``. Run them in a worker thread.

Rules, in the order a file meets them:
- encoding: UTF-8, with or without a byte-order mark (a UTF-16 mark or a byte that is not UTF-8 stops the check);
- size: at most ``Limits.max_bytes`` (enforced while the file is received) and lines of at most
  ``Limits.max_line_bytes``;
- delimiter: commas (a first line split by ``;``, tabs or ``|`` is refused: the upstream reads commas only);
- header row: the first non-blank row names the columns: no empty or repeated names, and no data in it;
- mapped columns: the identifier column of a coupon upload and every column of a redemption upload's map exist;
- column count: every row has as many cells as the header;
- identifier format per type: mobile numbers are 6 to 16 digits, emails have an email's shape, user ids are positive
  numbers, external ids are at most 128 characters;
- codes: not empty, printable ASCII without spaces or commas, at most 50 characters, and (coupon uploads) each code
  once in the file; coupon ids are positive numbers;
- redeemed dates: epoch milliseconds (13 digits; a 10-digit value is taken for seconds and refused);
- formulas: no cell (header included) starts like a spreadsheet formula: ``=``, ``@``, a tab or a carriage
  return, or ``+``/``-`` followed by anything but a plain number (after leading spaces). The file itself is only
  read by machines here, but Capillary's error and success files and any export of these rows are opened in
  spreadsheets, where such a cell runs (CSV injection). A plain signed number (``-5``, ``+919900000001``, a mobile
  number with its country code) cannot run, so it passes; ``+91 99000 00001`` or ``-2+3`` do not;
- rows: at least one data row and at most ``Limits.max_rows``.

Blank lines are skipped, as the upstream skips them. Row numbers are line numbers in the file (the header is row 1),
what an operator sees in a spreadsheet.
"""

from __future__ import annotations

import contextlib
import csv
import re
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Final, Literal

from service.text import digits, mask

IdentifierType = Literal["MOBILE", "EXTERNAL_ID", "EMAIL", "USER_ID", "NOT_TAGGED"]
CustomerIdentifierType = Literal["MOBILE", "EXTERNAL_ID", "EMAIL", "USER_ID"]
CouponIdentifierType = Literal["COUPON_ID", "COUPON_CODE"]

IDENTIFIER_TYPES: Final = ("MOBILE", "EXTERNAL_ID", "EMAIL", "USER_ID", "NOT_TAGGED")
COUPON_IDENTIFIER_TYPES: Final = ("COUPON_ID", "COUPON_CODE")

#: The largest CSV the back office takes (a route's body limit must allow it).
MAX_UPLOAD_BYTES: Final = 128 * 1024 * 1024
MAX_ROWS: Final = 1_000_000
MAX_LINE_BYTES: Final = 64 * 1024
REPORT_ROWS: Final = 50
MAX_CODE_LENGTH: Final = 50

#: Keys of a redemption upload's column map, as the upstream names them: when and where, who, which coupon, the bill.
_CUSTOMER_KEYS: Final = ("userId", "mobile", "email", "externalId")
UPLOAD_HEADER_KEYS: Final = (
    *("redeemedDateInMillis", "redeemedAt"),
    *_CUSTOMER_KEYS,
    *("couponId", "couponCode"),
    *("billId", "billNumber", "details"),
)
_CUSTOMER_KEY: Final[Mapping[str, str]] = {
    "MOBILE": "mobile",
    "EXTERNAL_ID": "externalId",
    "EMAIL": "email",
    "USER_ID": "userId",
}
_KEY_TYPE: Final[Mapping[str, str]] = {v: k for k, v in _CUSTOMER_KEY.items()}

_MOBILE = re.compile(r"^\+?[0-9]{6,16}$")
_EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")
_CODE = re.compile(r"^[!-+\--~]+$")  # printable ASCII without spaces or commas
_MILLIS_MIN: Final = 10**12  # 2001-09-09: a smaller number is seconds, not milliseconds
_MILLIS_MAX: Final = 10**13
_OTHER_DELIMITERS: Final = (";", "\t", "|")
#: First characters with which a spreadsheet reads a cell as a formula (``+``/``-`` unless a number follows).
_FORMULA_LEADS: Final = frozenset("=+-@\t\r")
_SIGNED_NUMBER = re.compile(r"[+-](?:[0-9]+(?:\.[0-9]+)?)?")  # a lone sign, or a plain number: nothing to run
_LEAD_NAMES: Final = {"\t": "a tab", "\r": "a carriage return"}
_CAN_LEAD: Final = _FORMULA_LEADS | {" "}  # a cell starting otherwise needs no closer look


class RulesError(ValueError):
    """The options of an upload are wrong (not the file): answered as a bad request."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = MAX_UPLOAD_BYTES
    max_rows: int = MAX_ROWS
    max_line_bytes: int = MAX_LINE_BYTES
    report_rows: int = REPORT_ROWS


Column = int | str


@dataclass(frozen=True, slots=True)
class CouponRules:
    """A coupon upload: who the coupons are for (or NOT_TAGGED), and which column holds the identifier."""

    identifier_type: IdentifierType
    identifier_column: Column | None = None

    def __post_init__(self) -> None:
        if self.identifier_type not in IDENTIFIER_TYPES:
            raise RulesError(f"identifierType: one of {', '.join(IDENTIFIER_TYPES)}")
        if self.identifier_type == "NOT_TAGGED" and self.identifier_column is not None:
            raise RulesError("identifierColumn: not used with NOT_TAGGED (the codes are in the first column)")
        _check_column(self.identifier_column, "identifierColumn")


@dataclass(frozen=True, slots=True)
class RedemptionRules:
    """A redemption upload: the customer and coupon identifier types and the column map (index or header name)."""

    customer_identifier: CustomerIdentifierType
    coupon_identifier: CouponIdentifierType
    upload_headers: Mapping[str, Column]

    def __post_init__(self) -> None:
        if self.customer_identifier not in _CUSTOMER_KEY:
            raise RulesError(f"customerIdentifier: one of {', '.join(_CUSTOMER_KEY)}")
        if self.coupon_identifier not in COUPON_IDENTIFIER_TYPES:
            raise RulesError(f"couponIdentifier: one of {', '.join(COUPON_IDENTIFIER_TYPES)}")
        for key, column in self.upload_headers.items():
            if key not in UPLOAD_HEADER_KEYS:
                raise RulesError(f"uploadHeaders: unknown key {key!r} (known: {', '.join(UPLOAD_HEADER_KEYS)})")
            _check_column(column, f"uploadHeaders.{key}")
        required = ["redeemedDateInMillis", "redeemedAt", self.customer_key, self.coupon_key]
        missing = [key for key in required if key not in self.upload_headers]
        if missing:
            raise RulesError(f"uploadHeaders: map {', '.join(repr(k) for k in missing)}")

    @property
    def customer_key(self) -> str:
        return _CUSTOMER_KEY[self.customer_identifier]

    @property
    def coupon_key(self) -> str:
        return "couponId" if self.coupon_identifier == "COUPON_ID" else "couponCode"


def _check_column(column: Column | None, name: str) -> None:
    if isinstance(column, bool) or (isinstance(column, int) and column < 0):
        raise RulesError(f"{name}: a column index (0 for the first) or a header name")
    if isinstance(column, str) and not column.strip():
        raise RulesError(f"{name}: a column index (0 for the first) or a header name")


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem: its row (line number, None for the whole file), its column (header name), and why."""

    row: int | None
    column: str | None
    reason: str


@dataclass(slots=True)
class Report:
    """What the checks found. ``errors`` holds the first ``Limits.report_rows`` problems; ``error_count`` all."""

    bytes: int = 0
    rows: int = 0
    header: list[str] = field(default_factory=list)
    error_count: int = 0
    errors: list[RowError] = field(default_factory=list)
    #: Columns resolved to indexes: "identifier" (coupon uploads) or the redemption map's keys.
    columns: dict[str, int] = field(default_factory=dict)
    complete: bool = True  # False when a fatal problem stopped the check early

    @property
    def valid(self) -> bool:
        return self.error_count == 0


class _Stop(Exception):
    """A problem after which the rest of the file cannot be read meaningfully."""


class _Recorder:
    def __init__(self, report: Report, limit: int) -> None:
        self.report = report
        self.limit = limit

    def add(self, row: int | None, column: str | None, reason: str) -> None:
        self.report.error_count += 1
        if len(self.report.errors) < self.limit:
            self.report.errors.append(RowError(row, column, reason))

    def stop(self, row: int | None, column: str | None, reason: str) -> _Stop:
        self.add(row, column, reason)
        self.report.complete = False
        return _Stop()


class SeenCodes:
    """A set of codes in bounded memory: 64-bit hashes and the row each was first seen on, in two arrays with open
    addressing (12 bytes a slot, at most twice the rows). A clash of two different codes' hashes is about as
    likely as one in 10^7 for a million rows."""

    __slots__ = ("_hashes", "_mask", "_rows", "_used")

    def __init__(self, capacity: int = 1024) -> None:
        size = 1 << max(10, (capacity - 1).bit_length())
        self._hashes = array("Q", bytes(8 * size))
        self._rows = array("I", bytes(4 * size))
        self._mask = size - 1
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def add(self, code: str, row: int) -> int | None:
        """Record ``code`` first seen on ``row``; if it was seen before, return that earlier row instead."""
        key = (hash(code) & 0xFFFFFFFFFFFFFFFF) or 1
        hashes, mask = self._hashes, self._mask
        slot = key & mask
        while True:
            found = hashes[slot]
            if found == 0:
                break
            if found == key:
                return int(self._rows[slot])
            slot = (slot + 1) & mask
        hashes[slot] = key
        self._rows[slot] = row
        self._used += 1
        if self._used * 5 > len(hashes) * 3:  # above 60 % full: double
            self._grow()
        return None

    def _grow(self) -> None:
        old_hashes, old_rows = self._hashes, self._rows
        size = len(old_hashes) * 2
        self._hashes = hashes = array("Q", bytes(8 * size))
        self._rows = rows = array("I", bytes(4 * size))
        self._mask = mask = size - 1
        for key, row in zip(old_hashes, old_rows, strict=True):
            if key:
                slot = key & mask
                while hashes[slot]:
                    slot = (slot + 1) & mask
                hashes[slot] = key
                rows[slot] = row


def _lines(source: IO[bytes], limits: Limits, recorder: _Recorder) -> Iterator[str]:
    """The file's lines, decoded one by one; the byte-order mark dropped."""
    number = 0
    while True:
        raw = source.readline(limits.max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if number == 1:
            if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise recorder.stop(None, None, "the file is UTF-16: save it as CSV UTF-8")
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
        if len(raw) > limits.max_line_bytes:
            raise recorder.stop(number, None, f"the line is longer than {limits.max_line_bytes} bytes")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise recorder.stop(
                number, None, f"not UTF-8 (byte {exc.start + 1} of the line): save the file as CSV UTF-8"
            ) from None


def _resolve(column: Column, header: list[str], name: str, recorder: _Recorder) -> int | None:
    if isinstance(column, int):
        if column < len(header):
            return column
        recorder.add(1, name, f"column {column} does not exist: the header has {len(header)} columns")
        return None
    if column in header:
        return header.index(column)
    recorder.add(1, name, f"no column named {column!r} in the header")
    return None


def _identifier_problem(kind: str, value: str) -> str | None:
    if not value:
        return "the customer identifier is empty"
    if kind == "MOBILE" and not _MOBILE.match(value):
        return f"not a mobile number (6 to 16 digits, country code first): {mask(value)!r}"
    if kind == "EMAIL" and (len(value) > 254 or not _EMAIL.match(value)):
        return f"not an email address: {mask(value)!r}"
    if kind == "USER_ID" and (not digits(value) or int(value) == 0 or len(value) > 18):
        return f"not a customer id (a positive number): {mask(value)!r}"
    if kind == "EXTERNAL_ID" and len(value) > 128:
        return "an external id has at most 128 characters"
    return None


def _code_problem(value: str) -> str | None:
    if not value:
        return "the coupon code is empty"
    if len(value) > MAX_CODE_LENGTH or not _CODE.match(value):
        return f"not a coupon code (1 to {MAX_CODE_LENGTH} printable characters, no spaces or commas): {value!r}"
    return None


def _millis_problem(value: str) -> str | None:
    if not digits(value):
        return f"not a date in epoch milliseconds: {value!r}"
    number = int(value)
    if number < _MILLIS_MIN:
        return f"{value} looks like seconds, not epoch milliseconds"
    if number >= _MILLIS_MAX:
        return f"{value} is not a date in epoch milliseconds"
    return None


def _coupon_id_problem(value: str) -> str | None:
    if digits(value) and 0 < int(value) < 2**63:
        return None
    return f"not a coupon id (a positive number): {value!r}"


def _store_problem(value: str) -> str | None:
    return None if value else "redeemedAt (the store) is empty"


def _formula_problem(cell: str) -> str | None:
    """Why a spreadsheet would run this cell as a formula, or None (the check of every cell: keep it cheap)."""
    lead = cell[:1]
    if lead == " ":
        cell = cell.lstrip(" ")
        lead = cell[:1]
    if lead not in _FORMULA_LEADS:
        return None
    if lead in "+-" and _SIGNED_NUMBER.fullmatch(cell.rstrip(" ")):
        return None
    name = _LEAD_NAMES.get(lead, repr(lead))
    return f"starts with {name}: a spreadsheet would run it as a formula (rule: no formula-leading cells)"


def _formula_cells(row: list[str], number: int, header: list[str], recorder: _Recorder) -> None:
    for index, cell in enumerate(row):
        formula = _formula_problem(cell)
        if formula:
            recorder.add(number, header[index], formula)


def _looks_like_data(cell: str, kind: str) -> bool:
    if kind == "MOBILE":
        return bool(_MOBILE.match(cell))
    if kind == "EMAIL":
        return bool(_EMAIL.match(cell))
    if kind in ("USER_ID", "millis", "COUPON_ID"):
        return digits(cell)
    return False


@dataclass(frozen=True, slots=True)
class _Check:
    """One check of a row's cell: its column index and name, and what is wrong with a value (None: nothing)."""

    index: int
    name: str
    problem: Callable[[str], str | None]


def check_csv(source: IO[bytes], rules: CouponRules | RedemptionRules, limits: Limits, size: int) -> Report:
    """Check the CSV in ``source`` (read from its current position) against ``rules``."""
    report = Report(bytes=size)
    recorder = _Recorder(report, limits.report_rows)
    if size > limits.max_bytes:
        recorder.stop(None, None, f"the file is larger than {limits.max_bytes} bytes")
        return report
    with contextlib.suppress(_Stop):
        _check(source, rules, limits, recorder)
    return report


def _check(source: IO[bytes], rules: CouponRules | RedemptionRules, limits: Limits, recorder: _Recorder) -> None:
    report = recorder.report
    lines = _lines(source, limits, recorder)
    reader = csv.reader(lines, strict=True)
    try:
        header = next(r for r in reader if any(c.strip() for c in r))
    except StopIteration:
        raise recorder.stop(None, None, "the file is empty: a header row and at least one data row") from None
    except csv.Error as exc:
        raise recorder.stop(reader.line_num, None, f"not a valid CSV row: {exc}") from None
    header_row = reader.line_num
    for cell in header:
        formula = _formula_problem(cell)
        if formula:
            recorder.add(header_row, cell.strip() or None, formula)
    header = [c.strip() for c in header]
    report.header = header
    if len(header) == 1:
        used = [d for d in _OTHER_DELIMITERS if d in header[0]]
        if used:
            name = {"\t": "tabs"}.get(used[0], repr(used[0]))
            raise recorder.stop(header_row, None, f"columns are separated by {name}: the upstream reads commas")
    for index, name in enumerate(header):
        if not name:
            recorder.add(header_row, None, f"the header row names no column {index}")
        elif header.index(name) != index:
            recorder.add(header_row, name, f"the column {name!r} is named twice in the header")

    checks, code_column = _plan(rules, header, header_row, recorder)
    if report.error_count:  # the rows cannot be read against a header that does not fit
        report.complete = False
        raise _Stop()
    seen = SeenCodes() if code_column is not None else None
    width = len(header)
    rows = 0
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            number = reader.line_num
            rows += 1
            if rows > limits.max_rows:
                report.rows = rows - 1
                raise recorder.stop(number, None, f"more than {limits.max_rows} rows: split the file")
            if len(row) != width:
                recorder.add(number, None, f"{len(row)} columns where the header has {width}")
                continue
            for check in checks:
                problem = check.problem(row[check.index].strip())
                if problem:
                    recorder.add(number, check.name, problem)
            for cell in row:  # the common row has no cell to look at closely: one cheap pass
                if cell[:1] in _CAN_LEAD:
                    _formula_cells(row, number, header, recorder)
                    break
            if seen is not None and code_column is not None:
                code = row[code_column].strip()
                if code:
                    first = seen.add(code, number)
                    if first is not None:
                        recorder.add(number, header[code_column], f"the code {code!r} is already on row {first}")
    except csv.Error as exc:
        report.rows = rows
        raise recorder.stop(reader.line_num, None, f"not a valid CSV row: {exc}") from None
    report.rows = rows
    if rows == 0:
        recorder.add(None, None, "the file has a header row but no data rows")


def _plan(
    rules: CouponRules | RedemptionRules, header: list[str], header_row: int, recorder: _Recorder
) -> tuple[list[_Check], int | None]:
    """The per-row checks for these options and this header, and the column of codes to keep unique."""
    checks: list[_Check] = []
    report = recorder.report
    if isinstance(rules, CouponRules):
        kind = rules.identifier_type
        if kind == "NOT_TAGGED":
            checks.append(_Check(0, header[0], _code_problem))
            return checks, 0
        column = _resolve(
            rules.identifier_column if rules.identifier_column is not None else 0, header, "identifierColumn", recorder
        )
        if column is None:
            return checks, None
        report.columns["identifier"] = column
        if _looks_like_data(header[column], kind):
            recorder.add(header_row, header[column], f"the first row must be a header row, found {header[column]!r}")
        checks.append(_Check(column, header[column], partial(_identifier_problem, kind)))
        others = [i for i in range(len(header)) if i != column]
        if not others:
            return checks, None  # the upstream generates the codes
        checks.append(_Check(others[0], header[others[0]], _code_problem))
        return checks, others[0]

    resolved: dict[str, int] = {}
    for key, wanted in rules.upload_headers.items():
        index = _resolve(wanted, header, f"uploadHeaders.{key}", recorder)
        if index is not None:
            resolved[key] = index
    report.columns.update(resolved)
    if len(resolved) != len(rules.upload_headers):
        return checks, None
    date = resolved["redeemedDateInMillis"]
    if _looks_like_data(header[date], "millis"):
        recorder.add(header_row, header[date], f"the first row must be a header row, found {header[date]!r}")
    checks.append(_Check(date, header[date], _millis_problem))
    store = resolved["redeemedAt"]
    checks.append(_Check(store, header[store], _store_problem))
    for key in _CUSTOMER_KEYS:
        if key in resolved:
            problem = partial(_identifier_problem, _KEY_TYPE[key])
            checks.append(_Check(resolved[key], header[resolved[key]], problem))
    if "couponId" in resolved:
        checks.append(
            _Check(
                resolved["couponId"],
                header[resolved["couponId"]],
                _coupon_id_problem,
            )
        )
    if "couponCode" in resolved:
        checks.append(_Check(resolved["couponCode"], header[resolved["couponCode"]], _code_problem))
    return checks, None
