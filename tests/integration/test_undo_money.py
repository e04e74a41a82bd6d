"""Undo never pays more than the rules give, and dates stay between the late bound and now.

A 2601 of a cancellation puts a settlement back with the amounts it was computed with; that is
only right while nothing it was computed against has changed (a later settlement against the same
cap, its fee lines, the account). Service dates pick the year whose caps pay, so a visit dated
ahead of now, or before the late-billing bound, is refused.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway.protocol.errors import Conflict
from gateway.services import conversion
from tests.integration.conftest import Server
from tests.integration.his_client import HisClient

HOSPITAL = "H44180000001"  # level 3: residents' outpatient ratio 50%, cap 500.00 (2026 policy)
PHARMACY = "P44180000001"
RESIDENT = "441800000000000004"  # template for fresh residents (390, no account)
EMPLOYEE = "441800000000000001"  # template for fresh employees (310, with an account)
_serial = itertools.count(1)


def _at(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


# One moment safely behind the gateway's clock that every visit of a test starts from, so the
# visits of one test share a calendar year whatever the time of day the suite runs.
BASE = (dt.datetime.now() - dt.timedelta(hours=3)).replace(microsecond=0)
DAY = _at(BASE)
FEE_TIME = _at(BASE + dt.timedelta(minutes=10))
DISCHARGE = _at(BASE + dt.timedelta(hours=1))


async def _person(server: Server, template: str, balance_fen: int = 0) -> str:
    """A fresh insured person like the template, with no settlement yet."""
    psn_no = f"4418009{next(_serial):011d}"
    await server.fetch(
        "INSERT INTO persons SELECT $2, psn_name, psn_cert_type, $2, gend, brdy, insuplc_admdvs,"
        " insutype, psn_type, psn_insu_stas, cvlserv_flag, maf_class, chronic_dise_codg, ''"
        " FROM persons WHERE psn_no = $1",
        template,
        psn_no,
    )
    await server.fetch("INSERT INTO accounts VALUES ($1, $2)", psn_no, balance_fen)
    return psn_no


def _line(sn: str, amount: str, code: str = "ZL0001") -> dict[str, Any]:
    return {
        "feedetl_sn": sn,
        "medins_list_codg": code,
        "pric": amount,
        "cnt": "1",
        "det_item_fee_sumamt": amount,
    }


def _registration(psn_no: str, insutype: str, begntime: str) -> dict[str, Any]:
    return {
        "data": {
            "psn_no": psn_no,
            "insutype": insutype,
            "begntime": begntime,
            "mdtrt_cert_type": "01",
            "mdtrt_cert_no": psn_no,
            "ipt_otp_no": f"MZ-UNDO-{next(_serial)}",
        }
    }


async def _visit(
    his: HisClient, psn_no: str, insutype: str, lines: list[dict[str, Any]], *, acct: str = "0"
) -> tuple[str, dict[str, Any], str]:
    """Register, upload batch B1 and settle it: (mdtrt_id, setlinfo, msgid of the 2207)."""
    mdtrt_id = await his.register(psn_no, insutype, DAY, f"MZ-UNDO-{next(_serial)}")
    await his.ok("2204", {"feedetail": his.fee_rows(mdtrt_id, psn_no, lines, FEE_TIME, "B1")})
    total = f"{sum(Decimal(ln['det_item_fee_sumamt']) for ln in lines):.2f}"
    msgid = his.msgid()
    data = his.settle_data(psn_no, mdtrt_id, "11", total, insutype, acct, chrg_bchno="B1")
    out = await his.ok("2207", data, msgid=msgid)
    return mdtrt_id, out["setlinfo"], msgid


async def _cancel(his: HisClient, infno: str, psn_no: str, mdtrt_id: str, setl_id: str) -> str:
    msgid = his.msgid()
    data = {"data": {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": psn_no}}
    await his.ok(infno, data, msgid=msgid)
    return msgid


def _reverse(psn_no: str, omsgid: str, oinfno: str) -> dict[str, Any]:
    return {"data": {"psn_no": psn_no, "omsgid": omsgid, "oinfno": oinfno}}


async def _pool_in_force(server: Server, psn_no: str) -> Decimal:
    fen = await server.fetchval(
        "SELECT coalesce(sum(hifp_pay), 0) FROM settlements WHERE psn_no = $1"
        " AND status = 'settled'",
        psn_no,
    )
    return Decimal(fen) / 100


async def _admission(his: HisClient, psn_no: str, insutype: str, begntime: str = DAY) -> str:
    out = await his.ok("2401", _admission_input(psn_no, insutype, begntime))
    mdtrt_id = out["result"]["mdtrt_id"]
    assert isinstance(mdtrt_id, str)
    return mdtrt_id


def _admission_input(psn_no: str, insutype: str, begntime: str) -> dict[str, Any]:
    return {
        "mdtrtinfo": {
            "psn_no": psn_no,
            "insutype": insutype,
            "begntime": begntime,
            "mdtrt_cert_type": "01",
            "mdtrt_cert_no": psn_no,
            "med_type": "21",
            "ipt_no": f"ZY-UNDO-{next(_serial)}",
        },
        "diseinfo": [],
    }


def _discharge(mdtrt_id: str, psn_no: str, endtime: str = DISCHARGE) -> dict[str, Any]:
    return {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "endtime": endtime}}


async def _stay(
    his: HisClient, psn_no: str, insutype: str, amount: str
) -> tuple[str, dict[str, Any]]:
    """Admit, upload one line, discharge, settle: (mdtrt_id, setlinfo)."""
    mdtrt_id = await _admission(his, psn_no, insutype)
    rows = his.fee_rows(mdtrt_id, psn_no, [_line("1", amount, "ZL0003")], FEE_TIME, "")
    await his.ok("2301", {"feedetail": rows})
    await his.ok("2402", _discharge(mdtrt_id, psn_no))
    data = his.settle_data(psn_no, mdtrt_id, "21", amount, insutype, "0", mid_setl_flag="0")
    out = await his.ok("2304", data)
    return mdtrt_id, out["setlinfo"]


# --------------------------------------------------------------------------- undo


async def test_undoing_a_cancellation_after_a_later_settlement_is_refused(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    first_visit, first, _ = await _visit(his, psn, "390", [_line("1", "1000.00")])
    assert first["hifp_pay"] == Decimal("500.00")  # the whole year's cap
    cancel = await _cancel(his, "2208", psn, first_visit, first["setl_id"])
    _, second, _ = await _visit(his, psn, "390", [_line("1", "1000.00")])
    assert second["hifp_pay"] == Decimal("500.00")  # the cap is free again: rightly paid
    before = await server.ledger_fingerprint()
    answer = await his.call("2601", _reverse(psn, cancel, "2208"))
    assert answer["infcode"] == -1
    assert "后续结算" in answer["err_msg"] and second["setl_id"] in answer["err_msg"]
    assert "请重新结算" in answer["err_msg"]
    assert await server.ledger_fingerprint() == before
    assert await _pool_in_force(server, psn) == Decimal("500.00")
    # Refused, the cancellation stands and can still be undone once the later one is cancelled.
    assert (
        await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", first["setl_id"])
        == "cancelled"
    )


async def test_undoing_a_cancellation_after_its_lines_were_replaced_is_refused(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    mdtrt_id, settled, _ = await _visit(his, psn, "390", [_line("1", "800.00")])
    cancel = await _cancel(his, "2208", psn, mdtrt_id, settled["setl_id"])
    await his.ok("2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B1", "psn_no": psn}})
    cheap = his.fee_rows(mdtrt_id, psn, [_line("1", "1.00")], FEE_TIME, "B1")
    await his.ok("2204", {"feedetail": cheap})
    before = await server.ledger_fingerprint()
    answer = await his.call("2601", _reverse(psn, cancel, "2208"))
    assert answer["infcode"] == -1
    assert "费用明细已变更" in answer["err_msg"] and "请重新结算" in answer["err_msg"]
    assert await server.ledger_fingerprint() == before
    assert await _pool_in_force(server, psn) == Decimal("0.00")
    # The 1.00 line is what the visit holds now, and what settles.
    data = his.settle_data(psn, mdtrt_id, "11", "1.00", "390", "0", chrg_bchno="B1")
    again = await his.ok("2207", data)
    assert again["setlinfo"]["medfee_sumamt"] == Decimal("1.00")


async def test_undoing_a_cancellation_after_the_same_lines_were_settled_again_is_refused(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    mdtrt_id, settled, _ = await _visit(his, psn, "390", [_line("1", "300.00")])
    cancel = await _cancel(his, "2208", psn, mdtrt_id, settled["setl_id"])
    data = his.settle_data(psn, mdtrt_id, "11", "300.00", "390", "0", chrg_bchno="B1")
    await his.ok("2207", data)
    answer = await his.call("2601", _reverse(psn, cancel, "2208"))
    assert answer["infcode"] == -1 and "不能冲正" in answer["err_msg"]
    assert await _pool_in_force(server, psn) == Decimal("150.00")


async def test_undoing_a_cancellation_is_still_exact_when_nothing_changed(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    mdtrt_id, settled, _ = await _visit(his, psn, "390", [_line("1", "400.00")])
    cancel = await _cancel(his, "2208", psn, mdtrt_id, settled["setl_id"])
    # A sale in another accumulator group (pharmacy) does not touch the outpatient cap.
    pos = server.client(PHARMACY)
    sale = pos.drug_input(psn, DAY, "19.80", [_line("1", "19.80", "YP0007")], "0", "390")
    await pos.ok("2102", sale)
    await his.ok("2601", _reverse(psn, cancel, "2208"))
    assert (
        await server.fetchval(
            "SELECT status FROM settlements WHERE setl_id = $1", settled["setl_id"]
        )
        == "settled"
    )
    assert await server.check_ledger() == []


async def test_undoing_an_inpatient_cancellation_after_a_later_admission_settled(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    first_stay, first = await _stay(his, psn, "390", "3000.00")
    cancel = await _cancel(his, "2305", psn, first_stay, first["setl_id"])
    _, second = await _stay(his, psn, "390", "3000.00")
    before = await server.ledger_fingerprint()
    answer = await his.call("2601", _reverse(psn, cancel, "2305"))
    assert answer["infcode"] == -1
    assert "后续结算" in answer["err_msg"] and second["setl_id"] in answer["err_msg"]
    assert await server.ledger_fingerprint() == before


async def test_undoing_an_inpatient_cancellation_after_the_discharge_was_undone(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    stay, settled = await _stay(his, psn, "390", "2000.00")
    cancel = await _cancel(his, "2305", psn, stay, settled["setl_id"])
    await his.ok("2405", {"data": {"mdtrt_id": stay, "psn_no": psn}})
    answer = await his.call("2601", _reverse(psn, cancel, "2305"))
    assert answer["infcode"] == -1 and "已撤销出院" in answer["err_msg"]


async def _both_cancelled(server: Server) -> tuple[HisClient, str, str, dict[str, Any], str]:
    """A stay settled mid-way (500.00), then closed (1000.00), and its closing settlement
    cancelled: the client, the person, the stay, the mid-way setlinfo, the 2305's msgid."""
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    stay = await _admission(his, psn, "390")
    first = his.fee_rows(stay, psn, [_line("1", "500.00", "ZL0003")], FEE_TIME, "")
    await his.ok("2301", {"feedetail": first})
    mid_way = his.settle_data(psn, stay, "21", "500.00", "390", "0", mid_setl_flag="1")
    mid = (await his.ok("2304", mid_way))["setlinfo"]
    second = his.fee_rows(stay, psn, [_line("2", "1000.00", "ZL0003")], FEE_TIME, "")
    await his.ok("2301", {"feedetail": second})
    await his.ok("2402", _discharge(stay, psn))
    closing = his.settle_data(psn, stay, "21", "1000.00", "390", "0", mid_setl_flag="0")
    final = (await his.ok("2304", closing))["setlinfo"]
    closing_cancelled = await _cancel(his, "2305", psn, stay, final["setl_id"])
    return his, psn, stay, mid, closing_cancelled


