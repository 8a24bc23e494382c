"""Every pre-flight rule, each with a bad file sent over HTTP: refused with 400 INVALID_UPLOAD and a report naming the
row, the column and the reason, and nothing sent upstream (read from the sandbox's call log). Dry runs report
without uploading."""

from __future__ import annotations

from typing import Any

import pytest

from service.backoffice.preflight import Limits
from service.web.backoffice import BACKOFFICE
from tests.api.spec import assert_matches
from tests.backoffice.conftest import ABS, ALICE, BOB, CAROL, coupon_uploads, post_csv, redemption_uploads
from tests.conftest import GatewayClient, Upstream

COUPONS_PATH = "/v1/series/{seriesId}/coupon-uploads"
REDEMPTIONS_PATH = "/v1/series/{seriesId}/redemption-uploads"
REDEEM_MAP = '{"couponCode": "code", "mobile": "mobile", "redeemedDateInMillis": "date", "redeemedAt": "store"}'
GOOD = f"mobile,code\n{BOB.mobile},PF-1\n{CAROL.mobile},PF-2\n"


def _uploads(upstream: Upstream) -> int:
    return upstream.sandbox.call_count("upload_coupons") + upstream.sandbox.call_count("upload_redeemed")


async def _refused(
    gateway: GatewayClient, upstream: Upstream, data: str | bytes, *, redemptions: bool = False, **fields: str
) -> dict[str, Any]:
    if redemptions:
        fields = {
            "customerIdentifier": "MOBILE",
            "couponIdentifier": "COUPON_CODE",
            "uploadHeaders": REDEEM_MAP,
            **fields,
        }
        status, body = await post_csv(gateway, redemption_uploads(ABS), data, **fields)
    else:
        status, body = await post_csv(gateway, coupon_uploads(ABS), data, **{"identifierType": "MOBILE", **fields})
    assert status == 400, body
    assert_matches(REDEMPTIONS_PATH if redemptions else COUPONS_PATH, "post", 400, body)
    assert body["error"]["code"] == "INVALID_UPLOAD"
    assert body["report"]["valid"] is False
    assert _uploads(upstream) == 0
    report: dict[str, Any] = body["report"]
    return report


def _problems(report: dict[str, Any]) -> list[tuple[int | None, str | None]]:
    return [(e["row"], e["column"]) for e in report["errors"]]


def _reasons(report: dict[str, Any]) -> str:
    return " | ".join(e["reason"] for e in report["errors"])


# ---- encoding


async def test_a_file_that_is_not_utf8_is_refused_at_its_line(gateway: GatewayClient, upstream: Upstream) -> None:
    data = f"mobile,code\n{BOB.mobile},CAFE-1\n{CAROL.mobile},CAF\xc9-2\n".encode("latin-1")
    report = await _refused(gateway, upstream, data)
    assert _problems(report) == [(3, None)]
    assert "not UTF-8" in _reasons(report)
    assert report["complete"] is False


async def test_a_utf16_file_is_refused(gateway: GatewayClient, upstream: Upstream) -> None:
    report = await _refused(gateway, upstream, GOOD.encode("utf-16"))
    assert "UTF-16" in _reasons(report)


async def test_utf8_with_a_byte_order_mark_is_taken(gateway: GatewayClient, upstream: Upstream) -> None:
    status, body = await post_csv(
        gateway, coupon_uploads(ABS), b"\xef\xbb\xbf" + GOOD.encode(), identifierType="MOBILE"
    )
    assert status == 202, body
    assert body["report"]["header"] == ["mobile", "code"]
    assert body["report"]["rows"] == 2


# ---- delimiter, header, columns


@pytest.mark.parametrize(("delimiter", "name"), [(";", "';'"), ("\t", "tabs"), ("|", "'|'")])
async def test_a_delimiter_other_than_comma_is_refused(
    gateway: GatewayClient, upstream: Upstream, delimiter: str, name: str
) -> None:
    data = GOOD.replace(",", delimiter)
    report = await _refused(gateway, upstream, data)
    assert _problems(report) == [(1, None)]
    assert f"separated by {name}" in _reasons(report)


