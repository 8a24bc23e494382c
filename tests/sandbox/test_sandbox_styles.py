"""Response styles (SANDBOX_RESPONSE_STYLE=doc|nested|mixed): how each is chosen, and mixed alternation."""

from __future__ import annotations

import pytest

from service.sandbox import SandboxConfig

DOC_ITEM_KEYS = {"id", "warnings", "appendedErrorMessage", "code", "discountCode", "seriesCode", "isAbsolute",
                 "couponValue"}  # fmt: skip


def style_of_redeem(body) -> str:
    """doc: the item has no status of its own; nested: it has the nested redemptionStatus and a redemptionId."""
    item = body["redemption"][0]
    if set(item) == DOC_ITEM_KEYS:
        return "doc"
    assert {"redemptionStatus", "redemptionId", "discountType"} <= set(item)
    return "nested"


def style_of_bulk(body) -> str:
    return "nested" if "redemptionId" in body["response"][0]["result"] else "doc"


async def test_default_style_is_doc(kit):
    assert kit.sandbox.options.response_style == "doc"
    status, body = await kit.redeem("ABS-ALICE-1")
    assert (status, style_of_redeem(body)) == (200, "doc")
    assert kit.sandbox.calls[-1].style == "doc"


async def test_nested_style_every_call(make_kit):
    kit = await make_kit(response_style="nested")
    assert kit.sandbox.options.response_style == "nested"
    styles = [style_of_redeem((await kit.redeem(code))[1]) for code in ("ABS-ALICE-1", "ABS-ALICE-USED")]
    assert styles == ["nested", "nested"]


async def test_mixed_alternates_per_redeem_call_doc_first_and_bulk_shares_the_sequence(make_kit):
    kit = await make_kit(response_style="mixed")
    assert kit.sandbox.options.response_style == "mixed"
    _, first = await kit.redeem("ABS-ALICE-1", txn="T-1")
    _, second = await kit.redeem("PERC-ALICE-1", txn="T-2")
    _, third = await kit.redeem("ABS-ALICE-USED", txn="T-3")  # refusals alternate too
    _, fourth = await kit.bulk_redeem("ABS-ALICE-2", "CAP-ALICE-1")
    _, fifth = await kit.bulk_redeem("MULTI-ALICE-1")
    assert [style_of_redeem(first), style_of_redeem(second), style_of_redeem(third)] == ["doc", "nested", "doc"]
    assert [style_of_bulk(fourth), style_of_bulk(fifth)] == ["nested", "doc"]
    assert [c.style for c in kit.sandbox.calls if c.operation in ("redeem", "bulk_redeem")] == [
        "doc",
        "nested",
        "doc",
        "nested",
        "doc",
    ]
    assert third["redemptionStatus"]["code"] == 711


async def test_mixed_sequence_ignores_other_operations_and_restarts_on_reset(make_kit):
    kit = await make_kit(response_style="mixed")
    await kit.is_redeemable("ABS-ALICE-1")
    assert style_of_redeem((await kit.redeem("ABS-ALICE-1"))[1]) == "doc"
    assert kit.sandbox.calls[0].style is None  # is_redeemable has one shape
    kit.sandbox.reset()
    assert style_of_redeem((await kit.redeem("ABS-ALICE-1"))[1]) == "doc"
    assert style_of_redeem((await kit.redeem("PERC-ALICE-1"))[1]) == "nested"


async def test_unauthenticated_calls_do_not_draw_a_style(make_kit):
    kit = await make_kit(response_style="mixed")
    response = await kit.client.post("/v2/coupon/redeem", json=kit.redeem_body("ABS-ALICE-1"))
    assert response.status == 401
    assert style_of_redeem((await kit.redeem("ABS-ALICE-1"))[1]) == "doc"


async def test_admin_options_switch_the_style_and_restart_mixed(kit):
    response = await kit.client.post("/__sandbox/options", json={"responseStyle": "nested"})
    assert (await response.json())["responseStyle"] == "nested"
    assert style_of_redeem((await kit.redeem("ABS-ALICE-1", txn="T-1"))[1]) == "nested"
    await kit.client.post("/__sandbox/options", json={"responseStyle": "mixed"})
    assert style_of_redeem((await kit.redeem("PERC-ALICE-1", txn="T-2"))[1]) == "doc"
    assert style_of_redeem((await kit.redeem("CAP-ALICE-1", txn="T-3"))[1]) == "nested"
    bad = await kit.client.post("/__sandbox/options", json={"responseStyle": "flat"})
    assert bad.status == 400
    assert "responseStyle" in (await bad.json())["error"]
    kit.sandbox.reset()
    assert kit.sandbox.options.response_style == "doc"  # back to the configured style


async def test_admin_options_is_redeemable_series(kit):
    options = await (await kit.client.get("/__sandbox/options")).json()
    assert (options["responseStyle"], options["isRedeemableSeries"]) == ("doc", False)
    response = await kit.client.post("/__sandbox/options", json={"isRedeemableSeries": True})
    assert (await response.json())["isRedeemableSeries"] is True
    assert kit.sandbox.options.is_redeemable_series is True
    assert (await kit.client.post("/__sandbox/options", json={"isRedeemableSeries": "on"})).status == 400


def test_from_env_reads_the_style_and_the_series_switch():
    assert (SandboxConfig().response_style, SandboxConfig().is_redeemable_series) == ("doc", False)
    for raw, style in (("doc", "doc"), ("nested", "nested"), (" Mixed ", "mixed")):
        assert SandboxConfig.from_env({"SANDBOX_RESPONSE_STYLE": raw}).response_style == style
    assert SandboxConfig.from_env({"SANDBOX_IS_REDEEMABLE_SERIES": "on"}).is_redeemable_series is True
    assert SandboxConfig.from_env({"SANDBOX_IS_REDEEMABLE_SERIES": "off"}).is_redeemable_series is False


@pytest.mark.parametrize(
    ("name", "value"),
    [("SANDBOX_RESPONSE_STYLE", "flat"), ("SANDBOX_RESPONSE_STYLE", ""), ("SANDBOX_IS_REDEEMABLE_SERIES", "maybe")],
)
def test_from_env_errors_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        SandboxConfig.from_env({name: value})


def test_config_refuses_an_unknown_style():
    with pytest.raises(ValueError, match="response_style"):
        SandboxConfig(response_style="flat")  # type: ignore[arg-type]