async def test_a_closing_settlement_is_not_undone_over_a_mid_way_one_cancelled_since(
    server: Server,
) -> None:
    """Found from outside: 2305 of the closing settlement, 2305 of the mid-way one, then 2601 of
    the first 2305 put the closing settlement back above the mid-way's unsettled lines."""
    his, psn, stay, mid, closing_cancelled = await _both_cancelled(server)
    mid_cancelled = await _cancel(his, "2305", psn, stay, mid["setl_id"])
    before = await server.ledger_fingerprint()
    answer = await his.call("2601", _reverse(psn, closing_cancelled, "2305"))
    assert answer["infcode"] == -1, answer
    assert mid["setl_id"] in answer["err_msg"] and "2304" in answer["err_msg"], answer
    assert await server.ledger_fingerprint() == before

    assert (
        await server.fetchval(
            "SELECT count(*) FROM fee_lines WHERE mdtrt_id = $1 AND setl_id IS NULL", stay
        )
        == 2
    )  # both lines wait for the stay's settlement
    # With the mid-way one back, the closing one is still not: it was computed before that.
    await his.ok("2601", _reverse(psn, mid_cancelled, "2305"))
    answer = await his.call("2601", _reverse(psn, closing_cancelled, "2305"))
    assert answer["infcode"] == -1 and mid["setl_id"] in answer["err_msg"], answer
    assert await _pool_in_force(server, psn) == mid["hifp_pay"]
    assert await server.check_ledger() == []