async def test_a_file_without_a_header_row_is_refused(gateway: GatewayClient, upstream: Upstream) -> None:
    report = await _refused(gateway, upstream, f"{BOB.mobile},PF-1\n{CAROL.mobile},PF-2\n")
    assert (1, BOB.mobile) in _problems(report)
    assert "header row" in _reasons(report)


async def test_header_names_must_be_given_once_each(gateway: GatewayClient, upstream: Upstream) -> None:
    report = await _refused(gateway, upstream, f"mobile,code,code,\n{BOB.mobile},PF-1,x,y\n")
    assert (1, "code") in _problems(report)
    assert (1, None) in _problems(report)
    assert "named twice" in _reasons(report)


async def test_every_row_has_the_headers_column_count(gateway: GatewayClient, upstream: Upstream) -> None:
    data = f"mobile,code\n{BOB.mobile},PF-1\n{CAROL.mobile},PF-2,extra\n{ALICE.mobile}\n"
    report = await _refused(gateway, upstream, data)
    assert _problems(report) == [(3, None), (4, None)]
    assert "3 columns where the header has 2" in _reasons(report)


async def test_an_identifier_column_that_does_not_exist_is_refused(gateway: GatewayClient, upstream: Upstream) -> None:
    report = await _refused(gateway, upstream, GOOD, identifierColumn="phone")
    assert _problems(report)[0] == (1, "identifierColumn")
    report = await _refused(gateway, upstream, GOOD, identifierColumn="5")
    assert "column 5 does not exist" in _reasons(report)


# ---- identifiers and codes


@pytest.mark.parametrize(
    ("identifier_type", "bad", "reason"),
    [
        ("MOBILE", "99-00", "not a mobile number"),
        ("EMAIL", "bob.example.com", "not an email address"),
        ("USER_ID", "bob", "not a customer id"),
        ("EXTERNAL_ID", "X" * 129, "at most 128 characters"),
        ("MOBILE", "", "identifier is empty"),
    ],
)
async def test_identifiers_have_their_types_format(
    gateway: GatewayClient, upstream: Upstream, identifier_type: str, bad: str, reason: str
) -> None:
    good = {"MOBILE": BOB.mobile, "EMAIL": BOB.email, "USER_ID": str(BOB.id), "EXTERNAL_ID": BOB.external_id}
    data = f"customer,code\n{good[identifier_type]},PF-1\n{bad},PF-2\n"
    report = await _refused(gateway, upstream, data, identifierType=identifier_type)
    assert _problems(report) == [(3, "customer")]
    assert reason in _reasons(report)


async def test_codes_are_not_empty_well_formed_and_unique(gateway: GatewayClient, upstream: Upstream) -> None:
    data = (
        "mobile,code\n"
        f"{BOB.mobile},PF-1\n"
        "\n"  # a blank line is skipped, as the upstream skips it
        f"{BOB.mobile},PF-2\n"
        f"{BOB.mobile},BAD CODE\n"
        f"{CAROL.mobile},PF-1\n"
        f"{CAROL.mobile},\n"
    )
    report = await _refused(gateway, upstream, data)
    assert _problems(report) == [(5, "code"), (6, "code"), (7, "code")]
    reasons = [e["reason"] for e in report["errors"]]
    assert "not a coupon code" in reasons[0]
    assert reasons[1] == "the code 'PF-1' is already on row 2"
    assert reasons[2] == "the coupon code is empty"
    assert report["rows"] == 5


# ---- cells a spreadsheet would run


