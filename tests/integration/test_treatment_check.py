"""2001 人员待遇享受检查 (found from outside: HIS code calls it, nhis-web before a maternity stay,
the Dongguan header, and was told the transaction was not supported). Its verdict is the rules
a settlement applies first, in the words a settlement would be refused with; nothing written."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.integration.conftest import Server

HOSPITAL = "H44180000001"
# Forty days ahead: a registration then is refused by the date bounds (found from outside: a
# 2001 for it was answered "enjoys").
AHEAD = (dt.datetime.now() + dt.timedelta(days=40)).strftime("%Y-%m-%d %H:%M:%S")
# A visit's time within the bounds whatever day the suite runs: yesterday.
YESTERDAY = (dt.datetime.now() - dt.timedelta(days=1)).strftime("%Y-%m-%d 08:00:00")


def _ask(psn_no: str, **fields: Any) -> dict[str, Any]:
    return {
        "data": {
            "psn_no": psn_no,
            "insutype": "",
            "fixmedins_code": HOSPITAL,
            "med_type": "11",
            "begntime": YESTERDAY,
            "endtime": "",
            "dise_codg": "",
            "dise_name": "",
            **fields,
        }
    }


@pytest.mark.parametrize(
    ("psn_no", "fields", "fund", "enjoys", "why"),
    [
        ("441800000000000001", {}, "310100", "1", ""),
        ("441800000000000004", {"insutype": "390"}, "390100", "1", ""),
        ("441800000000000007", {}, "310100", "0", "参保状态异常"),  # suspended
        ("441800000000000001", {"insutype": "390"}, "390100", "0", "险种类型390与参保人险种310不一致"),
        ("441800000000000002", {"med_type": "14", "dise_codg": "M07800"}, "310100", "1", ""),
        ("441800000000000001", {"med_type": "14", "dise_codg": "M07800"}, "310100", "0", "门诊慢特病备案"),
        ("441800000000000001", {"med_type": "51"}, "310100", "0", "不支持的医疗类别51"),
        ("441800000000000001", {"begntime": "2019-01-01 08:00:00"}, "310100", "0", "就诊时间begntime"),
        ("441800000000000001", {"begntime": AHEAD}, "310100", "0", "就诊时间begntime"),
        ("441800000000000003", {"insutype": "320"}, "310100", "0", "险种类型320与参保人险种310不一致"),
    ],
    ids=["employee", "resident", "suspended", "other insutype", "chronic filed", "chronic not filed",
         "unsupported med_type", "long ago", "ahead", "an insutype not settled here"],
)  # fmt: skip
async def test_the_pool_funds_verdict_is_the_settlements_own(
    server: Server, psn_no: str, fields: dict[str, Any], fund: str, enjoys: str, why: str
) -> None:
    his = server.client(HOSPITAL)
    before = await server.ledger_fingerprint()
    [row] = (await his.ok("2001", _ask(psn_no, **fields)))["trtinfo"]
    assert (row["psn_no"], row["fund_pay_type"], row["trt_enjymnt_flag"]) == (psn_no, fund, enjoys)
    assert why in row["trt_chk_rslt"] and (enjoys == "0") == bool(row["trt_chk_rslt"]), row
    assert row["begndate"] == fields.get("begntime", YESTERDAY)[:10]
    assert await server.ledger_fingerprint() == before  # a question, nothing written


async def test_what_is_not_a_question_is_refused(server: Server) -> None:
    his = server.client(HOSPITAL)
    unknown = await his.call("2001", _ask("441800000000009999"))
    assert unknown["infcode"] == -1, unknown
    missing = await his.call("2001", {"data": {"med_type": "11"}})
    assert missing["infcode"] == -1 and "psn_no" in missing["err_msg"], missing
    badtime = await his.call("2001", _ask("441800000000000001", begntime="2026-13-01"))
    assert badtime["infcode"] == -1 and "begntime" in badtime["err_msg"], badtime
    # Another institution's treatment is not this one's to ask (found from outside: answered).
    other = await his.call("2001", _ask("441800000000000001", fixmedins_code="H44180000002"))
    assert other["infcode"] == -1 and "fixmedins_code" in other["err_msg"], other


async def test_an_end_before_the_start_is_refused_and_a_dotnet_unset_end_is_none(
    server: Server,
) -> None:
    """Found from outside: an endtime before the begntime was answered "enjoys" over the
    backwards period (binzhe's RY2001 sends a DateTime it left unset, 0001-01-01T00:00:00, and a
    clerk was shown entitlement to year 1); and a begntime of year 1 was quoted "1-01-01". The
    unset .NET DateTime is no end sent; a real end before the start is refused naming it."""
    his = server.client(HOSPITAL)
    unset = await his.ok("2001", _ask("441800000000000003", endtime="0001-01-01T00:00:00"))
    [row] = unset["trtinfo"]
    assert row["trt_enjymnt_flag"] == "1" and row["enddate"] == YESTERDAY[:10], row
    before = await his.call("2001", _ask("441800000000000003", endtime="2020-12-01T00:00:00"))
    assert before["infcode"] == -1 and "结束时间endtime（2020-12-01 00:00:00）" in before["err_msg"]
    year_one = await his.ok("2001", _ask("441800000000000003", begntime="0001-01-01T00:00:00"))
    assert "（0001-01-01 00:00:00）早于" in year_one["trtinfo"][0]["trt_chk_rslt"], year_one
