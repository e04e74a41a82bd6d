"""The parallel run's comparison: hand-built answer pairs, one per cause, each attributed to the
line and the rule that made it differ (gateway/core/shadow_diff.py)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import msgspec

from gateway.core.shadow_diff import Cause, compare, items_of

D = Decimal
ITEMS = {"1": "YP0003", "2": "YP0010"}


def _line(sn: str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "feedetl_sn": sn,
        "det_item_fee_sumamt": D("80.00"),
        "pric_uplmt_amt": D("999999.000000"),
        "selfpay_prop": D("0.1000"),
        "fulamt_ownpay_amt": D("0.00"),
        "overlmt_amt": D("0.00"),
        "preselfpay_amt": D("8.00"),
        "inscp_scp_amt": D("72.00"),
        "chrgitm_lv": "02",
    }
    row.update(over)
    return row


def _answer() -> dict[str, Any]:
    """A settled 2101-shaped answer: two lines, a pool at 50% and the account."""
    return {
        "infcode": 0,
        "err_msg": None,
        "output": {
            "setlinfo": {
                "medfee_sumamt": D("115.00"),
                "fulamt_ownpay_amt": D("0.00"),
                "overlmt_selfpay": D("0.00"),
                "preselfpay_amt": D("8.00"),
                "inscp_scp_amt": D("107.00"),
                "act_pay_dedc": D("0.00"),
                "hifp_pay": D("53.50"),
                "pool_prop_selfpay": D("0.5000"),
                "cvlserv_pay": D("0.00"),
                "fund_pay_sumamt": D("53.50"),
                "psn_pay": D("61.50"),
                "acct_pay": D("61.50"),
                "psn_cash_pay": D("0.00"),
                "balc": D("1938.50"),
            },
            "setldetail": [
                {"fund_pay_type": "310100", "fund_payamt": D("53.50"), "crt_payb_lmt_amt": D("0")},
                {"fund_pay_type": "310200", "fund_payamt": D("61.50"), "crt_payb_lmt_amt": D("0")},
            ],
            "detlcutinfo": [
                _line("1"),
                _line(
                    "2",
                    det_item_fee_sumamt=D("35.00"),
                    selfpay_prop=D("0"),
                    preselfpay_amt=D("0.00"),
                    inscp_scp_amt=D("35.00"),
                    chrgitm_lv="01",
                ),
            ],
        },
    }


def _set(answer: dict[str, Any], **info: Any) -> dict[str, Any]:
    answer["output"]["setlinfo"].update(info)
    return answer


def _fund(answer: dict[str, Any], code: str, amount: str) -> None:
    for row in answer["output"]["setldetail"]:
        if row["fund_pay_type"] == code:
            row["fund_payamt"] = D(amount)


def test_the_same_answer_agrees_whatever_the_number_spelling() -> None:
    a = _answer()
    b = copy.deepcopy(a)
    b["output"]["setlinfo"]["hifp_pay"] = "53.5"  # text, one decimal: the same money
    b["output"]["setlinfo"]["balc"] = D("2000.00")  # the shadow's account was never debited
    b["output"]["setldetail"][0]["crt_payb_lmt_amt"] = D("900.00")  # nor its cap used
    diagnosis = compare(a, b, ITEMS)
    assert not diagnosis.differs
    assert diagnosis.cause is None


def test_a_line_classed_differently_is_the_catalog_at_that_item() -> None:
    a = _answer()
    b = copy.deepcopy(a)
    # The shadow maps YP0003 to a class-A item: no self-pay share on it.
    b["output"]["detlcutinfo"][0].update(
        chrgitm_lv="01", selfpay_prop=D("0"), preselfpay_amt=D("0.00"), inscp_scp_amt=D("80.00")
    )
    _set(b, preselfpay_amt=D("0.00"), inscp_scp_amt=D("115.00"), hifp_pay=D("57.50"))
    _set(b, fund_pay_sumamt=D("57.50"), psn_pay=D("57.50"), acct_pay=D("57.50"))
    _fund(b, "310100", "57.50")
    _fund(b, "310200", "57.50")
    d = compare(a, b, ITEMS)
    assert d.causes == (Cause.CATALOG_CLASS,)
    assert d.lines == ("1",)
    assert d.item == "YP0003"
    line = {x.field: x for x in d.differences if x.place == "line:1"}
    assert (line["chrgitm_lv"].answered, line["chrgitm_lv"].shadowed) == ("02", "01")
    assert {x.item for x in d.differences if x.place.startswith("line:")} == {"YP0003"}
    assert "YP0003" in d.summary()


def test_a_line_not_covered_at_all_is_the_catalog_too() -> None:
    a = _answer()
    b = copy.deepcopy(a)
    b["output"]["detlcutinfo"][1].update(
        fulamt_ownpay_amt=D("35.00"), inscp_scp_amt=D("0.00")
    )  # unmapped at the shadow: all self-pay, the class text left as it was
    _set(b, fulamt_ownpay_amt=D("35.00"), inscp_scp_amt=D("72.00"), hifp_pay=D("36.00"))
    d = compare(a, b, ITEMS)
    assert d.cause is Cause.CATALOG_CLASS
    assert d.item == "YP0010"


def test_a_different_self_pay_ratio() -> None:
    a = _answer()
    b = copy.deepcopy(a)
    b["output"]["detlcutinfo"][0].update(
        selfpay_prop=D("0.2000"), preselfpay_amt=D("16.00"), inscp_scp_amt=D("64.00")
    )
    _set(b, preselfpay_amt=D("16.00"), inscp_scp_amt=D("99.00"), hifp_pay=D("49.50"))
    d = compare(a, b, ITEMS)
    assert d.causes == (Cause.SELFPAY_RATIO,)
    assert d.item == "YP0003"


def test_a_different_price_cap() -> None:
    a = _answer()
    b = copy.deepcopy(a)
    b["output"]["detlcutinfo"][0].update(
        pric_uplmt_amt=D("30.000000"),
        overlmt_amt=D("20.00"),
        preselfpay_amt=D("6.00"),
        inscp_scp_amt=D("54.00"),
    )
    _set(b, overlmt_selfpay=D("20.00"), preselfpay_amt=D("6.00"), inscp_scp_amt=D("89.00"))
    d = compare(a, b, ITEMS)
    assert d.causes == (Cause.PRICE_CAP,)
    assert d.lines == ("1",)


def test_every_spelling_of_no_cap_agrees() -> None:
    """Found from outside: an old system answering "0" for an uncapped item (this gateway
    answers 999999.000000) made every comparison differ, blamed on price_cap."""
    a = _answer()
    for spelling in (D("0"), "0", "", D("999999.000000"), D("9999999")):
        b = copy.deepcopy(a)
        b["output"]["detlcutinfo"][0]["pric_uplmt_amt"] = spelling
        a["output"]["detlcutinfo"][0]["pric_uplmt_amt"] = D("999999.000000")
        assert compare(a, b, ITEMS).causes == (), spelling
    b = copy.deepcopy(a)
    b["output"]["detlcutinfo"][0]["pric_uplmt_amt"] = D("30.000000")  # a cap against none
    assert compare(a, b, ITEMS).causes == (Cause.PRICE_CAP,)


def test_a_different_deductible() -> None:
    a = _answer()
    b = _set(copy.deepcopy(a), act_pay_dedc=D("50.00"), hifp_pay=D("28.50"))
    _set(b, fund_pay_sumamt=D("28.50"), psn_pay=D("86.50"), acct_pay=D("86.50"))
    _fund(b, "310100", "28.50")
    d = compare(a, b, ITEMS)
    assert d.causes == (Cause.DEDUCTIBLE,)
    assert d.lines == ()
    by_field = {x.field: x.cause for x in d.differences}
    assert by_field["hifp_pay"] is Cause.DEDUCTIBLE  # the pool follows from it, not the cap
    assert by_field["acct_pay"] is Cause.DEDUCTIBLE


def test_a_different_pool_ratio() -> None:
    a = _answer()
    b = _set(copy.deepcopy(a), pool_prop_selfpay=D("0.7000"), hifp_pay=D("74.90"))
    _set(b, fund_pay_sumamt=D("74.90"), psn_pay=D("40.10"), acct_pay=D("40.10"))
    d = compare(a, b, ITEMS)
    assert d.causes == (Cause.POOL_RATIO,)
    assert d.item is None


def test_the_pool_paying_less_with_the_same_base_and_ratio_is_the_cap() -> None:
    a = _answer()
    b = _set(copy.deepcopy(a), hifp_pay=D("20.00"), fund_pay_sumamt=D("20.00"))
    _set(b, psn_pay=D("95.00"), acct_pay=D("95.00"))
    _fund(b, "310100", "20.00")
    d = compare(a, b, ITEMS)
    assert d.causes == (Cause.CAP_REACHED,)


def test_the_account_alone() -> None:
    a = _answer()
    # Same funds; the shadow's account pays less (its balance, or remote use not allowed).
    b = _set(copy.deepcopy(a), acct_pay=D("0.00"), psn_cash_pay=D("61.50"))
    b["output"]["setldetail"].pop()
    d = compare(a, b, ITEMS)
    assert d.causes == (Cause.ACCOUNT,)
    assert {x.place for x in d.differences} == {"setlinfo", "setldetail:310200"}
    # The fund the shadow did not list paid nothing, written as an amount.
    (fund,) = [x for x in d.differences if x.place == "setldetail:310200"]
    assert (fund.answered, fund.shadowed) == ("61.50", "0.00")


def test_one_refusal_is_a_refusal_and_two_agree() -> None:
    a = _answer()
    no = {"infcode": -1, "err_msg": "参保人不存在", "output": None}
    d = compare(a, no, ITEMS)
    assert d.causes == (Cause.REFUSAL,)
    assert d.differences[0].shadowed == "-1 参保人不存在"
    assert not compare(no, dict(no, err_msg="另一个说法"), ITEMS).differs


def test_a_success_without_its_settlement_is_not_taken_as_agreeing() -> None:
    """Found from outside: an old system's `infcode 0` with `"output": {}` was scored as one
    fund's small difference, every total it left out taken as agreeing."""
    a = _answer()
    empty = {"infcode": 0, "err_msg": None, "output": {}}
    d = compare(a, empty, ITEMS)
    assert d.causes == (Cause.REFUSAL,)
    assert d.differences[0].shadowed == "0 无结算信息(setlinfo)"
    assert d.differences[0].answered == "0"


