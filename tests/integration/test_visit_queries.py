"""5201 就诊信息查询 and 5202 诊断信息查询 (found from outside: HIS code calls both, the Dongguan
header, nhis-web and binzhe's JZ5201, and was told the transaction was not supported). An
institution reads back its own visits of a person, and a visit's diagnoses, as it sent them."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import Server
from tests.integration.emergency_helpers import DRUG_LINES, DRUG_TOTAL
from tests.integration.his_client import HisClient, certificate

HOSPITAL = "H44180000003"
OTHER = "H44180000002"
PSN = "441800000000000004"
DAY = "2026-10-"


def _query(**fields: Any) -> dict[str, Any]:
    return {
        "data": {
            "psn_no": PSN,
            "begntime": f"{DAY}01 00:00:00",
            "endtime": f"{DAY}31 23:59:59",
            "med_type": "",
            "mdtrt_id": "",
            **fields,
        }
    }


def _dise(code: str, name: str) -> dict[str, Any]:
    return {"diag_type": "1", "diag_srt_no": "1", "diag_code": code, "diag_name": name,
            "diag_dept": "内科", "dise_dor_no": "D1", "dise_dor_name": "医生",
            "diag_time": f"{DAY}10 09:00:00", "vali_flag": "1", "maindiag_flag": "1"}  # fmt: skip


async def _stay(his: HisClient, ipt_no: str, begntime: str = f"{DAY}12 07:00:00") -> str:
    admission = {
        "mdtrtinfo": {
            "psn_no": PSN, "insutype": "390", "begntime": begntime, **certificate(PSN),
            "med_type": "21", "ipt_no": ipt_no, "atddr_no": "D1", "chfpdr_name": "主治医生",
            "adm_dept_codg": "K1", "adm_dept_name": "内科", "adm_bed": "3", "adm_diag_dscr": "发热咳嗽三天",
            "dise_codg": "J18.9", "dise_name": "肺炎", "dscg_maindiag_code": "J18.9",
            "dscg_maindiag_name": "肺炎",
        },
        "diseinfo": [_dise("J18.9", "肺炎")],
    }  # fmt: skip
    return str((await his.ok("2401", admission))["result"]["mdtrt_id"])


async def test_an_institution_reads_back_its_visits_of_a_person(server: Server) -> None:
    his = server.client(HOSPITAL)
    visit = await his.register(PSN, "390", f"{DAY}10 08:30:00", "MZ-Q-1")
    info = his.visit_info_input(visit, PSN, "11", f"{DAY}10 08:30:00", "J06.900")
    await his.ok("2203", {**info, "diseinfo": [_dise("J06.900", "上呼吸道感染")]})
    stay = await _stay(his, "ZY-Q-1")
    await his.ok("2403", {"adminfo": {"mdtrt_id": stay, "psn_no": PSN, "adm_bed": "12"},
                          "diseinfo": [_dise("J15.9", "细菌性肺炎")]})  # fmt: skip
    # Neither a cancelled registration, nor another institution's visit, nor one out of range.
    cancelled = await his.register(PSN, "390", f"{DAY}11 08:30:00", "MZ-Q-2")
    await his.ok("2202", {"data": {"mdtrt_id": cancelled, "psn_no": PSN, "ipt_otp_no": "MZ-Q-2"}})
    elsewhere = await server.client(OTHER).register(PSN, "390", f"{DAY}13 08:30:00", "MZ-Q-3")
    await his.register(PSN, "390", "2026-11-02 08:30:00", "MZ-Q-4")

    rows = (await his.ok("5201", _query()))["mdtrtinfo"]
    assert [r["mdtrt_id"] for r in rows] == [visit, stay]
    first, second = rows
    assert (first["med_type"], first["ipt_otp_no"], first["begntime"]) == (
        "11", "MZ-Q-1", f"{DAY}10 08:30:00"
    )  # fmt: skip
    assert (first["psn_no"], first["insutype"], first["inhosp_stas"]) == (PSN, "390", None)
    assert first["psn_name"] and first["certno"] and first["dise_codg"] == "J06.900"
    # What 2201 sent, still there after the 2203 (found from outside: the 2203's information
    # replaced the registration's, the certificate type and doctor null).
    assert (first["mdtrt_cert_type"], first["atddr_no"]) == ("01", "D001")
    assert (second["med_type"], second["ipt_otp_no"], second["inhosp_stas"]) == (
        "21",
        "ZY-Q-1",
        "1",
    )
    assert (second["adm_bed"], second["chfpdr_name"], second["endtime"]) == ("12", "主治医生", None)
    assert (second["adm_diag_dscr"], first["adm_diag_dscr"]) == ("发热咳嗽三天", None)
    # The stay's main diagnosis as 2401 sent it (found from outside: 5201 left it out).
    assert (second["dscg_maindiag_code"], second["dscg_maindiag_name"]) == ("J18.9", "肺炎")
    assert first["dscg_maindiag_code"] is None

    # Narrowed by med_type, by mdtrt_id; an empty range is an empty list, not a refusal.
    stays = (await his.ok("5201", _query(med_type="21")))["mdtrtinfo"]
    assert [r["mdtrt_id"] for r in stays] == [stay]
    one = (await his.ok("5201", _query(mdtrt_id=visit)))["mdtrtinfo"]
    assert [r["mdtrt_id"] for r in one] == [visit]
    none = await his.ok(
        "5201", _query(begntime="2026-09-01 00:00:00", endtime="2026-09-30 23:59:59")
    )
    assert none["mdtrtinfo"] == []
    # A bare date ends the range with its whole day (found from outside: "to today" by date
    # answered none of today's).
    that_day = await his.ok("5201", _query(begntime=f"{DAY}10", endtime=f"{DAY}10"))
    assert [r["mdtrt_id"] for r in that_day["mdtrtinfo"]] == [visit]
    # Discharged, the stay is no longer in hospital.
    await his.ok("2402", {"dscginfo": {"mdtrt_id": stay, "psn_no": PSN, "insutype": "390",
                                       "endtime": f"{DAY}15 10:00:00", "dscg_way": "1"}})  # fmt: skip
    [left] = (await his.ok("5201", _query(mdtrt_id=stay)))["mdtrtinfo"]
    assert (left["inhosp_stas"], left["endtime"]) == ("0", f"{DAY}15 10:00:00")

    # Another institution's visit is not this one's to read.
    foreign = await his.call("5201", _query(mdtrt_id=elsewhere))
    assert foreign["infcode"] == -1 and "不存在或不属于本机构" in foreign["err_msg"], foreign
    backwards = await his.call(
        "5201", _query(begntime=f"{DAY}31 00:00:00", endtime=f"{DAY}01 00:00:00")
    )
    assert backwards["infcode"] == -1 and "早于" in backwards["err_msg"], backwards
    unknown = await his.call("5201", _query(psn_no="441800000000009999"))
    assert unknown["infcode"] == -1, unknown


async def test_a_visits_diagnoses_are_those_it_last_sent(server: Server) -> None:
    his = server.client(HOSPITAL)
    stay = await _stay(his, "ZY-Q-2", "2026-08-12 07:00:00")  # out of the other tests' range
    listed = await his.ok("5202", {"data": {"mdtrt_id": stay, "psn_no": PSN}})
    assert [(d["diag_code"], d["mdtrt_id"], d["psn_no"]) for d in listed["diseinfo"]] == [
        ("J18.9", stay, PSN)
    ]
    await his.ok("2403", {"adminfo": {"mdtrt_id": stay, "psn_no": PSN},
                          "diseinfo": [_dise("J15.9", "细菌性肺炎"), {**_dise("I10", "高血压"),
                                       "diag_srt_no": "2", "maindiag_flag": "0"}]})  # fmt: skip
    changed = await his.ok("5202", {"data": {"mdtrt_id": stay, "psn_no": ""}})
    assert [(d["diag_code"], d["maindiag_flag"]) for d in changed["diseinfo"]] == [
        ("J15.9", "1"),
        ("I10", "0"),
    ]
    # Typed as the interface types them whichever call sent them (found from outside: a number
    # from 2203 and a text from 2403 in one list; vali_flag null where a call left it out).
    assert [(d["diag_srt_no"], d["vali_flag"]) for d in changed["diseinfo"]] == [(1, "1"), (2, "1")]
    await his.ok("2403", {"adminfo": {"mdtrt_id": stay, "psn_no": PSN},
                          "diseinfo": [{"diag_type": "1", "diag_code": "J18.0", "diag_name": "支气管肺炎",
                                        "maindiag_flag": "1", "diag_srt_no": 1.0}]})  # fmt: skip
    typed = await his.ok("5202", {"data": {"mdtrt_id": stay}})
    assert [(d["diag_srt_no"], d["vali_flag"]) for d in typed["diseinfo"]] == [(1, "1")]
    foreign = await server.client(OTHER).call("5202", {"data": {"mdtrt_id": stay, "psn_no": PSN}})
    assert foreign["infcode"] == -1 and "不存在或不属于本机构" in foreign["err_msg"], foreign
    other_person = await his.call(
        "5202", {"data": {"mdtrt_id": stay, "psn_no": "441800000000000001"}}
    )
    assert other_person["infcode"] == -1, other_person
    missing = await his.call("5202", {"data": {"psn_no": PSN}})
    assert missing["infcode"] == -1 and "mdtrt_id" in missing["err_msg"], missing


async def test_a_pharmacy_sale_is_not_a_visit(server: Server) -> None:
    pos = server.client("P44180000001")
    await pos.ok(
        "2102", pos.drug_input(PSN, f"{DAY}20 10:00:00", DRUG_TOTAL, DRUG_LINES, "0", "390")
    )
    assert (await pos.ok("5201", _query()))["mdtrtinfo"] == []


BLANK = {"diag_type": "", "diag_srt_no": "", "diag_code": "", "diag_name": "", "diag_dept": "",
         "dise_dor_no": "", "dise_dor_name": "", "diag_time": "", "vali_flag": ""}  # fmt: skip


async def test_a_blank_diagnosis_is_none_and_does_not_replace_the_visits_own(
    server: Server,
) -> None:
    """Found from outside: a 2203 whose diseinfo was a client's empty template (every field "")
    was kept as sent, and 5202 then answered only blanks, the visit's J06.900 gone. A diagnosis
    with neither a code nor a name is none; a 2203 or 2403 sending none keeps the earlier ones."""
    his = server.client(HOSPITAL)
    visit = await his.register(PSN, "390", "2026-07-10 08:30:00", "MZ-Q-B1")
    info = his.visit_info_input(visit, PSN, "11", "2026-07-10 08:30:00", "J06.900")

    async def codes(mdtrt_id: str) -> list[str]:
        listed = await his.ok("5202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PSN}})
        return [d["diag_code"] for d in listed["diseinfo"]]

    await his.ok("2203", {**info, "diseinfo": [_dise("J06.900", "上呼吸道感染")]})
    for blank in ([BLANK], BLANK, [{**BLANK, "diag_code": " "}], None, []):
        await his.ok("2203", {**info, "diseinfo": blank})
        assert await codes(visit) == ["J06.900"], blank
    # A real one sent with a blank beside it: the real one, alone.
    await his.ok("2203", {**info, "diseinfo": [_dise("J02.900", "急性咽炎"), BLANK]})
    assert await codes(visit) == ["J02.900"]

    stay = await _stay(his, "ZY-Q-B1", "2026-07-12 07:00:00")
    await his.ok("2403", {"adminfo": {"mdtrt_id": stay, "psn_no": PSN}, "diseinfo": [BLANK]})
    assert await codes(stay) == ["J18.9"]
    blank_admission = await his.ok("2401", {"mdtrtinfo": {
        "psn_no": "441800000000000001", "insutype": "310", "begntime": "2026-07-13 07:00:00",
        **certificate("441800000000000001"), "med_type": "21", "ipt_no": "ZY-Q-B2",
        "dise_codg": "J18.9", "dise_name": "肺炎"}, "diseinfo": [BLANK]})  # fmt: skip
    listed = await his.ok(
        "5202",
        {
            "data": {
                "mdtrt_id": blank_admission["result"]["mdtrt_id"],
                "psn_no": "441800000000000001",
            }
        },
    )
    assert [d["diag_code"] for d in listed["diseinfo"]] == []