async def test_a_closing_settlement_is_not_undone_over_lines_uploaded_since(
    server: Server,
) -> None:
    """Found from outside: 2305 of the closing settlement, a new line, 2601 of the 2305 put the
    closing settlement back over the new line, and a second 2304 (closing or mid-way) then
    settled it: two closing settlements in force on one stay, or a mid-way after its closing."""
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    stay, final = await _stay(his, psn, "390", "800.00")
    cancelled = await _cancel(his, "2305", psn, stay, final["setl_id"])
    late = his.fee_rows(stay, psn, [_line("2", "40.00", "ZL0003")], FEE_TIME, "")
    await his.ok("2301", {"feedetail": late})
    before = await server.ledger_fingerprint()
    answer = await his.call("2601", _reverse(psn, cancelled, "2305"))
    assert answer["infcode"] == -1, answer
    assert f"就诊ID{stay}" in answer["err_msg"] and "流水号2" in answer["err_msg"], answer
    assert await server.ledger_fingerprint() == before
    whole = his.settle_data(psn, stay, "21", "840.00", "390", "0", mid_setl_flag="0")
    again = (await his.ok("2304", whole))["setlinfo"]
    assert await _pool_in_force(server, psn) == again["hifp_pay"]
    closings = await server.fetchval(
        "SELECT count(*) FROM settlements WHERE mdtrt_id = $1 AND status = 'settled'"
        " AND mid_setl_flag = '0'",
        stay,
    )
    assert closings == 1
    assert await server.check_ledger() == []