def test_the_patients_part_is_compared() -> None:
    """Found from outside: a difference in psn_part_amt alone (the visit answers' name for what
    the patient pays; pharmacy answers here say psn_pay) went unreported."""
    a = _answer()
    a["output"]["setlinfo"]["psn_part_amt"] = D("61.50")
    b = _set(copy.deepcopy(a), psn_part_amt=D("60.50"))
    d = compare(a, b, ITEMS)
    assert [(x.field, x.answered, x.shadowed) for x in d.differences] == [
        ("psn_part_amt", "61.50", "60.50")
    ]


def test_a_line_only_one_side_lists_is_other() -> None:
    a = _answer()
    b = copy.deepcopy(a)
    b["output"]["detlcutinfo"].pop()
    d = compare(a, b, ITEMS)
    assert d.causes == (Cause.OTHER,)
    assert d.lines == ("2",)


def test_visit_answers_without_lines_are_attributed_from_the_totals() -> None:
    a = _answer()
    del a["output"]["detlcutinfo"]
    b = copy.deepcopy(a)
    _set(b, fulamt_ownpay_amt=D("35.00"), inscp_scp_amt=D("72.00"), hifp_pay=D("36.00"))
    d = compare(a, b)
    assert d.cause is Cause.CATALOG_CLASS
    assert {x.cause for x in d.differences} == {Cause.CATALOG_CLASS}


