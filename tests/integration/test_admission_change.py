"""2403 住院信息变更 (found from outside: real HIS code sends it, TeaHZ/185 and nhis-web's
saveZyHpRegRelationship, and was told the transaction was not supported). An open stay's
diagnosis changes freely; its med_type and admission time only while nothing on it is settled
and never past a charge already uploaded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from tests.integration.conftest import Server, running_gateway
from tests.integration.emergency_helpers import OUTPATIENT_LINES, set_rule, until
from tests.integration.his_client import HisClient, certificate, decode

HOSPITAL = "H44180000001"
OTHER_HOSPITAL = "H44180000002"
PSN = "441800000000000001"
OTHER_PSN = "441800000000000002"
DAY = "2026-11-18"


async def _stay(his: HisClient, ipt_no: str) -> str:
    answer = await his.ok("2401", _admission(ipt_no))
    return str(answer["result"]["mdtrt_id"])


def _admission(ipt_no: str) -> dict[str, Any]:
    return {
        "mdtrtinfo": {
            "psn_no": PSN, "insutype": "310", "begntime": f"{DAY} 07:00:00", **certificate(PSN),
            "med_type": "21", "ipt_no": ipt_no, "atddr_no": "D1", "chfpdr_name": "医生",
            "adm_diag_dscr": "肺炎", "adm_dept_codg": "K1", "adm_dept_name": "内科",
            "adm_bed": "3", "dise_codg": "J18.9", "dise_name": "肺炎",
        },
        "diseinfo": [],
    }  # fmt: skip


def _change(mdtrt_id: str, **fields: Any) -> dict[str, Any]:
    # As TeaHZ-style clients send it: every field, the ones left alone as empty texts.
    adminfo = {"mdtrt_id": mdtrt_id, "psn_no": PSN, "coner_name": "", "tel": "", "begntime": "",
               "med_type": "", "ipt_no": "", "adm_bed": "", "dise_codg": "", "dise_name": ""}  # fmt: skip
    adminfo.update(fields)
    return {"adminfo": adminfo, "diseinfo": [{"diag_type": "1", "diag_srt_no": 1.0,
            "diag_code": "J18.9", "diag_name": "肺炎", "maindiag_flag": "1"}]}  # fmt: skip


async def _row(server: Server, mdtrt_id: str) -> dict[str, Any]:
    [row] = await server.fetch(
        "SELECT med_type, begntime::text AS begntime, dise_codg, dise_name, detail"
        " FROM encounters WHERE mdtrt_id = $1",
        mdtrt_id,
    )
    return dict(row)


async def test_an_open_stays_information_is_changed_and_kept(server: Server) -> None:
    his = server.client(HOSPITAL)
    stay = await _stay(his, "ZY-CHG-1")
    body = _change(stay, dise_codg="J15.9", dise_name="细菌性肺炎", adm_bed="12",
                   begntime=f"{DAY} 06:30:00", med_type="24")  # fmt: skip
    sent = msgspec.json.encode(his.envelope("2403", body))
    status, first = await his.post_raw(sent)
    assert status == 200 and decode(first)["infcode"] == 0, first
    row = await _row(server, stay)
    assert (row["med_type"], row["begntime"]) == ("24", f"{DAY} 06:30:00")
    assert (row["dise_codg"], row["dise_name"]) == ("J15.9", "细菌性肺炎")
    assert "adminfo" in row["detail"] and "mdtrtinfo" in row["detail"]  # the admission's kept
    # Sent again under its msgid: the same answer, nothing applied twice.
    assert await his.post_raw(sent) == (200, first)
    # Fields sent empty change nothing.
    await his.ok("2403", _change(stay, adm_bed="14"))
    row = await _row(server, stay)
    assert (row["med_type"], row["dise_codg"]) == ("24", "J15.9")
    # The stay settles under its new med_type, not the old one.
    rows = his.fee_rows(stay, PSN, OUTPATIENT_LINES, f"{DAY} 09:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    refused = await his.call("2303", his.settle_data(PSN, stay, "21", "140.00", "310", "0"))
    assert refused["infcode"] == -1
    await his.ok("2303", his.settle_data(PSN, stay, "24", "140.00", "310", "0"))


async def test_what_a_settlement_was_made_under_is_not_changed_beneath_it(server: Server) -> None:
    his = server.client(HOSPITAL)
    stay = await _stay(his, "ZY-CHG-2")
    rows = his.fee_rows(stay, PSN, OUTPATIENT_LINES, f"{DAY} 09:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    # The admission time never after a charge already uploaded.
    late = await his.call("2403", _change(stay, begntime=f"{DAY[:-2]}19 08:00:00"))
    assert late["infcode"] == -1 and "晚于已上传费用明细的发生时间" in late["err_msg"]
    mid = his.settle_data(PSN, stay, "21", "140.00", "310", "0", mid_setl_flag="1")
    await his.ok("2304", mid)
    for fields in ({"med_type": "24"}, {"begntime": f"{DAY} 06:00:00"}):
        refused = await his.call("2403", _change(stay, **fields))
        assert refused["infcode"] == -1 and "请先撤销结算（2305）" in refused["err_msg"]
    assert (await _row(server, stay))["med_type"] == "21"
    # The diagnosis may still be corrected.
    await his.ok("2403", _change(stay, dise_codg="J15.9", dise_name="细菌性肺炎"))
    assert (await _row(server, stay))["dise_codg"] == "J15.9"


async def test_a_settlement_cancelled_is_not_put_back_on_a_stay_dated_anew(server: Server) -> None:
    """Found from outside: 2305 of a stay's mid-way settlement, 2403 moving the admission from
    January 2026 into December 2025, then 2601 of the 2305 stood a 2026 settlement on a 2025
    stay; its closing settlement then owed no deductible in 2025 and was paid from two years'
    funds. The service date picks the policy and the year: a cancellation made before the
    admission was re-dated is not undone after it."""
    his = server.client(HOSPITAL)
    stay = await _stay(his, "ZY-CHG-9")
    rows = his.fee_rows(stay, PSN, OUTPATIENT_LINES, f"{DAY} 09:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    mid = his.settle_data(PSN, stay, "21", "140.00", "310", "0", mid_setl_flag="1")
    setl_id = (await his.ok("2304", mid))["setlinfo"]["setl_id"]
    cancel = his.msgid()
    keys = {"setl_id": setl_id, "mdtrt_id": stay, "psn_no": PSN}
    await his.ok("2305", {"data": keys}, msgid=cancel)
    undo = {"data": {"psn_no": PSN, "omsgid": cancel, "oinfno": "2305"}}
    for moved in ("2025-12-30 08:00:00", f"{DAY[:-2]}02 08:00:00"):  # another year; another day
        await his.ok("2403", _change(stay, begntime=moved))
        before = await server.ledger_fingerprint()
        refused = await his.call("2601", undo)
        assert refused["infcode"] == -1, refused
        words = refused["err_msg"]
        assert "开始时间已更改" in words and DAY in words and moved[:10] in words, words
        assert await server.ledger_fingerprint() == before
    # Dated back to its day (another hour of it), the settlement stands again, as it was.
    await his.ok("2403", _change(stay, begntime=f"{DAY} 06:00:00"))
    await his.ok("2601", undo)
    status = await server.fetchval("SELECT status FROM settlements WHERE setl_id = $1", setl_id)
    assert status == "settled"


async def test_a_stay_that_cannot_be_changed_is_refused_in_words(server: Server) -> None:
    his = server.client(HOSPITAL)
    stay = await _stay(his, "ZY-CHG-3")
    outpatient = await his.call("2403", _change(stay, med_type="11"))
    assert outpatient["infcode"] == -1 and "不是住院类别" in outpatient["err_msg"]
    elsewhere = await server.client(OTHER_HOSPITAL).call("2403", _change(stay, adm_bed="1"))
    assert elsewhere["infcode"] == -1 and "不存在或不属于本机构" in elsewhere["err_msg"]
    missing = await his.call("2403", {"diseinfo": []})
    assert missing["infcode"] == -1 and "adminfo" in missing["err_msg"]
    await his.ok("2402", {"dscginfo": {"mdtrt_id": stay, "psn_no": PSN, "insutype": "310",
                                       "endtime": f"{DAY} 18:00:00"}, "diseinfo": []})  # fmt: skip
    discharged = await his.call("2403", _change(stay, adm_bed="9"))
    assert discharged["infcode"] == -1 and "请先撤销出院（2405）" in discharged["err_msg"]
    visit = await his.register(PSN, "310", f"{DAY} 08:00:00", "MZ-CHG-1")
    assert (await his.call("2403", _change(visit, adm_bed="1")))["infcode"] == -1


async def test_what_clients_send_as_null_is_as_not_sent_and_the_record_keeps_each_field(
    server: Server,
) -> None:
    """Found from outside: `diseinfo: null` (Newtonsoft's unset list, nhis-web's missing key)
    was refused on 2401 and 2403, and a bed changed by one 2403 was lost from the record by the
    next, which sent it null."""
    his = server.client(HOSPITAL)
    stay = await _stay(his, "ZY-CHG-4")
    await his.ok("2403", {**_change(stay, adm_bed="77"), "diseinfo": None})
    await his.ok("2403", {**_change(stay, adm_bed=None, adm_dept_name="骨科"), "diseinfo": None})
    kept = (await _row(server, stay))["detail"]["adminfo"]
    assert (kept["adm_bed"], kept["adm_dept_name"]) == ("77", "骨科")
    admission = {"mdtrtinfo": {"psn_no": PSN, "insutype": "310", "begntime": f"{DAY} 07:00:00",
                               **certificate(PSN), "med_type": "21", "ipt_no": "ZY-CHG-5"},
                 "diseinfo": None}  # fmt: skip
    await his.ok("2401", admission)


async def test_one_diagnosis_sent_as_an_object_is_a_list_of_one(server: Server) -> None:
    """Found from outside: Shenyang's 2401 sends `diseinfo` as one object, not an array, and was
    refused on 2401, 2403 and 2203 (`字段diseinfo应为数组`); read as a list of one, as a single
    feedetail is, and kept as a list."""
    his = server.client(HOSPITAL)
    dise = {"psn_no": PSN, "diag_type": "1", "maindiag_flag": "1", "diag_srt_no": "1",
            "diag_code": "G40.900", "diag_name": "癫痫", "diag_time": f"{DAY} 07:00:00",
            "vali_flag": "1"}  # fmt: skip
    admission = {"mdtrtinfo": {"psn_no": PSN, "insutype": "310", "begntime": f"{DAY} 07:00:00",
                               **certificate(PSN), "med_type": "21", "ipt_no": "ZY-CHG-OBJ",
                               "dise_codg": "G40.900", "dise_name": "癫痫"},
                 "diseinfo": dise}  # fmt: skip
    stay = str((await his.ok("2401", admission))["result"]["mdtrt_id"])

    async def diagnoses(mdtrt_id: str) -> list[str]:
        return [d["diag_code"] for d in (await _row(server, mdtrt_id))["detail"]["diseinfo"]]

    assert await diagnoses(stay) == ["G40.900"]
    changed = {**dise, "diag_code": "G40.901"}
    await his.ok("2403", {**_change(stay, adm_bed="9"), "diseinfo": changed})
    assert await diagnoses(stay) == ["G40.901"]
    mdtrt_id = await his.register(PSN, "310", f"{DAY} 08:30:00", "MZ-CHG-OBJ")
    info = his.visit_info_input(mdtrt_id, PSN, "11", f"{DAY} 08:30:00")
    await his.ok("2203", {**info, "diseinfo": {**dise, "diag_time": f"{DAY} 08:40:00"}})
    assert await diagnoses(mdtrt_id) == ["G40.900"]


async def test_a_stay_settled_at_discharge_is_sent_to_cancel_its_settlement_first(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    stay = await _stay(his, "ZY-CHG-6")
    rows = his.fee_rows(stay, PSN, OUTPATIENT_LINES, f"{DAY} 09:00:00", "")
    await his.ok("2301", {"feedetail": rows})
    await his.ok("2402", {"dscginfo": {"mdtrt_id": stay, "psn_no": PSN, "insutype": "310",
                                       "endtime": f"{DAY} 18:00:00"}, "diseinfo": []})  # fmt: skip
    await his.ok("2304", his.settle_data(PSN, stay, "21", "140.00", "310", "0"))
    refused = await his.call("2403", _change(stay, adm_bed="9"))
    assert refused["infcode"] == -1
    assert "请先撤销出院结算（2305）再撤销出院（2405）" in refused["err_msg"]


async def test_under_the_plan_a_change_the_request_itself_refuses_is_refused_at_once(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside: with the encounter class deferred, a 2403 to med_type 11 was
    answered as kept and failed unseen when applied."""
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        stay = await _stay(his, "ZY-CHG-7")
        await set_rule(srv.dsn, f"institution:{HOSPITAL}", "encounter", "defer", "演练")

        async def deferring() -> bool:
            answer = await his.call("2403", _change(stay, adm_bed="5"))
            return "暂存" in str(answer.get("warn_msg") or "")

        await until(deferring)
        refused = await his.call("2403", _change(stay, med_type="11"))
        assert refused["infcode"] == -1 and "不是住院类别" in refused["err_msg"]
        assert await srv.fetchval("SELECT count(*) FROM deferred WHERE kind = 'call'") == 1