async def test_nothing_is_settled_on_a_stay_under_its_closing_settlement(server: Server) -> None:
    """The state the test above no longer lets arise (a ledger may hold it from before): an
    unsettled line under a closing settlement in force. Neither a mid-way nor a second closing
    settlement, nor their pre-settlements, is taken over it."""
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    stay, final = await _stay(his, psn, "390", "800.00")
    await server.fetch(
        "INSERT INTO fee_lines (mdtrt_id, feedetl_sn, chrg_bchno, init_feedetl_sn, psn_no,"
        " medins_list_codg, med_list_codg, pric_micro, cnt, amount_fen, fee_ocur_time,"
        " hosp_appr_flag, uploaded_msgid) SELECT mdtrt_id, 'X', chrg_bchno, '', psn_no,"
        " medins_list_codg, med_list_codg, pric_micro, cnt, amount_fen, fee_ocur_time,"
        " hosp_appr_flag, uploaded_msgid FROM fee_lines WHERE mdtrt_id = $1 LIMIT 1",
        stay,
    )
    before = await server.ledger_fingerprint()
    for infno in ("2303", "2304"):
        for flag in ("1", "0"):
            data = his.settle_data(psn, stay, "21", "800.00", "390", "0", mid_setl_flag=flag)
            answer = await his.call(infno, data)
            assert answer["infcode"] == -1, (infno, flag, answer)
            assert final["setl_id"] in answer["err_msg"] and "2305" in answer["err_msg"]
    assert await server.ledger_fingerprint() == before
    # The checker names the state (found from outside: it said nothing of it).
    assert f"stay {stay}: line X unsettled under its closing settlement" in (
        await server.check_ledger()
    )
    await server.fetch("DELETE FROM fee_lines WHERE mdtrt_id = $1 AND feedetl_sn = 'X'", stay)
    # A second settlement in force on the stay after its closing one, closing or mid-way.
    for flag, words in (
        ("0", f"stay {stay}: 2 closing settlements in force"),
        ("1", f"stay {stay}: mid-way settlement COPY came into force after its closing"),
    ):
        await server.fetch(
            "INSERT INTO settlements SELECT (jsonb_populate_record(NULL::settlements,"
            " to_jsonb(s) || jsonb_build_object('setl_id', 'COPY', 'medins_setl_id', 'COPY',"
            " 'mid_setl_flag', $2::text, 'in_force_seq', nextval('settlement_event_seq')))).*"
            " FROM settlements s WHERE setl_id = $1",
            final["setl_id"],
            flag,
        )
        found = await server.check_ledger()
        await server.fetch("DELETE FROM settlement_events WHERE setl_id = 'COPY'")
        await server.fetch("DELETE FROM settlements WHERE setl_id = 'COPY'")
        assert any(problem.startswith(words) for problem in found), found


async def test_a_stay_whose_mid_way_settlement_was_cancelled_settles_whole_again(
    server: Server,
) -> None:
    """The way the refusal above points: one closing settlement of every line."""
    his, psn, stay, mid, closing_cancelled = await _both_cancelled(server)
    await _cancel(his, "2305", psn, stay, mid["setl_id"])
    whole = his.settle_data(psn, stay, "21", "1500.00", "390", "0", mid_setl_flag="0")
    again = (await his.ok("2304", whole))["setlinfo"]
    assert again["medfee_sumamt"] == Decimal("1500.00")
    assert await _pool_in_force(server, psn) == again["hifp_pay"]
    answer = await his.call("2601", _reverse(psn, closing_cancelled, "2305"))
    assert answer["infcode"] == -1, answer  # its lines are settled again
    assert await server.check_ledger() == []


async def test_undoing_a_pharmacy_cancellation_after_the_account_was_spent(
    server: Server,
) -> None:
    pos = server.client(PHARMACY)
    psn = await _person(server, EMPLOYEE, balance_fen=10000)
    sale_msgid = pos.msgid()
    drugs = [_line("1", "49.50", "YP0007")]
    sold = await pos.ok(
        "2102", pos.drug_input(psn, DAY, "49.50", drugs, "1", "310"), msgid=sale_msgid
    )
    info = sold["setlinfo"]
    assert info["acct_pay"] > 0
    cancel = await _cancel(pos, "2103", psn, info["mdtrt_id"], info["setl_id"])
    # The refunded account is spent at the hospital (another accumulator group).
    his = server.client(HOSPITAL)
    _, spent, _ = await _visit(his, psn, "310", [_line("1", "200.00")], acct="1")
    assert spent["balc"] < info["acct_pay"]
    before = await server.ledger_fingerprint()
    answer = await pos.call("2601", _reverse(psn, cancel, "2103"))
    assert answer["infcode"] == -1
    assert "个人账户余额" in answer["err_msg"] and "请重新结算" in answer["err_msg"]
    assert await server.ledger_fingerprint() == before


