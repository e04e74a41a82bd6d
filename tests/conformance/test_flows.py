"""Whole flows replayed in each client lineage's request shapes (shapes_*.py) against a real
gateway over HTTP. Every answer: infcode 0, the fields the lineage reads with the type it parses
them into, the identities of settlement-rules §6 (I1–I4 on settlements, L1 on lines), and
cancellations exactly the negation of what they cancel."""

from __future__ import annotations

import base64
import datetime as dt
import io
import zipfile
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from tests.conformance import (
    shapes_binzhe,
    shapes_dongguan,
    shapes_hos244,
    shapes_hsahis,
    shapes_iborn,
    shapes_nhisweb,
    shapes_openhis,
    shapes_teahz,
    shapes_yibin,
)
from tests.conformance.shapes import (
    BIGDEC,
    DATETIME,
    DEC,
    DEC_NULL,
    GO_STRING,
    INT,
    SETLINFO_AMOUNTS,
    TEXT,
    Shape,
)
from tests.integration.conftest import Server
from tests.integration.his_client import CALL_SERVICE, HisClient, decode

pytestmark = pytest.mark.integration

SHAPES = [
    shapes_openhis.SHAPE,
    shapes_teahz.SHAPE,
    shapes_binzhe.SHAPE,
    shapes_yibin.SHAPE,
    shapes_dongguan.SHAPE,
    shapes_hsahis.SHAPE,
    shapes_nhisweb.SHAPE,
    shapes_iborn.SHAPE,
    shapes_hos244.SHAPE,
]
_encode = msgspec.json.Encoder(decimal_format="number").encode
DAY = dt.date.today() - dt.timedelta(days=1)


def lineages(flow: str) -> list[Any]:
    return [pytest.param(s, id=s.name) for s in SHAPES if flow in s.flows]


def at(hhmm: str) -> str:
    return f"{DAY:%Y-%m-%d} {hhmm}:00"


