"""Receiving an upload over HTTP: the file streamed to disk, and its options read into an upload request.

The body (a multipart part named ``file``, or a ``text/csv`` body) goes to a temporary file chunk by chunk while its
SHA-256 is computed, so memory stays bounded whatever the file's size. A client may pause at most ``body_timeout``
between two pieces of the file and take at most ``RECEIVE_TIMEOUT`` in all, or it gets 408 and the connection is
closed.

The file name and the options are checked before they go anywhere: a file name travels upstream in a multipart
header, so one with a line break or any other control character is refused (400 naming ``file`` or ``fileName``),
as is an option with a control character.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import unicodedata
from collections.abc import AsyncIterator, Callable
from typing import IO, Any, Final

from aiohttp import BodyPartReader, MultipartReader, web

from service.backoffice.jobs import UploadKind
from service.backoffice.models import UploadRequest
from service.backoffice.preflight import CouponRules, RedemptionRules, RulesError
from service.redemption.catalog import CATALOG
from service.text import digits
from service.web.errors import ApiError
from service.web.json_keys import refuse_duplicate_keys

CHUNK: Final = 64 * 1024
MAX_FIELD_BYTES: Final = 16 * 1024
MAX_FORM_PARTS: Final = 32  # the file and its few options; more is not a form of ours
#: The longest a client may take to send a whole file (its pauses are bounded by the body timeout).
RECEIVE_TIMEOUT: Final = 300.0
MAX_FILE_NAME: Final = 255
DEFAULT_FILE_NAME: Final = "upload.csv"
#: The options of an upload, by their field (or query) name: the only ones read, so the only ones checked.
OPTIONS: Final = (
    "identifierType",
    "identifierColumn",
    "uploadHeaders",
    "customerIdentifier",
    "couponIdentifier",
    "details",
    "dryRun",
    "fileName",
)
CSV_TYPES: Final = ("text/csv", "application/csv", "text/plain")


def _file_name(value: str | None, field: str) -> str:
    """The name of the received file, as it will be sent upstream (in a multipart header) and recorded: at most
    ``MAX_FILE_NAME`` characters, none of them a control character or a line break; none given: the default."""
    name = (value or "").strip()
    if not name:
        return DEFAULT_FILE_NAME
    if len(name) > MAX_FILE_NAME or not all(_printable(c) for c in name):
        raise ApiError.invalid(
            f"{field}: a file name of 1 to {MAX_FILE_NAME} characters without control characters or line breaks"
        )
    return name


def _printable(char: str) -> bool:
    """Not a control, format, private-use or unassigned character (Unicode category C*), nor a line separator."""
    return not unicodedata.category(char).startswith(("C", "Zl", "Zp"))


def _check_options(options: dict[str, str]) -> None:
    """Options reach the pre-flight checks, the job record and, for ``details``, the upstream: no control
    characters in them (tabs and line breaks aside in ``details``, a free text)."""
    for name in OPTIONS:
        value = options.get(name)
        if value is None:
            continue
        allowed = "\t\r\n" if name == "details" else ""
        if any(unicodedata.category(c) == "Cc" and c not in allowed for c in value):
            raise ApiError.invalid(f"{name}: control characters are not allowed")


class _Pace:
    """The time limits of receiving a file: no pause longer than ``idle`` seconds between two pieces of it, and all
    of it within ``total``. ``timeout`` is the context to receive in; call ``progress()`` for each piece."""

    def __init__(self, idle: float, total: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.idle = idle
        self.total = total
        self.end = self._loop.time() + total
        self.timeout = asyncio.timeout_at(min(self._loop.time() + idle, self.end))

    def progress(self) -> None:
        self.timeout.reschedule(min(self._loop.time() + self.idle, self.end))

    def refusal(self) -> ApiError:
        if self._loop.time() >= self.end:
            return ApiError.too_slow(f"body: the file was not received within {self.total:.3g} s")
        return ApiError.too_slow(f"body: nothing received for {self.idle:.3g} s")


class Spool:
    """The received file on disk, with its size and SHA-256."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.size = 0
        self.digest = hashlib.sha256()
        self.too_large = False
        self.file_name = DEFAULT_FILE_NAME

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    async def take(self, chunks: AsyncIterator[bytes], limit: int, progress: Callable[[], None]) -> None:
        async for chunk in chunks:
            progress()
            self.size += len(chunk)
            if self.size > limit:
                self.too_large = True
                return
            self.digest.update(chunk)
            self.file.write(chunk)

    def rewind(self) -> IO[bytes]:
        self.file.flush()
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.file.close()


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def _field(part: BodyPartReader, progress: Callable[[], None]) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        progress()
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError.invalid(f"{part.name}: at most {MAX_FIELD_BYTES} bytes")
    return data.decode("utf-8", "replace").strip()