async def test_settled_lines_cannot_be_withdrawn(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    mdtrt_id, _, _ = await _visit(his, psn, "390", [_line("1", "100.00")])
    stay, _ = await _stay(his, psn, "390", "500.00")
    before = await server.ledger_fingerprint()
    answer = await his.call(
        "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B1", "psn_no": psn}}
    )
    assert answer["infcode"] == -1 and "已结算" in answer["err_msg"]
    answer = await his.call(
        "2302", {"data": [{"mdtrt_id": stay, "feedetl_sn": "1", "psn_no": psn}]}
    )
    assert answer["infcode"] == -1 and "已结算" in answer["err_msg"]
    assert await server.ledger_fingerprint() == before


async def test_undoing_an_admission_with_a_settlement_in_force_is_refused(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    admit_msgid = his.msgid()
    await his.ok("2401", _admission_input(psn, "390", DAY), msgid=admit_msgid)
    stay = await server.fetchval(
        "SELECT mdtrt_id FROM encounters WHERE created_msgid = $1", admit_msgid
    )
    rows = his.fee_rows(stay, psn, [_line("1", "500.00", "ZL0003")], FEE_TIME, "")
    await his.ok("2301", {"feedetail": rows})
    data = his.settle_data(psn, stay, "21", "500.00", "390", "0", mid_setl_flag="1")
    await his.ok("2304", data)
    answer = await his.call("2601", _reverse(psn, admit_msgid, "2401"))
    assert answer["infcode"] == -1 and "结算" in answer["err_msg"]
    assert await server.fetchval("SELECT status FROM encounters WHERE mdtrt_id = $1", stay) == (
        "open"
    )


async def test_undoing_a_discharged_admission_is_refused_as_2404_is(server: Server) -> None:
    """Found from outside: an empty discharged stay refused 2404 and took 2601 of its 2401."""
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    admit_msgid = his.msgid()
    out = await his.ok("2401", _admission_input(psn, "390", DAY), msgid=admit_msgid)
    stay = out["result"]["mdtrt_id"]
    await his.ok("2402", _discharge(stay, psn))
    for infno, data in (
        ("2404", {"data": {"mdtrt_id": stay, "psn_no": psn}}),
        ("2601", _reverse(psn, admit_msgid, "2401")),
    ):
        answer = await his.call(infno, data)
        assert answer["infcode"] == -1 and "2405" in answer["err_msg"], (infno, answer)
    assert await server.fetchval("SELECT status FROM encounters WHERE mdtrt_id = $1", stay) == (
        "discharged"
    )
    await his.ok("2405", {"data": {"mdtrt_id": stay, "psn_no": psn}})
    await his.ok("2601", _reverse(psn, admit_msgid, "2401"))


async def test_a_self_pay_admission_converts_only_under_its_own_insutype(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    stay = await _admission(his, psn, "390")
    # As the emergency plan's selfpay action admits it; then the person changes scheme.
    await server.fetch("UPDATE encounters SET selfpay = true WHERE mdtrt_id = $1", stay)
    await server.fetch("UPDATE persons SET insutype = '310' WHERE psn_no = $1", psn)
    conn = await asyncpg.connect(server.dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        with pytest.raises(Conflict, match="险种已由390变更为310"):
            await conversion.convert(conn, stay, operator="duty", reason="自费转医保")
        assert await conn.fetchval("SELECT selfpay FROM encounters WHERE mdtrt_id = $1", stay)
        await conn.execute("UPDATE persons SET insutype = '390' WHERE psn_no = $1", psn)
        assert await conversion.convert(conn, stay, operator="duty", reason="自费转医保") == psn
    finally:
        await conn.close()


async def test_a_self_pay_stays_refusal_tells_the_counter_to_settle_under_a_new_msgid(
    server: Server,
) -> None:
    """A refused settlement is its msgid's answer for good: found from outside, a self-pay
    stay's 2304 was told to convert first and, converted, the same msgid was told to convert
    again. The words now say to settle under a new msgid once converted."""
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    stay = await _admission(his, psn, "390")
    await server.fetch("UPDATE encounters SET selfpay = true WHERE mdtrt_id = $1", stay)
    rows = his.fee_rows(stay, psn, [_line("1", "500.00", "ZL0003")], FEE_TIME, "")
    await his.ok("2301", {"feedetail": rows})
    data = his.settle_data(psn, stay, "21", "500.00", "390", "0", mid_setl_flag="1")
    msgid = his.msgid()
    refused = await his.call("2304", data, msgid=msgid)
    assert refused["infcode"] == -1
    assert "自费转医保" in refused["err_msg"] and "新的报文ID" in refused["err_msg"]
    conn = await asyncpg.connect(server.dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        assert await conversion.convert(conn, stay, operator="duty", reason="自费转医保") == psn
    finally:
        await conn.close()
    assert await his.call("2304", data, msgid=msgid) == refused  # the msgid's answer
    settled = await his.ok("2304", data)
    assert settled["setlinfo"]["medfee_sumamt"] == 500


# --------------------------------------------------------------------------- dates


async def test_visits_dated_years_ahead_get_no_fresh_cap(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    await _visit(his, psn, "390", [_line("1", "1000.00")])
    before = await server.ledger_fingerprint()
    for ahead in ("2031-03-01 09:00:00", "2099-06-01 09:00:00"):
        answer = await his.call("2201", _registration(psn, "390", ahead))
        assert answer["infcode"] == -1
        assert ahead in answer["err_msg"] and "晚于当前时间" in answer["err_msg"]
        assert "begntime" in answer["err_msg"]
    assert await server.ledger_fingerprint() == before
    assert await _pool_in_force(server, psn) == Decimal("500.00")


async def test_future_dates_are_refused_everywhere(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, EMPLOYEE, balance_fen=10000)
    tomorrow = _at(dt.datetime.now() + dt.timedelta(days=1))
    answer = await his.call("2201", _registration(psn, "310", tomorrow))
    assert answer["infcode"] == -1 and "晚于当前时间" in answer["err_msg"]
    answer = await his.call("2401", _admission_input(psn, "310", tomorrow))
    assert answer["infcode"] == -1 and "入院时间" in answer["err_msg"]
    mdtrt_id = await his.register(psn, "310", DAY, f"MZ-UNDO-{next(_serial)}")
    rows = his.fee_rows(mdtrt_id, psn, [_line("7", "10.00")], tomorrow, "B1")
    answer = await his.call("2204", {"feedetail": rows})
    assert answer["infcode"] == -1
    assert "流水号7" in answer["err_msg"] and "fee_ocur_time" in answer["err_msg"]
    pos = server.client(PHARMACY)
    drugs = [_line("1", "19.80", "YP0007")]
    for infno in ("2101", "2102"):
        answer = await pos.call(infno, pos.drug_input(psn, tomorrow, "19.80", drugs, "1", "310"))
        assert answer["infcode"] == -1 and "晚于当前时间" in answer["err_msg"], infno
    stay = await _admission(his, psn, "310")
    answer = await his.call("2402", _discharge(stay, psn, tomorrow))
    assert answer["infcode"] == -1 and "出院时间" in answer["err_msg"]
    # Within the allowance for the counter's clock (10 minutes) a time just ahead is accepted.
    soon = _at(dt.datetime.now() + dt.timedelta(minutes=5))
    await his.register(psn, "310", soon, f"MZ-UNDO-{next(_serial)}")


async def test_dates_before_the_late_billing_bound_are_refused(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    year = dt.date.today().year
    too_old = f"{year - 3}-12-31 09:00:00"  # default bound: 1 January two years back
    answer = await his.call("2201", _registration(psn, "390", too_old))
    assert answer["infcode"] == -1
    assert "早于" in answer["err_msg"] and f"{year - 2}-01-01" in answer["err_msg"]
    answer = await his.call("2401", _admission_input(psn, "390", too_old))
    assert answer["infcode"] == -1 and "结算时限" in answer["err_msg"]
    pos = server.client(PHARMACY)
    drugs = [_line("1", "19.80", "YP0007")]
    answer = await pos.call("2102", pos.drug_input(psn, too_old, "19.80", drugs, "0", "390"))
    assert answer["infcode"] == -1 and "结算时限" in answer["err_msg"]
    # The bound itself is still within the window.
    await his.register(psn, "390", f"{year - 2}-01-01 00:00:00", f"MZ-UNDO-{next(_serial)}")


async def test_fee_lines_belong_to_their_visit(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    mdtrt_id = await his.register(psn, "390", DAY, f"MZ-UNDO-{next(_serial)}")
    day_before = _at(BASE - dt.timedelta(days=1))
    rows = his.fee_rows(mdtrt_id, psn, [_line("3", "10.00")], day_before, "B1")
    answer = await his.call("2204", {"feedetail": rows})
    assert answer["infcode"] == -1 and "早于挂号时间" in answer["err_msg"]
    # A bare date on the registration's day is the same day, not "before" it.
    rows = his.fee_rows(mdtrt_id, psn, [_line("3", "10.00")], BASE.date().isoformat(), "B1")
    await his.ok("2204", {"feedetail": rows})

    stay = await _admission(his, psn, "390")
    answer = await his.call("2402", _discharge(stay, psn, _at(BASE - dt.timedelta(hours=1))))
    assert (
        answer["infcode"] == -1
        and "早于入院时间" in answer["err_msg"]
        and "2403" in answer["err_msg"]
    )

    # A stay of two days ago, discharged that day: a charge dated the next day is not its own.
    # (Fee times are compared by date, so the stay starts early in its day: BASE late in the
    # evening would put the discharge past midnight and "the next day" on the discharge's day.)
    earlier = (BASE - dt.timedelta(days=2)).replace(hour=8, minute=0, second=0)
    stay = await _admission(his, psn, "390", _at(earlier))
    rows = his.fee_rows(stay, psn, [_line("1", "50.00", "ZL0003")], _at(earlier), "")
    await his.ok("2301", {"feedetail": rows})
    await his.ok("2402", _discharge(stay, psn, _at(earlier + dt.timedelta(hours=2))))
    next_day = _at(earlier + dt.timedelta(days=1))
    rows = his.fee_rows(stay, psn, [_line("2", "50.00", "ZL0003")], next_day, "")
    answer = await his.call("2301", {"feedetail": rows})
    assert answer["infcode"] == -1 and "晚于出院时间" in answer["err_msg"]
    # A refund line may still come after the discharge, before the closing settlement.
    refund = his.fee_rows(
        stay,
        psn,
        [{**_line("3", "-50.00", "ZL0003"), "pric": "50.00", "cnt": "-1", "init_feedetl_sn": "1"}],
        next_day,
        "",
    )
    await his.ok("2301", {"feedetail": refund})


async def test_discharge_before_an_uploaded_fee_line_is_refused(server: Server) -> None:
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    two_days_ago = BASE - dt.timedelta(days=2)
    stay = await _admission(his, psn, "390", _at(two_days_ago))
    rows = his.fee_rows(stay, psn, [_line("1", "50.00", "ZL0003")], FEE_TIME, "")
    await his.ok("2301", {"feedetail": rows})
    answer = await his.call(
        "2402", _discharge(stay, psn, _at(two_days_ago + dt.timedelta(hours=2)))
    )
    assert answer["infcode"] == -1 and "已上传费用明细" in answer["err_msg"]


async def test_ledger_balances_after_everything(server: Server) -> None:
    assert await server.check_ledger() == []


async def test_a_refund_line_is_priced_as_the_charge_it_takes_back(server: Server) -> None:
    """Found from outside: a refund line dated after a 3301 remapped its item (class A to class
    C) was split by the new class, so the class-A charge stayed in the fund's share while its
    refund came off the patient's self-pay; with no other self-pay line the stay could not be
    settled at all (a negative self-pay). A refund is resolved on its charge's fee date, at its
    upload and at the settlement."""
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    charged = (BASE - dt.timedelta(days=2)).replace(hour=8, minute=0, second=0)
    refunded = charged + dt.timedelta(days=1)
    item = f"TREF{next(_serial)}"

    def mapping(code: str, begndate: dt.date) -> dict[str, Any]:
        return {
            "data": {
                "fixmedins_hilist_id": item,
                "fixmedins_hilist_name": "退费测试药品",
                "list_type": "101",
                "med_list_codg": code,
                "begndate": begndate.isoformat(),
                "enddate": "2099-12-31",
            }
        }

    await his.ok("3301", mapping("XA10BAA020A001010100004", dt.date(2020, 1, 1)))  # class A
    stay = await _admission(his, psn, "390", _at(charged))
    rows = his.fee_rows(
        stay, psn, [_line("1", "500.00", item), _line("2", "1000.00", "ZL0003")], _at(charged), ""
    )
    await his.ok("2301", {"feedetail": rows})
    # From the next day the item maps to a class-C drug.
    await his.ok("3301", mapping("XS01XAA990A001010100010", refunded.date()))
    refund = his.fee_rows(
        stay,
        psn,
        [{**_line("3", "-500.00", item), "pric": "500.00", "cnt": "-1", "init_feedetl_sn": "1"}],
        _at(refunded),
        "",
    )
    (line,) = (await his.ok("2301", {"feedetail": refund}))["result"]
    assert line["chrgitm_lv"] == "01", line
    assert Decimal(str(line["inscp_scp_amt"])) == Decimal("-500.00")
    assert Decimal(str(line["fulamt_ownpay_amt"])) == Decimal("0.00")
    await his.ok("2402", _discharge(stay, psn, _at(refunded + dt.timedelta(hours=1))))
    data = his.settle_data(psn, stay, "21", "1000.00", "390", "0", mid_setl_flag="0")
    pre = (await his.ok("2303", data))["setlinfo"]
    settled = (await his.ok("2304", data))["setlinfo"]
    # The charge and its refund cancel out whole: what is left is the other line's split.
    alone = await _person(server, RESIDENT)
    other = await _admission(his, alone, "390", _at(charged))
    rows = his.fee_rows(other, alone, [_line("2", "1000.00", "ZL0003")], _at(charged), "")
    await his.ok("2301", {"feedetail": rows})
    await his.ok("2402", _discharge(other, alone, _at(refunded + dt.timedelta(hours=1))))
    expected = (
        await his.ok(
            "2303", his.settle_data(alone, other, "21", "1000.00", "390", "0", mid_setl_flag="0")
        )
    )["setlinfo"]
    for info in (pre, settled):
        for name in (
            "medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
            "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "psn_part_amt",
        ):  # fmt: skip
            assert Decimal(str(info[name])) == Decimal(str(expected[name])), name


SPLIT = ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt")


async def test_a_declared_split_the_lines_do_not_make_is_refused_saying_what_to_do(
    server: Server,
) -> None:
    """A 2207 whose declared split (as its 2206 answered, before a 3301 changed an item's
    mapping) is not what its lines make now is refused, nothing written, and the clerk is told
    to pre-settle again (found from outside: the words said only that the two differed)."""
    his = server.client(HOSPITAL)
    psn = await _person(server, EMPLOYEE, balance_fen=100_000)
    mdtrt_id = await his.register(psn, "310", DAY, f"MZ-SPLIT-{next(_serial)}")
    rows = his.fee_rows(mdtrt_id, psn, [_line("1", "40.00")], FEE_TIME, "B1")
    await his.ok("2204", {"feedetail": rows})
    base = his.settle_data(psn, mdtrt_id, "11", "40.00", "310", "1", chrg_bchno="B1")
    pre = (await his.ok("2206", base))["setlinfo"]
    declared = {
        **base["data"],
        "fulamt_ownpay_amt": str(pre["fulamt_ownpay_amt"]),
        "overlmt_selfpay": str(pre["overlmt_selfpay"]),
        "preselfpay_amt": f"{Decimal(str(pre['preselfpay_amt'])) + Decimal('1.00'):.2f}",
        "inscp_scp_amt": str(pre["inscp_scp_amt"]),
    }
    before = await server.fetchval("SELECT count(*) FROM settlements")
    answer = await his.call("2207", {"data": declared})
    assert answer["infcode"] == -1
    assert "与中心计算结果" in answer["err_msg"] and "请重新预结算" in answer["err_msg"]
    assert await server.fetchval("SELECT count(*) FROM settlements") == before


async def test_a_declared_split_left_at_zero_is_not_declared(server: Server) -> None:
    """Found from outside: a 2207 whose client leaves the four split fields at zero (it does
    not copy them from the 2206 answer) was refused as a split the lines do not make. Zeros
    on a bill of more than nothing cannot be a split (the four make the bill); they are read as
    not sent, and the settlement is the lines' own."""
    his = server.client(HOSPITAL)
    psn = await _person(server, EMPLOYEE, balance_fen=100_000)
    mdtrt_id = await his.register(psn, "310", DAY, f"MZ-ZERO-{next(_serial)}")
    rows = his.fee_rows(mdtrt_id, psn, [_line("1", "40.00")], FEE_TIME, "B1")
    await his.ok("2204", {"feedetail": rows})
    base = his.settle_data(psn, mdtrt_id, "11", "40.00", "310", "1", chrg_bchno="B1")
    pre = (await his.ok("2206", base))["setlinfo"]
    assert Decimal(str(pre["inscp_scp_amt"])) > 0  # zero is not what the lines make
    zeros = {name: "0.00" for name in SPLIT}
    # One of them sent apart from zero is a declaration, held against the lines.
    answer = await his.call("2206", {"data": {**base["data"], **zeros, "preselfpay_amt": "1.00"}})
    assert answer["infcode"] == -1 and "与中心计算结果" in answer["err_msg"], answer
    settled = (await his.ok("2207", {"data": {**base["data"], **zeros}}))["setlinfo"]
    for name in (*SPLIT, "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
        assert Decimal(str(settled[name])) == Decimal(str(pre[name])), name


async def test_a_stay_with_nothing_to_settle_is_told_in_a_stays_terms(server: Server) -> None:
    """Found from outside: a second 2304 on a settled stay was told to check its 收费批次号, an
    outpatient field a stay does not have. It is told the stay is settled and how to settle it
    again; a stay with no line uploaded is told to upload its lines (2301)."""
    his = server.client(HOSPITAL)
    psn = await _person(server, RESIDENT)
    mdtrt_id, _ = await _stay(his, psn, "390", "800.00")
    data = his.settle_data(psn, mdtrt_id, "21", "800.00", "390", "0", mid_setl_flag="0")
    before = await server.ledger_fingerprint()
    again = await his.call("2304", data)
    assert again["infcode"] == -1
    assert "已全部结算" in again["err_msg"] and "2305" in again["err_msg"]
    assert "结算信息请用5203查询" in again["err_msg"]  # where a lost answer's amounts are
    assert "收费批次" not in again["err_msg"]
    assert await server.ledger_fingerprint() == before
    other = await _person(server, RESIDENT)
    empty = await _admission(his, other, "390")
    await his.ok("2402", _discharge(empty, other))
    data = his.settle_data(other, empty, "21", "0.00", "390", "0", mid_setl_flag="0")
    nothing = await his.call("2304", data)
    assert nothing["infcode"] == -1
    assert "2301" in nothing["err_msg"] and "收费批次" not in nothing["err_msg"], nothing