async def test_formula_leading_cells_are_refused_with_their_row_and_column(
    gateway: GatewayClient, upstream: Upstream
) -> None:
    """Capillary's error and success files, and exports of these rows, are opened in spreadsheets: a cell that a
    spreadsheet reads as a formula is refused (CSV injection), with its row, column and the rule."""
    data = (
        "mobile,code,note\n"
        f'{BOB.mobile},PF-1,=HYPERLINK("http://x")\n'
        f"{BOB.mobile},@SUM(A1),fine\n"
        f"{CAROL.mobile},PF-3,\"+cmd|' /C calc'!A0\"\n"
        f"{CAROL.mobile},PF-4,-2+3\n"
        f'{CAROL.mobile},PF-5,"\tpadded"\n'
        f"{CAROL.mobile},PF-6,  =1+1\n"
        f'{CAROL.mobile},PF-7,"\r=1"\n'
    )
    report = await _refused(gateway, upstream, data)
    assert _problems(report) == [
        (2, "note"),
        (3, "code"),
        (4, "note"),
        (5, "note"),
        (6, "note"),
        (7, "note"),
        (8, "note"),
    ]
    reasons = [e["reason"] for e in report["errors"]]
    assert reasons[0] == "starts with '=': a spreadsheet would run it as a formula (rule: no formula-leading cells)"
    assert [r.split(":")[0] for r in reasons] == [
        "starts with '='",
        "starts with '@'",
        "starts with '+'",
        "starts with '-'",
        "starts with a tab",
        "starts with '='",
        "starts with a carriage return",
    ]


@pytest.mark.parametrize(
    "cell",
    ["+919900000001", "-5", "+12.50", "-", "plain-text", "a=b", "mail@example.com", "  42"],
)
async def test_numbers_and_plain_text_are_not_formulas(gateway: GatewayClient, upstream: Upstream, cell: str) -> None:
    """A leading + or - followed by a plain number cannot run (a mobile number keeps its country code's +)."""
    status, body = await post_csv(
        gateway,
        coupon_uploads(ABS),
        f"mobile,code,note\n{BOB.mobile},PF-1,{cell}\n+{CAROL.mobile},PF-2,x\n",
        identifierType="MOBILE",
        dryRun="true",
    )
    assert status == 200, body
    assert body["report"]["valid"] is True, body["report"]["errors"]


async def test_a_formula_in_the_header_is_refused(gateway: GatewayClient, upstream: Upstream) -> None:
    report = await _refused(gateway, upstream, f"mobile,code,=cmd\n{BOB.mobile},PF-1,x\n")
    assert _problems(report) == [(1, "=cmd")]
    assert report["complete"] is False


async def test_formula_cells_of_a_redemption_upload_are_refused(gateway: GatewayClient, upstream: Upstream) -> None:
    data = f"code,mobile,date,store,details\nABS-ALICE-1,{ALICE.mobile},1893456000000,S001,@evil\n"
    report = await _refused(gateway, upstream, data, redemptions=True)
    assert _problems(report) == [(2, "details")]


# ---- redemption uploads


async def test_redeemed_dates_are_epoch_milliseconds(gateway: GatewayClient, upstream: Upstream) -> None:
    data = (
        "code,mobile,date,store\n"
        f"ABS-ALICE-1,{ALICE.mobile},1893456000000,S001\n"
        f"ABS-ALICE-2,{ALICE.mobile},1893456000,S001\n"  # seconds
        f"ABS-BOB-1,{BOB.mobile},2030-01-01,S001\n"
        f"ABS-CAROL-1,{CAROL.mobile},1893456000000,\n"  # no store
    )
    report = await _refused(gateway, upstream, data, redemptions=True)
    assert _problems(report) == [(3, "date"), (4, "date"), (5, "store")]
    assert "looks like seconds" in _reasons(report)
    assert "not a date in epoch milliseconds" in _reasons(report)