def test_several_causes_are_all_named_in_order() -> None:
    a = _answer()
    b = copy.deepcopy(a)
    b["output"]["detlcutinfo"][0].update(
        chrgitm_lv="01", selfpay_prop=D("0"), preselfpay_amt=D("0.00"), inscp_scp_amt=D("80.00")
    )
    _set(b, preselfpay_amt=D("0.00"), inscp_scp_amt=D("115.00"), pool_prop_selfpay=D("0.7000"))
    _set(b, hifp_pay=D("80.50"))
    d = compare(a, b, ITEMS)
    assert d.causes == (Cause.CATALOG_CLASS, Cause.POOL_RATIO)
    assert d.to_builtins()["cause"] == "catalog_class"
    msgspec.json.encode(d.to_builtins())  # storable as it is


def test_items_come_from_the_request_lines() -> None:
    assert items_of({"drugdetail": [{"feedetl_sn": "1", "medins_list_codg": "YP0003"}]}) == {
        "1": "YP0003"
    }
    assert items_of({"feedetail": [{"feedetl_sn": 7, "medins_list_codg": "ZL0001"}]}) == {
        "7": "ZL0001"
    }
    assert items_of(None) == {}


def test_the_metrics_know_every_cause() -> None:
    from gateway.ops.metrics import SHADOW_CAUSE_NAMES

    assert tuple(c.value for c in Cause) == SHADOW_CAUSE_NAMES