async def test_an_admission_number_taken_names_the_stay_that_holds_it(server: Server) -> None:
    """Found from outside: a second 2401 of an open 住院号 (a HIS that lost the first answer,
    sending again under a new msgid) was told only that the number was taken; then, named, the
    words sent another person's clerk to carry on under a stay not theirs (showing its person),
    and a finished stay's to an undo (2404) it could not take."""
    his = server.client(HOSPITAL)
    stay = await _stay(his, "ZY-DUP-1")
    before = await server.ledger_fingerprint()
    again = await his.call("2401", _admission("ZY-DUP-1"))
    assert again["infcode"] == -1, again
    words = again["err_msg"]
    assert "住院号ZY-DUP-1已登记且未撤销" in words and f"就诊ID{stay}" in words, words
    assert "继续办理请使用该就诊ID" in words and "2404" in words, words
    # Another person's admission under the number: not theirs to carry on, nor their person.
    other = _admission("ZY-DUP-1")
    other["mdtrtinfo"].update(psn_no=OTHER_PSN, **certificate(OTHER_PSN))
    words = (await his.call("2401", other))["err_msg"]
    assert "另一参保人" in words and f"就诊ID{stay}" in words, words
    assert PSN not in words and "继续办理" not in words, words
    assert await server.ledger_fingerprint() == before
    # The stay goes on under the id it was named by; discharged, its number sends to a new one.
    await his.ok("2403", _change(stay, adm_bed="9"))
    await his.ok("2402", {"dscginfo": {"mdtrt_id": stay, "psn_no": PSN,
                                       "endtime": f"{DAY} 12:00:00", "dscg_way": "1"},
                          "diseinfo": []})  # fmt: skip
    words = (await his.call("2401", _admission("ZY-DUP-1")))["err_msg"]
    assert "已结算或已出院" in words and "新的住院号" in words and "2404" not in words, words