async def test_mapped_columns_must_be_in_the_file(gateway: GatewayClient, upstream: Upstream) -> None:
    data = f"code,mobile,date\nABS-ALICE-1,{ALICE.mobile},1893456000000\n"
    report = await _refused(gateway, upstream, data, redemptions=True)
    assert _problems(report) == [(1, "uploadHeaders.redeemedAt")]
    assert "no column named 'store'" in _reasons(report)
    by_index = '{"couponCode": 0, "mobile": 1, "redeemedDateInMillis": 2, "redeemedAt": 7}'
    report = await _refused(gateway, upstream, data, redemptions=True, uploadHeaders=by_index)
    assert "column 7 does not exist" in _reasons(report)


async def test_coupon_ids_are_numbers(gateway: GatewayClient, upstream: Upstream) -> None:
    data = f"id,mobile,date,store\n300001,{ALICE.mobile},1893456000000,S001\nABS-1,{ALICE.mobile},1893456000000,S001\n"
    mapping = '{"couponId": "id", "mobile": "mobile", "redeemedDateInMillis": "date", "redeemedAt": "store"}'
    report = await _refused(
        gateway, upstream, data, redemptions=True, couponIdentifier="COUPON_ID", uploadHeaders=mapping
    )
    assert _problems(report) == [(3, "id")]


# ---- limits and report length


async def test_row_count_limit(gateway: GatewayClient, upstream: Upstream) -> None:
    gateway.app[BACKOFFICE].uploads.limits = Limits(max_rows=3)
    rows = "".join(f"PF-{i}\n" for i in range(4))
    report = await _refused(gateway, upstream, "code\n" + rows, identifierType="NOT_TAGGED")
    assert _problems(report) == [(5, None)]
    assert "more than 3 rows" in _reasons(report)
    status, _ = await post_csv(gateway, coupon_uploads(ABS), "code\nPF-1\nPF-2\nPF-3\n", identifierType="NOT_TAGGED")
    assert status == 202


async def test_file_size_limit(gateway: GatewayClient, upstream: Upstream) -> None:
    gateway.app[BACKOFFICE].uploads.limits = Limits(max_bytes=100)
    rows = "".join(f"PF-{i:05d}\n" for i in range(20))  # 180 bytes
    report = await _refused(gateway, upstream, "code\n" + rows, identifierType="NOT_TAGGED")
    assert _problems(report) == [(None, None)]
    assert "larger than 100 bytes" in _reasons(report)


async def test_the_report_lists_the_first_bad_rows_and_counts_all(gateway: GatewayClient, upstream: Upstream) -> None:
    gateway.app[BACKOFFICE].uploads.limits = Limits(report_rows=5)
    rows = "".join(f"12{i},PF-{i}\n" for i in range(20))
    report = await _refused(gateway, upstream, "mobile,code\n" + rows)
    assert report["errorCount"] == 20
    assert [row for row, _ in _problems(report)] == [2, 3, 4, 5, 6]


async def test_an_empty_file_and_a_header_alone_are_refused(gateway: GatewayClient, upstream: Upstream) -> None:
    assert "the file is empty" in _reasons(await _refused(gateway, upstream, "\n\n"))
    assert "no data rows" in _reasons(await _refused(gateway, upstream, "mobile,code\n"))