def test_each_settlement_is_shadowed_by_its_own_pre_settlement() -> None:
    import gateway.app.server  # noqa: F401 - registers every transaction
    from gateway.emergency.shadow import presettlement_of
    from gateway.protocol.transaction import TRANSACTIONS, Deferral

    pairs = {
        t.infno: shadow.infno
        for t in TRANSACTIONS.values()
        if (shadow := presettlement_of(t)) is not None
    }
    claims = {t.infno for t in TRANSACTIONS.values() if t.deferral is Deferral.CLAIM}
    presettlements = {
        t.infno for t in TRANSACTIONS.values() if t.deferral is Deferral.PRESETTLEMENT
    }
    assert set(pairs) == claims | presettlements  # every settlement and pre-settlement
    for settles, priced_by in pairs.items():
        assert TRANSACTIONS[priced_by].deferral is Deferral.PRESETTLEMENT
        assert TRANSACTIONS[priced_by].kind is TRANSACTIONS[settles].kind
        assert not TRANSACTIONS[priced_by].writes
    assert len(set(pairs.values())) == 3  # one pre-settlement per kind of visit


def test_sampling_is_by_msgid_and_keeps_its_share() -> None:
    from gateway.emergency.shadow import sampled

    msgids = [f"P44180000001202605081000{n:06d}" for n in range(4000)]
    assert all(sampled(10000, "P44180000001", m) for m in msgids)
    assert not any(sampled(0, "P44180000001", m) for m in msgids)
    taken = [m for m in msgids if sampled(2500, "P44180000001", m)]
    assert 800 < len(taken) < 1200  # about a quarter
    assert taken == [m for m in msgids if sampled(2500, "P44180000001", m)]  # a retry goes alike


def test_the_shadow_is_asked_the_same_bytes_under_the_pre_settlement_number() -> None:
    from gateway.emergency.shadow import as_presettlement

    body = (
        b'{"infno":"2102","msgid":"M1","input":{"druginfo":{"medfee_sumamt":115.10,'
        b'"psn_no":"1"},"drugdetail":[{"pric":"40.000000"}]},"fixmedins_code":"P1"}'
    )
    asked = as_presettlement(body, "2101")
    assert asked == body.replace(b'"infno":"2102"', b'"infno":"2101"')
    # An envelope sent by path (no infno in the body) gets one.
    assert msgspec.json.decode(as_presettlement(b'{"msgid":"M1"}', "2101")) == {
        "msgid": "M1",
        "infno": "2101",
    }


def test_the_shadow_is_not_asked_to_check_the_answering_systems_split_of_the_bill() -> None:
    """A 2207/2304 declares the bill's four parts as its 2206/2303 answered them: the answering
    system's figures. Found from outside: the shadow's pre-settlement refused each that differed
    from its own, so a settlement of an item the two price differently was counted a refusal."""
    from gateway.emergency.shadow import as_presettlement

    body = (
        b'{"infno":"2207","msgid":"M2","input":{"data":{"mdtrt_id":"V1","medfee_sumamt":45.50,'
        b'"fulamt_ownpay_amt":"25.00","overlmt_selfpay":0,"preselfpay_amt":"0.00",'
        b'"inscp_scp_amt":20.5,"insutype":"310"}},"fixmedins_code":"H1"}'
    )
    asked = as_presettlement(body, "2206")
    assert asked == (
        b'{"infno":"2206","msgid":"M2","input":{"data":{"mdtrt_id":"V1","medfee_sumamt":45.50,'
        b'"insutype":"310"}},"fixmedins_code":"H1"}'
    )  # the other amounts' bytes as sent
    # An input a client sent as a JSON string is passed on as it came.
    text = b'{"infno":"2207","msgid":"M3","input":"{\\"data\\":{}}","fixmedins_code":"H1"}'
    assert as_presettlement(text, "2206") == text.replace(b'"2207"', b'"2206"')


def test_a_difference_rate_is_rounded_to_the_nearest_basis_point() -> None:
    """Found from outside: 7 differing of 9 compared read 77.77%."""
    from gateway.ledger.shadow import Rate

    assert Rate("x", 9, 7).rate_bp == 7778
    assert Rate("x", 3, 1).rate_bp == 3333
    assert Rate("x", 8, 1).rate_bp == 1250
    assert Rate("x", 0, 0).rate_bp == 0
