"""1901 字典表下载 as public clients send it (protocol.md §2.8): newtouch-cloud/openhis
`WinServiceAPI/YiBaoInterface/Models/Input/Input_1901.cs` (`vali_Flag`, the HIS's own
`tradiNumber`/`operatorId`/`operatorName` beside) read by `Models/Output/Output_1901.cs`
(`list` of rows with `parent_value`, `vali_flag`), and binzhe12123/Medical
`SY.Com.Medical.Model/SYB/JBXX/Dic1901.cs` (`parentValue`, `valiFlag`, `date` a C# DateTime,
rows with `parentValue`, `valiFlag`, an integer `sort`). Found from outside: both were refused
("不支持的交易编号1901"), a HIS failing the dictionary download it runs when it is set up."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.dictionaries import DICTIONARIES
from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
PHARMACY = "P44180000001"

OPENHIS = {
    "type": "med_type",
    "parentValue": "",
    "admdvs": "441800",
    "date": "2026-12-07",
    "vali_Flag": "1",
    "tradiNumber": "1901",
    "operatorId": "001",
    "operatorName": "收费员",
}
BINZHE = {
    "type": "med_type",
    "parentValue": None,
    "admdvs": "441800",
    "date": "2026-12-07T00:00:00",
    "valiFlag": "1",
}


@pytest.mark.parametrize("data", [OPENHIS, BINZHE], ids=["openhis", "binzhe"])
async def test_a_dictionary_is_downloaded_in_either_spelling(
    server: Server, data: dict[str, Any]
) -> None:
    out = await server.client(HOSPITAL).ok("1901", {"data": data})
    rows = out["list"]
    assert [(r["value"], r["label"]) for r in rows] == list(DICTIONARIES["med_type"])
    assert ("11", "普通门诊") in [(r["value"], r["label"]) for r in rows]
    for n, row in enumerate(rows, start=1):
        assert row["type"] == "med_type"
        assert row["sort"] == n  # binzhe reads an int
        assert row["parent_value"] == row["parentValue"] == ""
        assert row["vali_flag"] == row["valiFlag"] == "1"


async def test_every_dictionary_without_a_type_and_a_pharmacy_may_ask(server: Server) -> None:
    out = await server.client(PHARMACY).ok("1901", {"data": {"type": "", "admdvs": "441800"}})
    kinds = {r["type"] for r in out["list"]}
    assert kinds == set(DICTIONARIES)
    assert len(out["list"]) == sum(len(v) for v in DICTIONARIES.values())
    # The fund names are the ones settlements answer in setldetail.
    funds = {r["value"]: r["label"] for r in out["list"] if r["type"] == "fund_pay_type"}
    assert funds["310100"] == "城镇职工基本医疗保险统筹基金"


async def test_a_dictionary_not_served_children_and_invalid_codes_are_empty(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    answer = await his.call("1901", {"data": {"type": "clr_way", "admdvs": "441800"}})
    assert answer["infcode"] == 0 and answer["output"]["list"] == []
    assert "本系统未提供字典类型clr_way" in answer["warn_msg"]
    children = await his.ok("1901", {"data": {"type": "med_type", "parentValue": "11"}})
    assert children["list"] == []
    invalid = await his.ok("1901", {"data": {"type": "med_type", "valiFlag": "0"}})
    assert invalid["list"] == []
    refused = await his.call("1901", {"data": {"type": "med_type", "valiFlag": "2"}})
    assert refused["infcode"] == -1 and "valiFlag只能为0或1" in refused["err_msg"]
    missing = await his.call("1901", {})
    assert missing["infcode"] == -1 and "data" in missing["err_msg"]