# ---- options, media types


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "identifierType"),
        ({"identifierType": "PHONE"}, "identifierType"),
        ({"identifierType": "NOT_TAGGED", "identifierColumn": "1"}, "identifierColumn"),
        ({"identifierType": "MOBILE", "dryRun": "perhaps"}, "dryRun"),
    ],
)
async def test_wrong_options_are_a_bad_request(
    gateway: GatewayClient, upstream: Upstream, fields: dict[str, str], message: str
) -> None:
    status, body = await post_csv(gateway, coupon_uploads(ABS), GOOD, **fields)
    assert status == 400
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert message in body["error"]["message"]
    assert _uploads(upstream) == 0


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ('{"couponCode": 0, "mobile": 1, "redeemedDateInMillis": 2}', "'redeemedAt'"),
        ('{"couponCode": 0, "mobile": 1, "redeemedDateInMillis": 2, "redeemedAt": 3, "colour": 4}', "'colour'"),
        ('{"couponId": 0, "mobile": 1, "redeemedDateInMillis": 2, "redeemedAt": 3}', "'couponCode'"),
        ("[1, 2]", "uploadHeaders"),
        ("{not json", "uploadHeaders"),
    ],
)
async def test_a_wrong_column_map_is_a_bad_request(
    gateway: GatewayClient, upstream: Upstream, mapping: str, message: str
) -> None:
    fields = {"customerIdentifier": "MOBILE", "couponIdentifier": "COUPON_CODE", "uploadHeaders": mapping}
    status, body = await post_csv(gateway, redemption_uploads(ABS), "a,b,c,d\n1,2,3,4\n", **fields)
    assert status == 400
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert message in body["error"]["message"]


async def test_json_is_not_a_csv(gateway: GatewayClient) -> None:
    response = await gateway.post(coupon_uploads(ABS), json={"file": GOOD})
    assert response.status == 415
    assert (await response.json())["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_a_multipart_body_without_a_file_part(gateway: GatewayClient) -> None:
    response = await gateway.post(coupon_uploads(ABS), data={"identifierType": "MOBILE"})
    assert response.status in (400, 415)


async def test_an_unknown_series_is_not_found_before_the_file_is_read(
    gateway: GatewayClient, upstream: Upstream
) -> None:
    status, body = await post_csv(gateway, coupon_uploads(99999), GOOD, identifierType="MOBILE")
    assert status == 404
    assert body["error"]["code"] == "SERIES_NOT_FOUND"


# ---- dry run


async def test_dry_run_reports_a_bad_file_and_uploads_nothing(gateway: GatewayClient, upstream: Upstream) -> None:
    status, body = await post_csv(
        gateway,
        coupon_uploads(ABS),
        f"mobile,code\n{BOB.mobile},PF-1\n123,PF-2\n",
        identifierType="MOBILE",
        dryRun="true",
    )
    assert status == 200
    assert_matches(COUPONS_PATH, "post", 200, body)
    assert body["dryRun"] is True
    assert body["report"]["valid"] is False
    assert _problems(body["report"]) == [(3, "mobile")]
    assert _uploads(upstream) == 0


async def test_dry_run_of_a_good_file_uploads_nothing(gateway: GatewayClient, upstream: Upstream) -> None:
    response = await gateway.post(
        coupon_uploads(ABS),
        data=GOOD.encode(),
        params={"identifierType": "MOBILE", "dryRun": "true"},
        headers={"Content-Type": "text/csv"},
    )
    body = await response.json()
    assert response.status == 200
    assert body["report"]["valid"] is True
    assert body["report"]["rows"] == 2
    assert _uploads(upstream) == 0
    assert upstream.sandbox.state.coupon_by_code("PF-1") is None


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("multipart/form-data", b"garbage"),
        ("multipart/form-data; boundary=xyz", b"garbage"),
        ("multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc'),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\n\r\nabc\r\n--xyz--\r\n"),
        # a part's headers that are not HTTP headers at all
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="\xc3\xa4l\x16"\r\n\r\nx\r\n',
        ),
        # two files in one upload
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\nmobile\r\n'
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="b.csv"\r\n\r\nmobile\r\n--xyz--\r\n',
        ),
        # more form parts than any upload of ours has
        (
            "multipart/form-data; boundary=xyz",
            b"".join(b'--xyz\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(40))
            + b"--xyz--\r\n",
        ),
    ],
)
async def test_a_broken_multipart_body_is_a_bad_request(
    gateway: GatewayClient, upstream: Upstream, content_type: str, data: bytes
) -> None:
    response = await gateway.post(
        coupon_uploads(ABS), data=data, params={"identifierType": "MOBILE"}, headers={"Content-Type": content_type}
    )
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert _uploads(upstream) == 0
