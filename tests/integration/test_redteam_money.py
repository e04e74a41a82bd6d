"""Money and input defects found by the red team (/tmp/redteam/REPORT.md D2, D6, D8), over HTTP.

D2: an account is debited, a visit or admission opened, only for the person the presented
certificate identifies, on the single path, in a group commit and when deferred (主动报).
D6: text longer than the interface allows is refused naming the field, and nothing is stored.
D8: a 2301 refund line takes back part of one charge of the same stay, never more.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from adapters.national.envelope import decode_request, fingerprint
from gateway.app.config import GroupCommitConfig
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import set_rule, until
from tests.integration.his_client import HisClient, amount_text

PHARMACY = "P44180000001"
HOSPITAL = "H44180000001"
JIA = "441800000000000001"
JIA_CERTNO, JIA_CARD = "441802199001011234", "QY0000000001"
YI = "441800000000000002"
YI_CERTNO, YI_CARD = "441802195505052345", "QY0000000002"
DAY = "2026-11-20"
# Certificates that are not yi's: jia's ID number, card and e-voucher, a made-up ID, zeros.
NOT_YI = [
    ("02", JIA_CERTNO),
    ("02", "110101200001011234"),
    ("02", "000000000000000000"),
    ("03", JIA_CARD),
    ("01", JIA),
]
MISMATCH = "就诊凭证与参保人员不符"
_visits = itertools.count(1)
DRUG = [
    {"feedetl_sn": "1", "medins_list_codg": "YP0001", "pric": "9.90", "cnt": "1",
     "det_item_fee_sumamt": "9.90"},
]  # fmt: skip
VISIT = [
    {"feedetl_sn": "1", "medins_list_codg": "ZL0001", "pric": "25", "cnt": "1",
     "det_item_fee_sumamt": "25.00"},
]  # fmt: skip


@pytest.fixture(scope="module")
async def grouped(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    """2102 and 2207 through the group commit (the default)."""
    async with running_gateway(new_database) as srv:
        yield srv


@pytest.fixture(scope="module")
async def alone(new_database: Callable[..., Any]) -> AsyncIterator[Server]:
    """Every settlement on its own transaction (no group commit)."""
    async with running_gateway(
        new_database, replace(GENEROUS, group_commit=GroupCommitConfig(writers=0))
    ) as srv:
        yield srv


@pytest.fixture(params=["grouped", "alone"])
def server(request: pytest.FixtureRequest) -> Server:
    found: Server = request.getfixturevalue(request.param)
    return found


def cert(kind: str, number: str) -> dict[str, str]:
    return {"mdtrt_cert_type": kind, "mdtrt_cert_no": number}


async def balance(server: Server, psn_no: str) -> int:
    return int(await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", psn_no))


async def identity_failures(server: Server, code: str) -> float:
    async with server.session.get(server.url + "/metrics") as r:
        text = await r.text()
    found = re.search(
        r"sgw_terminal_identity_failures_total\{fixmedins_code=\"" + code
        + r"\",terminal=\"DEV-01\"\} (\S+)",
        text,
    )  # fmt: skip
    return float(found.group(1)) if found else 0.0


def sale(pos: HisClient, psn_no: str, certificate: dict[str, str]) -> dict[str, Any]:
    drug = pos.drug_input(psn_no, f"{DAY} 10:00:00", "9.90", DRUG)
    drug["druginfo"].update(certificate)
    return drug


def registration(psn_no: str, certificate: dict[str, str], ipt_otp_no: str) -> dict[str, Any]:
    return {
        "data": {
            "psn_no": psn_no, "insutype": "310", "begntime": f"{DAY} 08:00:00", **certificate,
            "ipt_otp_no": ipt_otp_no, "atddr_no": "D001", "dr_name": "医生", "dept_code": "K01",
            "dept_name": "内科", "caty": "A03",
        }
    }  # fmt: skip


def admission(psn_no: str, certificate: dict[str, str], ipt_no: str) -> dict[str, Any]:
    return {
        "mdtrtinfo": {
            "psn_no": psn_no, "insutype": "310", "begntime": f"{DAY} 07:00:00", **certificate,
            "med_type": "21", "ipt_no": ipt_no, "atddr_no": "D1", "chfpdr_name": "医生",
            "adm_diag_dscr": "肺炎", "adm_dept_codg": "K1", "adm_dept_name": "内科",
            "adm_bed": "3", "dscg_maindiag_code": "J18", "dscg_maindiag_name": "肺炎",
        },
        "diseinfo": [],
    }  # fmt: skip


async def open_visit(his: HisClient, psn_no: str, tag: str) -> str:
    mdtrt_id = await his.register(psn_no, "310", f"{DAY} 08:00:00", f"MZ-RT-{tag}")
    await his.visit_info(mdtrt_id, psn_no, "11", f"{DAY} 08:00:00")
    rows = his.fee_rows(mdtrt_id, psn_no, VISIT, f"{DAY} 08:10:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    return mdtrt_id


# ------------------------------------------------------------------------------------ D2


async def test_a_sale_with_someone_elses_certificate_debits_nobody(server: Server) -> None:
    pos = server.client(PHARMACY)
    before = await balance(server, YI)
    settlements = await server.fetchval("SELECT count(*) FROM settlements")
    failures = await identity_failures(server, PHARMACY)
    for kind, number in NOT_YI:
        for infno in ("2101", "2102"):
            answer = await pos.call(infno, sale(pos, YI, cert(kind, number)))
            assert answer["infcode"] == -1, (infno, kind, number)
            assert MISMATCH in answer["err_msg"] and YI in answer["err_msg"]
            assert number not in answer["err_msg"] or len(number) <= 8  # masked, not echoed
    assert await balance(server, YI) == before
    assert await server.fetchval("SELECT count(*) FROM settlements") == settlements
    assert await identity_failures(server, PHARMACY) - failures == 2 * len(NOT_YI)


async def test_each_of_the_persons_own_certificates_is_accepted(server: Server) -> None:
    pos = server.client(PHARMACY)
    for kind, number in [("01", YI), ("01", YI_CERTNO), ("02", YI_CERTNO), ("03", YI_CARD)]:
        before = await balance(server, YI)
        info = (await pos.ok("2102", sale(pos, YI, cert(kind, number))))["setlinfo"]
        assert info["psn_no"] == YI
        assert amount_text(info["acct_pay"]) == "9.90"
        assert await balance(server, YI) == before - 990


async def test_registration_and_admission_need_the_persons_certificate(server: Server) -> None:
    his = server.client(HOSPITAL)
    encounters = await server.fetchval("SELECT count(*) FROM encounters")
    for n, (kind, number) in enumerate(NOT_YI):
        refused = await his.call("2201", registration(YI, cert(kind, number), f"MZ-X{n}"))
        assert refused["infcode"] == -1 and MISMATCH in refused["err_msg"]
        refused = await his.call("2401", admission(YI, cert(kind, number), f"ZY-X{n}"))
        assert refused["infcode"] == -1 and MISMATCH in refused["err_msg"]
    assert await server.fetchval("SELECT count(*) FROM encounters") == encounters
    unknown = await his.call("2201", registration(YI, cert("99", YI_CERTNO), "MZ-X99"))
    assert unknown["infcode"] == -1 and "就诊凭证类型99无效" in unknown["err_msg"]
    await his.ok("2201", registration(YI, cert("02", YI_CERTNO), "MZ-OK"))
    await his.ok("2401", admission(YI, cert("03", YI_CARD), "ZY-OK"))


async def test_a_pharmacy_opens_no_visit_and_no_stay(server: Server) -> None:
    """Found from outside: a retail pharmacy admitted, discharged and settled a stay, and
    settled a clinic visit, the pool fund paying what its own sales never pay. Its sales are
    2101/2102 (protocol §2.0); a visit's and a stay's transactions are refused, nothing written."""
    pos = server.client(PHARMACY)
    before = await server.ledger_fingerprint()
    for infno, body in (
        ("2201", registration(YI, cert("02", YI_CERTNO), "MZ-POS")),
        ("2401", admission(YI, cert("02", YI_CERTNO), "ZY-POS")),
    ):
        refused = await pos.call(infno, body)
        assert refused["infcode"] == -1, refused
        assert "定点零售药店" in refused["err_msg"] and "2101、2102" in refused["err_msg"]
    # Nor may it act on a visit of its own making through the other calls.
    settle = pos.settle_data(YI, "44180020260101000000000001", "11", "1.00", "310", "0")
    refused = await pos.call("2207", settle)
    assert refused["infcode"] == -1 and "门诊" in refused["err_msg"]
    assert await server.ledger_fingerprint() == before


async def test_a_pharmacys_visit_answered_before_the_refusal_is_replayed(server: Server) -> None:
    """A retry gets its stored answer whatever has changed since: a registration a pharmacy
    was answered before visits were refused to it is answered again as it was, not refused."""
    pos = server.client(PHARMACY)
    envelope = pos.envelope("2201", registration(YI, cert("02", YI_CERTNO), "MZ-POS-OLD"))
    body = msgspec.json.encode(envelope)
    stored = b'{"infcode":0,"err_msg":"ok","output":{"data":{"mdtrt_id":"OLD"}}}'
    await server.fetch(
        "INSERT INTO idempotency (fixmedins_code, msgid, infno, body_sha256, answer, infcode)"
        " VALUES ($1, $2, '2201', $3, $4, 0)",
        PHARMACY,
        envelope["msgid"],
        fingerprint(decode_request(body)),
        stored,
    )
    status, answer = await pos.post_raw(body)
    assert (status, answer) == (200, stored)


async def test_an_outpatient_settlement_checks_a_certificate_it_carries(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await open_visit(his, YI, f"S{next(_visits)}")
    before = await balance(server, YI)
    for infno in ("2206", "2207"):
        for kind, number in NOT_YI:
            data = his.settle_data(YI, mdtrt_id, "11", "25.00", "310", "1", chrg_bchno="B1")
            data["data"].update(cert(kind, number))
            refused = await his.call(infno, data)
            assert refused["infcode"] == -1 and MISMATCH in refused["err_msg"], refused
    assert await balance(server, YI) == before
    # A client that sends only the certificate type (binzhe's fixed "03") is not refused.
    data = his.settle_data(YI, mdtrt_id, "11", "25.00", "310", "1", chrg_bchno="B1")
    data["data"].update({"mdtrt_cert_type": "03", "mdtrt_cert_no": ""})
    info = (await his.ok("2207", data))["setlinfo"]
    assert info["psn_no"] == YI
    assert await server.check_ledger() == []


async def test_an_inpatient_settlement_checks_a_certificate_it_carries(grouped: Server) -> None:
    his = grouped.client(HOSPITAL)
    mdtrt_id = (await his.ok("2401", admission(YI, cert("02", YI_CERTNO), "ZY-IP-1")))["result"][
        "mdtrt_id"
    ]
    rows = his.fee_rows(mdtrt_id, YI, VISIT, f"{DAY} 09:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    for infno in ("2303", "2304"):
        data = his.settle_data(YI, mdtrt_id, "21", "25.00", "310", "1", mid_setl_flag="1")
        data["data"].update(cert("02", JIA_CERTNO))
        refused = await his.call(infno, data)
        assert refused["infcode"] == -1 and MISMATCH in refused["err_msg"]
    data = his.settle_data(YI, mdtrt_id, "21", "25.00", "310", "1", mid_setl_flag="1")
    data["data"].update(cert("03", YI_CARD))
    await his.ok("2304", data)


async def test_a_deferred_claim_needs_the_persons_certificate(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        await set_rule(srv.dsn, f"institution:{PHARMACY}", "settlement", "defer")

        async def deferring() -> bool:
            answer = await pos.call("2101", sale(pos, YI, cert("02", YI_CERTNO)))
            return "应急预案" in str(answer["warn_msg"] or "")

        assert await until(deferring) < 3.0
        refused = await pos.call("2102", sale(pos, YI, cert("02", JIA_CERTNO)))
        assert refused["infcode"] == -1 and MISMATCH in refused["err_msg"]
        assert await srv.fetchval("SELECT count(*) FROM deferred") == 0
        claimed = (await pos.ok("2102", sale(pos, YI, cert("02", YI_CERTNO))))["setlinfo"]
        assert claimed["setl_id"].startswith("DF")
        assert await srv.fetchval("SELECT count(*) FROM deferred WHERE kind = 'claim'") == 1


# ------------------------------------------------------------------------------------ D6


async def test_overlong_text_is_refused_naming_the_field(grouped: Server) -> None:
    his = grouped.client(HOSPITAL)
    cases: list[tuple[str, dict[str, Any], str]] = []
    for field, value in [("ipt_otp_no", "X" * 100_000), ("dept_name", "名" * 60_000),
                         ("atddr_no", "A" * 31)]:  # fmt: skip
        data = registration(YI, cert("02", YI_CERTNO), "MZ-LONG")
        data["data"][field] = value
        cases.append(("2201", data, f"data.{field}"))
    cases.append(("9001", {"signIn": {"opter_no": "1" * 5000, "mac": "m", "ip": "1"}},
                  "signIn.opter_no"))  # fmt: skip
    mdtrt_id = await open_visit(his, YI, "LONG")
    fingerprint = await grouped.ledger_fingerprint()
    for field, at in [("feedetl_sn", "feedetl_sn"), ("chrg_bchno", "chrg_bchno")]:
        rows = his.fee_rows(mdtrt_id, YI, VISIT, f"{DAY} 08:20:00", "B2")
        rows[0][field] = "S" * 5000
        cases.append(("2204", {"feedetail": rows}, f"feedetail第1条.{at}"))
    for infno, input_, at in cases:
        answer = await his.call(infno, input_)
        assert answer["infcode"] == -1, (infno, at)
        assert f"字段{at}过长" in answer["err_msg"] and "最多" in answer["err_msg"], answer
        assert len(answer["err_msg"]) < 200
    long_opter = await his.call("1101", {"data": cert("02", YI_CERTNO)}, opter="O" * 31)
    assert long_opter["infcode"] == -1 and "字段opter过长" in long_opter["err_msg"]
    assert await grouped.ledger_fingerprint() == fingerprint


async def test_a_refusal_names_the_line_the_clerk_sees(grouped: Server) -> None:
    """Found from outside: a refusal named a line by its position counted from 0 when the
    decoder refused it and by its serial number when a value check did, both as
    `feedetail[1]`, so one of them pointed at the wrong line. Positions now count from 1
    (第2条) and a serial number says so (流水号B2); every case here is the second line."""
    his = grouped.client(HOSPITAL)
    mdtrt_id = await open_visit(his, YI, "LINE-NAMES")
    fingerprint = await grouped.ledger_fingerprint()

    def rows_with(change: dict[str, Any]) -> list[dict[str, Any]]:
        rows = his.fee_rows(mdtrt_id, YI, VISIT, f"{DAY} 08:20:00", "B2")
        rows = [rows[0], {**rows[0]}]
        rows[0]["feedetl_sn"], rows[1]["feedetl_sn"] = "A1", "B2"
        rows[1].update(change)
        return rows

    cases = [
        ({"pric": "99999999999999.99"}, "字段feedetail(流水号B2).pric"),  # a value check
        ({"fee_ocur_time": "2026-02-30 25:61:61"}, "字段feedetail(流水号B2).fee_ocur_time"),
        ({"pric": 1e308}, "字段feedetail第2条.pric"),  # the decoder
        ({"psn_no": ["x"]}, "字段feedetail第2条.psn_no"),
        ({"feedetl_sn": "S" * 31}, "字段feedetail第2条.feedetl_sn"),  # the length check
    ]
    for change, named in cases:
        answer = await his.call("2204", {"feedetail": rows_with(change)})
        assert answer["infcode"] == -1 and named in answer["err_msg"], (change, answer)
        assert "[" not in answer["err_msg"], answer
    assert await grouped.ledger_fingerprint() == fingerprint
    # At the interface's length exactly, the same fields are taken.
    data = registration(YI, cert("02", YI_CERTNO), "Z" * 30)
    data["data"]["dept_name"] = "名" * 100
    out = await his.ok("2201", data)
    assert out["data"]["ipt_otp_no"] == "Z" * 30


# ------------------------------------------------------------------------------------ D8


def ip_line(sn: str, code: str, pric: str, cnt: str, init: str = "") -> dict[str, Any]:
    amount = Decimal(pric) * Decimal(cnt)
    row = {"feedetl_sn": sn, "medins_list_codg": code, "pric": pric, "cnt": cnt,
           "det_item_fee_sumamt": f"{amount:.2f}"}  # fmt: skip
    if init:
        row["init_feedetl_sn"] = init
    return row


async def test_refund_lines_take_back_at_most_their_charge(grouped: Server) -> None:
    his = grouped.client(HOSPITAL)
    stay = (await his.ok("2401", admission(YI, cert("02", YI_CERTNO), "ZY-REF-1")))["result"][
        "mdtrt_id"
    ]

    async def upload(*lines: dict[str, Any]) -> dict[str, Any]:
        rows = his.fee_rows(stay, YI, list(lines), f"{DAY} 09:00:00", "")
        return await his.call("2301", {"feedetail": rows})

    assert (await upload(ip_line("1", "ZL0004", "500", "10"), ip_line("2", "ZL0004", "500", "10")))[
        "infcode"
    ] == 0
    data = his.settle_data(YI, stay, "21", "10000.00", "310", "0", mid_setl_flag="1")
    await his.ok("2304", data)  # mid-way: refunds of settled lines stay allowed
    fee_lines = await grouped.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", stay)

    refused = [
        ("over-refund", [ip_line("3", "ZL0004", "500", "-11", "1")], "超过原收费数量10"),
        ("two refunds of one line in one upload",
         [ip_line("3", "ZL0004", "500", "-6", "1"), ip_line("4", "ZL0004", "500", "-6", "1")],
         "累计退费数量12"),
        ("positive line citing an original", [ip_line("3", "ZL0004", "500", "1", "1")],
         "不能填写原费用流水号"),
        ("another item", [ip_line("3", "ZL0008", "500", "-1", "1")], "项目ZL0004不一致"),
        ("another price", [ip_line("3", "ZL0004", "400", "-1", "1")], "单价500不一致"),
        ("another stay's line", [ip_line("3", "ZL0004", "500", "-1", "99")], "不存在"),
    ]  # fmt: skip
    for name, lines, words in refused:
        answer = await upload(*lines)
        assert answer["infcode"] == -1 and words in answer["err_msg"], (name, answer["err_msg"])
    assert await grouped.fetchval("SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1", stay) == (
        fee_lines
    )

    # A legitimate partial refund, then one that would pass the charge with it, then a refund
    # of a refund.
    assert (await upload(ip_line("3", "ZL0004", "500", "-6", "1")))["infcode"] == 0
    again = await upload(ip_line("4", "ZL0004", "500", "-5", "1"))
    assert again["infcode"] == -1 and "累计退费数量11" in again["err_msg"]
    of_refund = await upload(ip_line("4", "ZL0004", "500", "-1", "3"))
    assert of_refund["infcode"] == -1 and "是退费明细" in of_refund["err_msg"]
    assert (await upload(ip_line("4", "ZL0004", "500", "-4", "1")))["infcode"] == 0
    # An original and its refund in one upload are taken; the charge cannot be withdrawn alone.
    assert (
        await upload(ip_line("5", "ZL0004", "500", "2"), ip_line("6", "ZL0004", "500", "-2", "5"))
    )["infcode"] == 0
    alone = await his.call("2302", {"data": {"mdtrt_id": stay, "psn_no": YI, "feedetl_sn": "5"}})
    assert alone["infcode"] == -1 and "退费明细6" in alone["err_msg"]
    both = [{"mdtrt_id": stay, "psn_no": YI, "feedetl_sn": sn} for sn in ("5", "6")]
    await his.ok("2302", {"data": both})

    # The stay still closes: 10000 settled mid-way, 5000 of it refunded, 6000 charged since.
    assert (await upload(ip_line("7", "ZL0004", "500", "12")))["infcode"] == 0
    await his.ok(
        "2402",
        {"dscginfo": {"mdtrt_id": stay, "psn_no": YI, "insutype": "310",
                      "endtime": f"{DAY} 18:00:00", "dscg_dept_codg": "K1", "dscg_way": "1"}},
    )  # fmt: skip
    final = his.settle_data(YI, stay, "21", "1000.00", "310", "0", mid_setl_flag="0")
    closed = (await his.ok("2304", final))["setlinfo"]
    assert amount_text(closed["medfee_sumamt"]) == "1000.00"
    assert amount_text(closed["inscp_scp_amt"]) == "1000.00"
    assert await grouped.check_ledger() == []


async def test_refund_of_a_self_pay_line_settled_mid_way_names_the_negative_component(
    grouped: Server,
) -> None:
    """The attacker's m7 case: a self-pay line settled mid-way, then a covered charge and one
    legitimate refund of the self-pay line. The closing settlement's total is positive but its
    全自费金额 would be -100.00; rules §6 keep every component at least 0, so it is refused,
    with the component and the way out named."""
    his = grouped.client(HOSPITAL)
    stay = (await his.ok("2401", admission(YI, cert("02", YI_CERTNO), "ZY-M7")))["result"][
        "mdtrt_id"
    ]
    rows = his.fee_rows(stay, YI, [ip_line("1", "YP0010", "100", "1")], f"{DAY} 09:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    mid = his.settle_data(YI, stay, "21", "100.00", "310", "0", mid_setl_flag="1")
    settled = (await his.ok("2304", mid))["setlinfo"]
    assert amount_text(settled["fulamt_ownpay_amt"]) == "100.00"
    later = [ip_line("2", "ZL0004", "100", "20"), ip_line("R1", "YP0010", "100", "-1", "1")]
    rows = his.fee_rows(stay, YI, later, f"{DAY} 10:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    over = his.fee_rows(
        stay, YI, [ip_line("R2", "YP0010", "100", "-1", "1")], f"{DAY} 10:00:00", ""
    )
    refused = await his.call("2301", {"feedetail": over})
    assert refused["infcode"] == -1 and "超过原收费数量1" in refused["err_msg"]
    final = his.settle_data(YI, stay, "21", "1900.00", "310", "0", mid_setl_flag="1")
    # Also as a HIS sends it with its own sums of the unsettled lines, the refund's negative
    # component among them (found from outside: told the field could not be negative).
    summed = his.settle_data(
        YI, stay, "21", "1900.00", "310", "0", mid_setl_flag="1", fulamt_ownpay_amt="-100.00"
    )
    for request in (final, summed):
        answer = await his.call("2303", request)
        assert answer["infcode"] == -1
        assert "全自费金额fulamt_ownpay_amt为-100.00" in answer["err_msg"], answer
        assert "2305" in answer["err_msg"]
    # The way out it names: cancel the mid-way settlement, then settle everything at once.
    await his.ok("2305", {"data": {"mdtrt_id": stay, "psn_no": YI, "setl_id": settled["setl_id"]}})
    whole = his.settle_data(YI, stay, "21", "2000.00", "310", "0", mid_setl_flag="1")
    again = (await his.ok("2304", whole))["setlinfo"]
    assert amount_text(again["fulamt_ownpay_amt"]) == "0.00"
    assert amount_text(again["medfee_sumamt"]) == "2000.00"
    assert await grouped.check_ledger() == []