def dec(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(value)


class Client:
    """A lineage's HIS: its envelope, its amounts, its extras; checks what it reads."""

    def __init__(self, server: Server, shape: Shape, fixmedins_code: str | None = None) -> None:
        self.shape = shape
        self.server = server
        self.his = HisClient(
            server.session, server.url, fixmedins_code or shape.hospital, shape.region
        )
        self.last_msgid = ""

    async def call(self, infno: str, input_: Any) -> dict[str, Any]:
        env = self.his.envelope(self.shape.code(infno), input_)
        env.update(self.shape.envelope)
        if self.shape.input_as_string:
            env["input"] = _encode(input_).decode()
        self.last_msgid = env["msgid"]
        path = f"/hsa/hgs/{env['infno']}" if self.shape.path_per_infno else CALL_SERVICE
        status, raw = await self.his.post_raw(_encode(env), path)
        assert status == 200, raw
        return decode(raw)

    async def ok(self, infno: str, input_: Any) -> dict[str, Any]:
        answer = await self.call(infno, input_)
        assert answer["infcode"] == 0, (self.shape.name, infno, answer["err_msg"])
        # Empty on success: the Hubei clients (yinhai yh_hb_call's callers, e.g. the sibling
        # files of `UserInfoResponseModel`) show any non-empty err_msg as an error and stop,
        # as `string.IsNullOrEmpty(yBResponse.err_msg)` reads it (found from outside: "成功").
        assert not answer["err_msg"], (self.shape.name, infno, answer["err_msg"])
        output = answer["output"]
        for node, fields in self.shape.reads.get(infno, {}).items():
            if node == "":  # the output node itself (13xx paged answers)
                rows = [output]
            else:
                rows = output[node[:-2]] if node.endswith("[]") else [output[node]]
            assert isinstance(rows, list) and rows, (infno, node)
            for row in rows:
                for name, kind in fields.items():
                    assert name in row, (self.shape.name, infno, node, name)
                    _parses(row[name], kind, f"{infno} {node}.{name}")
        assert isinstance(output, dict)
        return output

    def amt(self, text: str) -> Any:
        return self.shape.amount(text)


def _parses(value: Any, kind: str, where: str) -> None:
    number = isinstance(value, (Decimal, int)) and not isinstance(value, bool)
    if kind == DEC:
        assert number, (where, value)
    elif kind == DEC_NULL:
        assert value is None or number, (where, value)
    elif kind == TEXT:
        # Newtonsoft reads any primitive (true -> "True") into a string property.
        assert value is None or isinstance(value, (str, bool)) or number, (where, value)
    elif kind == INT:
        assert isinstance(value, int) and not isinstance(value, bool), (where, value)
    elif kind == BIGDEC:
        exponent = value.as_tuple().exponent if isinstance(value, Decimal) else 0
        assert isinstance(exponent, int) and exponent < 0, (where, value)
    elif kind == GO_STRING:
        assert isinstance(value, str), (where, value)
    elif kind == DATETIME:
        assert isinstance(value, str), (where, value)
        dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    else:
        raise AssertionError(f"unknown kind {kind} at {where}")


def identities(info: dict[str, Any]) -> None:
    """I1–I4 (settlement-rules §6, clients.md legend); exact, the gateway answers in fen."""
    medfee = dec(info["medfee_sumamt"])
    assert dec(info["inscp_scp_amt"]) == medfee - dec(info["fulamt_ownpay_amt"]) - dec(
        info["overlmt_selfpay"]
    ) - dec(info["preselfpay_amt"]), info
    fund = dec(info["fund_pay_sumamt"])
    assert medfee == fund + dec(info["psn_part_amt"]) + dec(info.get("hosp_part_amt")), info
    assert dec(info["psn_part_amt"]) == dec(info["acct_pay"]) + dec(info["psn_cash_pay"]), info
    layers = (
        "hifp_pay",
        "cvlserv_pay",
        "hifes_pay",
        "hifmi_pay",
        "hifob_pay",
        "maf_pay",
        "oth_pay",
    )
    assert fund == sum(dec(info[k]) for k in layers) + dec(info.get("hifdm_pay")), info


def line_identity(row: dict[str, Any]) -> None:
    """L1."""
    assert dec(row["inscp_scp_amt"]) == dec(row["det_item_fee_sumamt"]) - dec(
        row["fulamt_ownpay_amt"]
    ) - dec(row["overlmt_amt"]) - dec(row["preselfpay_amt"]), row


def negation(cancel: dict[str, Any], original: dict[str, Any]) -> None:
    for name in (*SETLINFO_AMOUNTS, "hosp_part_amt"):
        if name in original:
            assert dec(cancel[name]) == -dec(original[name]), name
    assert cancel["setl_id"] == original["setl_id"]
    identities(cancel)


def split_of(results: list[dict[str, Any]]) -> dict[str, Decimal]:
    """What a HIS sums from the upload's answered lines into 2207/2304's split fields."""
    return {
        "fulamt_ownpay_amt": sum((dec(r["fulamt_ownpay_amt"]) for r in results), Decimal(0)),
        "overlmt_selfpay": sum((dec(r["overlmt_amt"]) for r in results), Decimal(0)),
        "preselfpay_amt": sum((dec(r["preselfpay_amt"]) for r in results), Decimal(0)),
        "inscp_scp_amt": sum((dec(r["inscp_scp_amt"]) for r in results), Decimal(0)),
    }


def fee_rows(
    c: Client, mdtrt_id: str, lines: list[tuple[str, str, str, str]], when: str, batch: str | None
) -> list[dict[str, Any]]:
    s = c.shape
    rows = []
    for sn, code, pric, cnt in lines:
        total = (Decimal(pric) * Decimal(cnt)).quantize(Decimal("0.01"))
        row: dict[str, Any] = {
            "feedetl_sn": sn, "mdtrt_id": mdtrt_id, "psn_no": s.psn_no, "rx_circ_flag": "0",
            "fee_ocur_time": when, "med_list_codg": "", "medins_list_codg": code,
            "det_item_fee_sumamt": s.line_amount(f"{total}"), "cnt": s.line_amount(cnt),
            "pric": s.line_amount(pric), "bilg_dept_codg": "K01", "bilg_dept_name": "内科",
            "bilg_dr_codg": "D001", "bilg_dr_name": "医生", "hosp_appr_flag": "1",
            **s.extra("feedetail"),
        }  # fmt: skip
        if batch is not None:
            row["chrg_bchno"] = batch
        rows.append(row)
    return rows


def settle_data(c: Client, mdtrt_id: str, medfee: Decimal, **more: Any) -> dict[str, Any]:
    s = c.shape
    return {
        "data": {
            "psn_no": s.psn_no, "mdtrt_cert_type": "02", "mdtrt_cert_no": s.certno,
            "medfee_sumamt": c.amt(f"{medfee:.2f}"), "psn_setlway": "01", "mdtrt_id": mdtrt_id,
            "insutype": s.insutype, "acct_used_flag": "1", **more, **s.extra("settle"),
        }
    }  # fmt: skip


def with_split(c: Client, data: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    if c.shape.split_amount is not None:
        for name, value in split_of(results).items():
            data["data"][name] = c.shape.split_amount(f"{value:.2f}")
    return data


@pytest.mark.parametrize("shape", lineages("signin"))
async def test_sign_in_person_and_sign_out(server: Server, shape: Shape) -> None:
    c = Client(server, shape)
    signed = (
        await c.ok(
            "9001", {"signIn": {"opter_no": "OP001", "mac": "00-16-3E-00-00-01", "ip": "10.0.0.8"}}
        )
    )["signinoutb"]
    assert isinstance(signed["sign_no"], str) and isinstance(signed["sign_time"], str)
    data = {
        "mdtrt_cert_type": "02",
        "mdtrt_cert_no": shape.certno,
        "card_sn": "",
        "begntime": "",
        "psn_cert_type": "",
        "certno": "",
        "psn_name": "",
        **shape.extra("data"),
    }
    person = await c.ok("1101", {"data": data})
    assert person["baseinfo"]["psn_no"] == shape.psn_no
    assert all(isinstance(row["balc"], Decimal) for row in person["insuinfo"])
    assert isinstance(person["idetinfo"], list)
    await c.ok("9002", {"signOut": {"sign_no": signed["sign_no"], "opter_no": "OP001"}})


async def _outpatient(c: Client, tag: str) -> tuple[str, dict[str, Any]]:
    s = c.shape
    reg = {
        "psn_no": s.psn_no, "insutype": s.insutype, "begntime": at("08:00"), "mdtrt_cert_type": "02",
        "mdtrt_cert_no": s.certno, "ipt_otp_no": f"MZ{tag}{s.name}", "atddr_no": "D001",
        "dr_name": "医生", "dept_code": "K01", "dept_name": "内科", "caty": "A03", **s.extra("data"),
    }  # fmt: skip
    mdtrt_id = (await c.ok("2201", {"data": reg}))["data"]["mdtrt_id"]
    assert isinstance(mdtrt_id, str)
    info = {
        "mdtrt_id": mdtrt_id,
        "psn_no": s.psn_no,
        "med_type": "11",
        "begntime": at("08:00"),
        "main_cond_dscr": "",
        "dise_codg": "",
        "dise_name": "",
        **s.extra("mdtrtinfo"),
    }
    dise = [
        {
            "diag_type": "1",
            "diag_srt_no": s.ordinal(1),
            "diag_code": "J06.900",
            "diag_name": "上呼吸道感染",
            "diag_dept": "内科",
            "dise_dor_no": "D001",
            "dise_dor_name": "医生",
            "diag_time": at("08:05"),
            "vali_flag": "1",
        }
    ]
    assert await c.ok("2203", {"mdtrtinfo": info, "diseinfo": dise}) == {}
    lines = [("1", "ZL0001", "25", "1"), ("2", "YP0003", "40", "2"), ("3", "YP0010", "35", "1")]
    results = (await c.ok("2204", {"feedetail": fee_rows(c, mdtrt_id, lines, at("08:10"), "B1")}))[
        "result"
    ]
    for row in results:
        line_identity(row)
    medfee = sum((dec(r["det_item_fee_sumamt"]) for r in results), Decimal(0))
    assert medfee == Decimal("140.00")
    data = settle_data(c, mdtrt_id, medfee, med_type="11", chrg_bchno="B1")
    pre = (await c.ok("2206", data))["setlinfo"]
    assert pre["setl_id"] is None and pre["setl_time"] is None and pre["clr_optins"] is None
    # Only those four (and clr_way) are null in a pre-settlement (protocol.md §2.3): the clearing
    # category is known, and a real centre's 2206 answers it (Hebei's sample: "11").
    assert pre["clr_type"] == "11"
    identities(pre)
    data["data"]["invono"] = f"FP{tag}"
    settled = (await c.ok("2207", with_split(c, data, results)))["setlinfo"]
    identities(settled)
    assert isinstance(settled["setl_id"], str) and settled["medins_setl_id"]
    for name in SETLINFO_AMOUNTS:
        assert dec(settled[name]) == dec(pre[name]), name
    return mdtrt_id, settled


@pytest.mark.parametrize("shape", lineages("outpatient"))
async def test_outpatient_visit_and_its_cancellation(server: Server, shape: Shape) -> None:
    c = Client(server, shape)
    mdtrt_id, settled = await _outpatient(c, "A")
    found = (
        await c.ok(
            "5203",
            {"data": {"psn_no": shape.psn_no, "setl_id": settled["setl_id"], "mdtrt_id": mdtrt_id}},
        )
    )["setlinfo"]
    assert found["setl_id"] == settled["setl_id"]
    cancelled = await c.ok(
        "2208",
        {
            "data": {
                "setl_id": settled["setl_id"],
                "mdtrt_id": mdtrt_id,
                "psn_no": shape.psn_no,
                **shape.extra("data"),
            }
        },
    )
    negation(cancelled["setlinfo"], settled)
    assert dec(cancelled["setlinfo"]["pdn_cash_pay"]) == dec(cancelled["setlinfo"]["psn_cash_pay"])
    assert (
        await c.ok(
            "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "0000", "psn_no": shape.psn_no}}
        )
        == {}
    )
    assert (
        await c.ok(
            "2202",
            {
                "data": {
                    "psn_no": shape.psn_no,
                    "mdtrt_id": mdtrt_id,
                    "ipt_otp_no": f"MZA{shape.name}",
                }
            },
        )
        == {}
    )


@pytest.mark.parametrize("shape", lineages("reversal"))
async def test_reversal_of_an_outpatient_settlement(server: Server, shape: Shape) -> None:
    c = Client(server, shape)
    _, settled = await _outpatient(c, "R")
    assert (
        await c.ok(
            "2601",
            {
                "data": {
                    "psn_no": shape.psn_no,
                    "omsgid": settled["medins_setl_id"],
                    "oinfno": shape.code("2207"),
                }
            },
        )
        == {}
    )
    status = await c.server.fetchval(
        "SELECT status FROM settlements WHERE setl_id = $1", settled["setl_id"]
    )
    assert status != "settled"


@pytest.mark.parametrize("shape", lineages("inpatient"))
async def test_inpatient_stay_midway_final_and_cancellation(server: Server, shape: Shape) -> None:
    c = Client(server, shape)
    s = shape
    adm = {
        "psn_no": s.psn_no, "insutype": s.insutype, "coner_name": "", "tel": "",
        "begntime": at("07:00"), "mdtrt_cert_type": "02", "mdtrt_cert_no": s.certno,
        "med_type": "21", "ipt_no": f"ZY{s.name}", "medrcdno": "", "atddr_no": "D01",
        "chfpdr_name": "主治医师", "adm_diag_dscr": "肺炎", "adm_dept_codg": "K02",
        "adm_dept_name": "呼吸科", "adm_bed": "12", "dscg_maindiag_code": "J18.900",
        "dscg_maindiag_name": "肺炎", "main_cond_dscr": "", "dise_codg": "", "dise_name": "",
        **s.extra("mdtrtinfo"),
    }  # fmt: skip
    mdtrt_id = (await c.ok("2401", {"mdtrtinfo": adm, "diseinfo": []}))["result"]["mdtrt_id"]
    first = (
        await c.ok(
            "2301",
            {
                "feedetail": fee_rows(
                    c,
                    mdtrt_id,
                    [("1", "ZL0003", "60", "3"), ("2", "ZL0008", "20", "2")],
                    at("08:00"),
                    None,
                )
            },
        )
    )["result"]
    for row in first:
        line_identity(row)
    # 2303/2304 as the interface defines them: no med_type (the admission's applies).
    mid_data = with_split(
        c, settle_data(c, mdtrt_id, Decimal("220.00"), mid_setl_flag="1", invono=""), first
    )
    identities((await c.ok("2303", mid_data))["setlinfo"])
    mid = (await c.ok("2304", mid_data))["setlinfo"]
    identities(mid)
    assert mid["med_type"] == "21"
    refund = fee_rows(
        c, mdtrt_id, [("3", "ZL0008", "20", "-1"), ("4", "ZL0004", "30", "2")], at("09:00"), None
    )
    refund[0]["init_feedetl_sn"] = "2"
    second = (await c.ok("2301", {"feedetail": refund}))["result"]
    for row in second:
        line_identity(row)
    dscg = {
        "mdtrt_id": mdtrt_id,
        "psn_no": s.psn_no,
        "insutype": s.insutype,
        "endtime": at("10:00"),
        "dise_codg": "",
        "dise_name": "",
        "dscg_dept_codg": "K02",
        "dscg_dept_name": "呼吸科",
        "dscg_way": "1",
    }
    dise = {
        "mdtrt_id": mdtrt_id, "psn_no": s.psn_no, "diag_type": "1", "maindiag_flag": "1",
        "diag_srt_no": s.ordinal(1), "diag_code": "J18.900", "diag_name": "肺炎",
        "diag_dept": "呼吸科", "dise_dor_no": "D001", "dise_dor_name": "医生",
        "diag_time": at("10:00"),
    }  # fmt: skip
    assert await c.ok("2402", {"dscginfo": dscg, "diseinfo": [dise]}) == {}
    final_data = with_split(
        c, settle_data(c, mdtrt_id, Decimal("40.00"), mid_setl_flag="0", invono=""), second
    )
    identities((await c.ok("2303", final_data))["setlinfo"])
    final = (await c.ok("2304", final_data))["setlinfo"]
    identities(final)
    ref = {"mdtrt_id": mdtrt_id, "psn_no": s.psn_no}
    negation(
        (await c.ok("2305", {"data": {**ref, "setl_id": final["setl_id"]}}))["setlinfo"], final
    )
    assert await c.ok("2405", {"data": ref}) == {}
    negation((await c.ok("2305", {"data": {**ref, "setl_id": mid["setl_id"]}}))["setlinfo"], mid)
    assert await c.ok("2302", {"data": [{**ref, "feedetl_sn": "0000"}]}) == {}
    assert await c.ok("2404", {"data": ref}) == {}


@pytest.mark.parametrize("shape", lineages("pharmacy"))
async def test_pharmacy_purchase_cancellation_and_reversal(server: Server, shape: Shape) -> None:
    assert shape.pharmacy is not None
    c = Client(server, shape, shape.pharmacy)
    info = {
        "psn_no": shape.psn_no,
        "mdtrt_cert_type": "02",
        "mdtrt_cert_no": shape.certno,
        "begntime": at("11:00"),
        "medfee_sumamt": c.amt("19.80"),
        "insutype": shape.insutype,
        "dise_codg": "",
        "dise_name": "",
        "acct_used_flag": "1",
        "med_type": "41",
        **shape.extra("druginfo"),
    }
    detail = [
        {
            "feedetl_sn": "1",
            "rxno": "",
            "rx_circ_flag": "0",
            "fee_ocur_time": at("11:00"),
            "med_list_codg": "",
            "medins_list_codg": "YP0007",
            "det_item_fee_sumamt": shape.line_amount("19.80"),
            "cnt": shape.line_amount("2"),
            "pric": shape.line_amount("9.9"),
            "sin_dos_dscr": "",
            "used_frqu_dscr": "",
            "prd_days": shape.line_amount("3"),
            "medc_way_dscr": "",
            "bilg_dr_codg": "D001",
            "bilg_dr_name": "医生",
            "tcmdrug_used_way": "",
        }
    ]
    pre = await c.ok("2101", {"druginfo": info, "drugdetail": detail})
    identities(pre["setlinfo"])
    for row in pre["detlcutinfo"]:
        line_identity(row)
    out = await c.ok("2102", {"druginfo": {**info, "invono": "FP1"}, "drugdetail": detail})
    settled = out["setlinfo"]
    identities(settled)
    cancel = (
        await c.ok(
            "2103",
            {
                "data": {
                    "setl_id": settled["setl_id"],
                    "mdtrt_id": settled["mdtrt_id"],
                    "psn_no": shape.psn_no,
                    **shape.extra("data"),
                }
            },
        )
    )["setlinfo"]
    for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "inscp_scp_amt", "hifp_pay"):
        assert dec(cancel[name]) == -dec(settled[name]), name
    assert dec(cancel["psn_pay"]) == -dec(settled["psn_part_amt"])
    assert dec(cancel["cash_payamt"]) == -dec(settled["psn_cash_pay"])
    again = (
        await c.ok(
            "2102",
            {
                "druginfo": {**info, "invono": "FP2"},
                "drugdetail": [{**detail[0], "feedetl_sn": "2"}],
            },
        )
    )["setlinfo"]
    assert (
        await c.ok(
            "2601",
            {"data": {"psn_no": shape.psn_no, "omsgid": again["medins_setl_id"], "oinfno": "2102"}},
        )
        == {}
    )
    assert (
        await c.server.fetchval(
            "SELECT status FROM settlements WHERE setl_id = $1", again["setl_id"]
        )
        != "settled"
    )


@pytest.mark.parametrize("shape", lineages("dayend"))
async def test_day_end_reconciliation(server: Server, shape: Shape) -> None:
    c = Client(server, shape)
    mdtrt_id, settled = await _outpatient(c, "D")
    today = dt.date.today()
    period = {
        "setl_optins": settled["clr_optins"],
        "stmt_begndate": f"{DAY:%Y-%m-%d}",
        "stmt_enddate": f"{today:%Y-%m-%d}",
    }
    total = {
        "insutype": shape.insutype,
        "clr_type": "11",
        **period,
        "medfee_sumamt": c.amt(f"{dec(settled['medfee_sumamt']):.2f}"),
        "fund_pay_sumamt": c.amt(f"{dec(settled['fund_pay_sumamt']):.2f}"),
        "acct_pay": c.amt(f"{dec(settled['acct_pay']):.2f}"),
        "fixmedins_setl_cnt": 1,
        "refd_setl_flag": "0",
    }
    stmt = (await c.ok("3201", {"data": total}))["stmtinfo"]
    assert stmt["stmt_rslt"] == "0", stmt
    row = "\t".join(
        [
            settled["setl_id"],
            mdtrt_id,
            shape.psn_no,
            f"{dec(settled['medfee_sumamt']):.2f}",
            f"{dec(settled['fund_pay_sumamt']):.2f}",
            f"{dec(settled['acct_pay']):.2f}",
            "0",
        ]
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scmxdz.txt", row + "\n")
    up = await c.ok(
        "9101",
        {
            "fsUploadIn": {
                "in": base64.b64encode(buf.getvalue()).decode(),
                "filename": "scmxdz.zip",
                "fixmedins_code": shape.hospital,
            }
        },
    )
    file_no = up["file_qury_no"]
    detail = {
        **period,
        "file_qury_no": file_no,
        "medfee_sumamt": c.amt(f"{dec(settled['medfee_sumamt']):.2f}"),
        "fund_pay_sumamt": c.amt(f"{dec(settled['fund_pay_sumamt']):.2f}"),
        "cash_payamt": c.amt(f"{dec(settled['psn_cash_pay']):.2f}"),
        "fixmedins_setl_cnt": 1,
        "clr_type": "11",
    }
    fileinfo = (await c.ok("3202", {"data": detail}))["fileinfo"]
    assert fileinfo["file_qury_no"] and fileinfo["filename"]
    env = c.his.envelope(
        "9102",
        {
            "fsDownloadIn": {
                "file_qury_no": fileinfo["file_qury_no"],
                "filename": fileinfo["filename"],
                "fixmedins_code": shape.hospital,
            }
        },
    )
    env.update(shape.envelope)
    status, raw = await c.his.post_raw(_encode(env))
    assert status == 200 and raw[:2] == b"PK", raw[:200]
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        text = zf.read(zf.namelist()[0]).decode("utf-8-sig")
    assert settled["setl_id"] in text
