"""Outpatient and inpatient flows end to end over HTTP against PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.integration.conftest import Server
from tests.integration.his_client import amount_text

EMPLOYEE = "441800000000000003"  # civil servant, 3000.00 in the account
RETIREE = "441800000000000002"
HOSPITAL = "H44180000001"

LINES = [
    {
        "feedetl_sn": "1",
        "medins_list_codg": "ZL0001",
        "pric": "25",
        "cnt": "1",
        "det_item_fee_sumamt": "25.00",
    },
    {
        "feedetl_sn": "2",
        "medins_list_codg": "YP0003",
        "pric": "40",
        "cnt": "2",
        "det_item_fee_sumamt": "80.00",
    },
    {
        "feedetl_sn": "3",
        "medins_list_codg": "YP0010",
        "pric": "35",
        "cnt": "1",
        "det_item_fee_sumamt": "35.00",
    },
]


async def _state(server: Server, psn_no: str) -> dict[str, Any]:
    rows = await server.fetch(
        "SELECT a.balance_fen, to_jsonb(acc) - 'psn_no' AS acc FROM accounts a"
        " LEFT JOIN accumulators acc ON acc.psn_no = a.psn_no AND acc.year = 2026 WHERE a.psn_no = $1",
        psn_no,
    )
    return dict(rows[0])


async def test_outpatient_flow_and_refund_restores_everything(server: Server) -> None:
    his = server.client(HOSPITAL)
    before = await _state(server, EMPLOYEE)
    person = await his.ok(
        "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "441802198203033456"}}
    )
    assert person["baseinfo"]["psn_no"] == EMPLOYEE
    assert amount_text(person["insuinfo"][0]["balc"]) == "3000.00"
    signed = await his.ok(
        "9001", {"signIn": {"opter_no": "OP001", "mac": "00-11", "ip": "10.0.0.1"}}
    )
    assert signed["signinoutb"]["sign_no"]

    mdtrt_id = await his.register(EMPLOYEE, "310", "2026-03-01 08:30:00", "MZ-FLOW-1")
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", "2026-03-01 08:30:00")
    await his.ok(
        "2204", {"feedetail": his.fee_rows(mdtrt_id, EMPLOYEE, LINES, "2026-03-01 08:40:00", "B1")}
    )
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "140.00", "310", "1", chrg_bchno="B1")
    settled = (await his.ok("2207", data))["setlinfo"]
    assert amount_text(settled["medfee_sumamt"]) == "140.00"
    paid = Decimal(settled["acct_pay"])
    assert amount_text(settled["balc"]) == f"{Decimal('3000.00') - paid:.2f}"

    found = await his.ok("5203", {"data": {"psn_no": EMPLOYEE, "setl_id": settled["setl_id"]}})
    assert found["setlinfo"]["setl_id"] == settled["setl_id"]
    assert found["setlinfo"]["mdtrt_cert_type"] == settled["mdtrt_cert_type"] != ""

    # Refund: 2208 answers the amounts negated and puts the money back.
    cancel = {"data": {"setl_id": settled["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}}
    msgid = his.msgid()
    reversed_ = (await his.ok("2208", cancel, msgid=msgid))["setlinfo"]
    assert reversed_["medins_setl_id"] == msgid  # the cancellation's own (clients.md A1's 2208)
    # The certificate the settlement was made with (found from outside: "").
    assert reversed_["mdtrt_cert_type"] == settled["mdtrt_cert_type"] != ""
    for field in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay", "inscp_scp_amt"):
        assert Decimal(reversed_[field]) == -Decimal(settled[field]), field
    assert amount_text(reversed_["balc"]) == "3000.00"
    after = await _state(server, EMPLOYEE)
    assert after["balance_fen"] == before["balance_fen"]
    if after["acc"] is not None:
        assert all(v == 0 for k, v in after["acc"].items() if k != "year")

    # Cancelling twice is refused and changes nothing.
    again = await his.call("2208", cancel)
    assert again["infcode"] == -1 and "已撤销" in again["err_msg"]

    # The lines are unsettled again: 2205 removes them, 2202 cancels the registration.
    await his.ok("2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "0000", "psn_no": EMPLOYEE}})
    await his.ok(
        "2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE, "ipt_otp_no": "MZ-FLOW-1"}}
    )
    assert (
        await server.fetchval("SELECT status FROM encounters WHERE mdtrt_id = $1", mdtrt_id)
        == "cancelled"
    )
    await his.ok(
        "9002", {"signOut": {"sign_no": signed["signinoutb"]["sign_no"], "opter_no": "OP001"}}
    )


async def test_inpatient_flow_with_midway_settlement(server: Server) -> None:
    his = server.client(HOSPITAL)
    admitted = await his.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": RETIREE,
                "insutype": "310",
                "begntime": "2026-04-01 10:00:00",
                "mdtrt_cert_type": "01",
                "mdtrt_cert_no": RETIREE,
                "med_type": "21",
                "ipt_no": "ZY-FLOW-1",
                "atddr_no": "D1",
                "chfpdr_name": "医生",
                "adm_diag_dscr": "肺炎",
                "adm_dept_codg": "K1",
                "adm_dept_name": "内科",
                "adm_bed": "3",
                "dscg_maindiag_code": "J18",
                "dscg_maindiag_name": "肺炎",
            },
            "diseinfo": [],
        },
    )
    mdtrt_id = admitted["result"]["mdtrt_id"]
    first = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "ZL0003",
            "pric": "60",
            "cnt": "10",
            "det_item_fee_sumamt": "600.00",
        },
        {
            "feedetl_sn": "2",
            "medins_list_codg": "ZL0008",
            "pric": "20",
            "cnt": "20",
            "det_item_fee_sumamt": "400.00",
        },
    ]
    await his.ok(
        "2301", {"feedetail": his.fee_rows(mdtrt_id, RETIREE, first, "2026-04-02 10:00:00", "")}
    )
    # Final settlement before discharge is refused; a mid-way settlement is allowed.
    refused = await his.call(
        "2304", his.settle_data(RETIREE, mdtrt_id, "21", "1000.00", "310", "0", mid_setl_flag="0")
    )
    assert refused["infcode"] == -1 and "出院" in refused["err_msg"]
    mid = (
        await his.ok(
            "2304",
            his.settle_data(RETIREE, mdtrt_id, "21", "1000.00", "310", "0", mid_setl_flag="1"),
        )
    )["setlinfo"]
    dedc_first = Decimal(mid["act_pay_dedc"])
    assert dedc_first > 0
    # A settled line's serial number sent again is refused by name (found from outside: the
    # clerk was told a line was uploaded twice, not which).
    again = await his.call(
        "2301", {"feedetail": his.fee_rows(mdtrt_id, RETIREE, first[1:], "2026-04-02 10:00:00", "")}
    )
    assert again["err_msg"] == (
        f"费用明细流水号{first[1]['feedetl_sn']}已上传，请勿重复上传（如需修改请先撤销）"
    ), again
    # A line settled mid-way is not withdrawn, and the clerk is told what to do instead (found
    # from outside: "不存在或已结算" said neither which nor what next).
    settled_line = {"data": {"feedetl_sn": "1", "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    kept = await his.call("2302", settled_line)
    assert kept["infcode"] == -1 and f"已结算（结算ID{mid['setl_id']}）" in kept["err_msg"], kept
    assert "init_feedetl_sn填1" in kept["err_msg"] and "2305" in kept["err_msg"]
    # A refund line (negative cnt) and a new charge, then discharge and the final settlement.
    second = [
        {
            "feedetl_sn": "3",
            "init_feedetl_sn": "2",
            "medins_list_codg": "ZL0008",
            "pric": "20",
            "cnt": "-5",
            "det_item_fee_sumamt": "-100.00",
        },
        {
            "feedetl_sn": "4",
            "medins_list_codg": "ZL0004",
            "pric": "30",
            "cnt": "10",
            "det_item_fee_sumamt": "300.00",
        },
    ]
    result = await his.ok(
        "2301", {"feedetail": his.fee_rows(mdtrt_id, RETIREE, second, "2026-04-05 10:00:00", "")}
    )
    assert amount_text(result["result"][0]["inscp_scp_amt"]) == "-100.00"
    await his.ok(
        "2402",
        {
            "dscginfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": RETIREE,
                "insutype": "310",
                "endtime": "2026-04-06 10:00:00",
                "dscg_dept_codg": "K1",
                "dscg_dept_name": "内科",
                "dscg_way": "1",
            },
            "diseinfo": [],
        },
    )
    final = (
        await his.ok(
            "2304",
            his.settle_data(RETIREE, mdtrt_id, "21", "200.00", "310", "0", mid_setl_flag="0"),
        )
    )["setlinfo"]
    # Mid-way settlements share the admission's deductible: the total taken is the level's once.
    total_dedc = dedc_first + Decimal(final["act_pay_dedc"])
    assert total_dedc <= Decimal("900.00")
    assert await server.fetchval(
        "SELECT adm_dedc_used_fen FROM encounters WHERE mdtrt_id = $1", mdtrt_id
    ) == int(total_dedc * 100)
    # The closing settlement ends the stay: a late charge, or a refund, is refused naming it
    # until it is cancelled (found from outside: taken, and a second closing 2304 settled it).
    late = [dict(second[1], feedetl_sn="5", det_item_fee_sumamt="30.00", cnt="1")]
    refund = [dict(second[0], feedetl_sn="6", init_feedetl_sn="4", cnt="-1")]
    refund[0]["det_item_fee_sumamt"] = "-20.00"
    before = await server.ledger_fingerprint()
    for lines in (late, refund):
        rows = his.fee_rows(mdtrt_id, RETIREE, lines, "2026-04-06 09:00:00", "")
        closed = await his.call("2301", {"feedetail": rows})
        assert closed["infcode"] == -1 and final["setl_id"] in closed["err_msg"], closed
        assert "请先撤销该结算（2305）" in closed["err_msg"]
    # Nor is its mid-way settlement cancelled on its own, by 2305 or a 2601 of its 2304 (found
    # from outside: its lines, released, were settled by a second closing settlement).
    midway = {"data": {"setl_id": mid["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    first_closing = await his.call("2305", midway)
    assert first_closing["infcode"] == -1 and final["setl_id"] in first_closing["err_msg"]
    assert "请先撤销出院结算（2305）" in first_closing["err_msg"], first_closing
    assert await server.ledger_fingerprint() == before
    # 2405 is refused while the final settlement stands; after 2305 it works.
    blocked = await his.call("2405", {"data": {"mdtrt_id": mdtrt_id, "psn_no": RETIREE}})
    assert blocked["infcode"] == -1
    # 2404 of the settled stay names the steps back in their order (found from outside: it
    # said only that the patient was discharged).
    visit = {"data": {"mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    settled = await his.call("2404", visit)
    assert settled["infcode"] == -1 and settled["err_msg"] == (
        f"就诊ID{mdtrt_id}已出院结算，不能撤销入院；请先撤销结算（2305），再撤销出院（2405）"
    ), settled
    await his.ok(
        "2305", {"data": {"setl_id": final["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    )
    discharged = await his.call("2404", visit)
    assert discharged["err_msg"] == f"就诊ID{mdtrt_id}已出院，不能撤销入院；请先撤销出院（2405）"
    # Cancelled, the stay takes the late charge again (its closing settlement settles it).
    rows = his.fee_rows(mdtrt_id, RETIREE, late, "2026-04-06 09:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    await his.ok("2302", {"data": {"feedetl_sn": "5", "mdtrt_id": mdtrt_id, "psn_no": RETIREE}})
    await his.ok("2405", {"data": {"mdtrt_id": mdtrt_id, "psn_no": RETIREE}})
    await his.ok(
        "2305", {"data": {"setl_id": mid["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    )
    # All settlements cancelled: the admission's deductible is forgotten.
    row = (
        await server.fetch(
            "SELECT adm_dedc_fen, adm_dedc_used_fen FROM encounters WHERE mdtrt_id = $1", mdtrt_id
        )
    )[0]
    assert row["adm_dedc_fen"] is None and row["adm_dedc_used_fen"] == 0
    await his.ok("2302", {"data": {"feedetl_sn": "0000", "mdtrt_id": mdtrt_id, "psn_no": RETIREE}})
    await his.ok("2404", {"data": {"mdtrt_id": mdtrt_id, "psn_no": RETIREE}})


async def test_pharmacy_settle_and_cancel(server: Server) -> None:
    pos = server.client("P44180000001")
    employee = "441800000000000001"
    lines = [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "YP0007",
            "pric": "9.9",
            "cnt": "2",
            "det_item_fee_sumamt": "19.80",
        }
    ]
    before = await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", employee)
    drug = pos.drug_input(employee, "2026-05-05 12:00:00", "19.80", lines)
    pre = await pos.ok("2101", drug)
    out = await pos.ok("2102", drug)
    assert pre["setlinfo"]["acct_pay"] == out["setlinfo"]["acct_pay"]
    assert "hosp_part_amt" not in out["setlinfo"]
    assert len(out["detlcutinfo"]) == 1 and "lmt_used_flag" not in out["detlcutinfo"][0]
    info = out["setlinfo"]
    cancelled = (
        await pos.ok(
            "2103",
            {
                "data": {
                    "setl_id": info["setl_id"],
                    "mdtrt_id": info["mdtrt_id"],
                    "psn_no": employee,
                }
            },
        )
    )["setlinfo"]
    assert Decimal(cancelled["psn_pay"]) == -Decimal(info["psn_part_amt"])
    assert Decimal(cancelled["cash_payamt"]) == -Decimal(info["psn_cash_pay"])
    assert (
        await server.fetchval("SELECT balance_fen FROM accounts WHERE psn_no = $1", employee)
        == before
    )
    again = await pos.call(
        "2103",
        {"data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": employee}},
    )
    assert again["infcode"] == -1


async def test_guangdong_path_endpoint(server: Server) -> None:
    his = server.client(HOSPITAL)
    import msgspec

    env = his.envelope(
        "1101",
        {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "QY0000000001", "card_sn": "S1"}},
    )
    del env["infno"]
    status, body = await his.post_raw(msgspec.json.encode(env), "/hsa/hgs/1101")
    assert status == 200
    assert msgspec.json.decode(body)["output"]["baseinfo"]["psn_no"] == "441800000000000001"
    async with server.session.get(server.url + "/livez") as r:
        assert r.status == 200
    async with server.session.get(server.url + "/readyz") as r:
        assert r.status == 200 and (await r.json())["database"] == "ok"


async def test_ledger_balances_after_the_flows(server: Server) -> None:
    assert await server.check_ledger() == []


async def test_no_visits_id_is_a_settlements_id(server: Server) -> None:
    """Found from outside: a stay's mdtrt_id was also the setl_id of an unrelated settlement
    (two sequences, one way of writing them). Visits take odd serials, settlements even."""
    pos = server.client("P44180000001")
    lines = [{"feedetl_sn": "1", "medins_list_codg": "YP0007", "pric": "9.9", "cnt": "1",
              "det_item_fee_sumamt": "9.90"}]  # fmt: skip
    for _ in range(3):
        drug = pos.drug_input("441800000000000001", "2026-05-06 12:00:00", "9.90", lines)
        await pos.ok("2102", drug)
    visits = {r[0] for r in await server.fetch("SELECT mdtrt_id FROM encounters")}
    settlements = {r[0] for r in await server.fetch("SELECT setl_id FROM settlements")}
    assert len(visits) >= 3 and len(settlements) >= 3
    assert not visits & settlements
    assert all(int(v[-12:]) % 2 == 1 for v in visits), visits
    assert all(int(s[-12:]) % 2 == 0 for s in settlements), settlements