async def _read_form(
    request: web.Request, spool: Spool, options: dict[str, str], limit: int, progress: Callable[[], None]
) -> bool:
    """Stream the part named ``file`` to ``spool``; take the other parts as options. Whether a file came."""
    reader = await request.multipart()
    found = False
    fields = 0
    while (part := await reader.next()) is not None:
        progress()
        if isinstance(part, MultipartReader):
            raise ApiError.invalid("body: nested multipart parts are not taken")
        fields += 1
        if fields > MAX_FORM_PARTS:
            raise ApiError.invalid(f"body: at most {MAX_FORM_PARTS} form parts")
        if part.name == "file":
            if found:
                raise ApiError.invalid("file: send one file per upload")
            found = True
            spool.file_name = _file_name(part.filename, "file")
            await spool.take(_part_chunks(part), limit, progress)
            if spool.too_large:
                break
        elif part.name:
            options[part.name] = await _field(part, progress)
    return found


async def receive(request: web.Request, limit: int, idle: float) -> tuple[Spool, dict[str, str]]:
    """Stream the file to disk; return it with the options (form fields over query parameters)."""
    options = dict(request.query.items())
    spool = Spool()
    pace = _Pace(idle, RECEIVE_TIMEOUT)
    try:
        try:
            async with pace.timeout:
                await _receive_into(request, spool, options, limit, pace.progress)
        except TimeoutError:
            raise pace.refusal() from None
        _check_options(options)
    except BaseException:
        spool.close()
        raise
    return spool, options


async def _receive_into(
    request: web.Request, spool: Spool, options: dict[str, str], limit: int, progress: Callable[[], None]
) -> None:
    if request.content_type == "multipart/form-data":
        try:
            found = await _read_form(request, spool, options, limit, progress)
        except ValueError as exc:  # aiohttp's word for a broken multipart body
            raise ApiError.invalid(f"body: not a valid multipart body ({exc})") from None
        if not found:
            raise ApiError.invalid("file: send the CSV as a multipart part named 'file'")
    elif request.content_type in CSV_TYPES:
        spool.file_name = _file_name(options.pop("fileName", None), "fileName")
        await spool.take(_body_chunks(request), limit, progress)
    else:
        raise ApiError(
            CATALOG["UNSUPPORTED_MEDIA_TYPE"], "Send the CSV as multipart/form-data (part 'file') or text/csv."
        )


def _flag(options: dict[str, str], name: str) -> bool:
    value = options.get(name, "").strip().lower()
    if value in ("", "false", "0", "no"):
        return False
    if value in ("true", "1", "yes"):
        return True
    raise ApiError.invalid(f"{name}: true or false")


def _column(value: str | None) -> int | str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    return int(value) if digits(value) else value


def _coupon_rules(options: dict[str, str]) -> CouponRules:
    identifier = options.get("identifierType", "").strip().upper()
    try:
        return CouponRules(identifier, _column(options.get("identifierColumn")))  # type: ignore[arg-type]
    except RulesError as exc:
        raise ApiError.invalid(str(exc)) from None


def _redemption_rules(options: dict[str, str]) -> RedemptionRules:
    raw = options.get("uploadHeaders", "").strip()
    if not raw:
        raise ApiError.invalid("uploadHeaders: a JSON object of upstream key -> column index or header name")
    try:
        mapping = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ApiError.invalid("uploadHeaders: not valid JSON") from None
    refuse_duplicate_keys(raw.encode(), dict[str, Any], field="uploadHeaders")
    if not isinstance(mapping, dict) or not all(isinstance(v, int | str) for v in mapping.values()):
        raise ApiError.invalid("uploadHeaders: a JSON object of upstream key -> column index or header name")
    try:
        return RedemptionRules(
            options.get("customerIdentifier", "").strip().upper(),  # type: ignore[arg-type]
            options.get("couponIdentifier", "").strip().upper(),  # type: ignore[arg-type]
            mapping,
        )
    except RulesError as exc:
        raise ApiError.invalid(str(exc)) from None


def upload_request(kind: UploadKind, options: dict[str, str]) -> UploadRequest:
    """An upload's options (form fields over query parameters) read into what the use case takes, or a 400 naming
    the option."""
    dry_run = _flag(options, "dryRun")
    rules: CouponRules | RedemptionRules = _coupon_rules(options) if kind == "coupons" else _redemption_rules(options)
    details = options.get("details", "").strip() or None
    return UploadRequest(rules, dry_run=dry_run, details=details)
