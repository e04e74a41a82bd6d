"""Guangzhou's pilot settlement shapes (liutao2019/IBORN_HIS_ALL `MEDICAL/广州医保/API.GZSI/Models/
Request/RequestGzsiModel2206.cs`, `…2207.cs`): the national 2206/2207 fields under `mdtrtinfo`
with `mdtrt_mode`, `order_no`, `hcard_basinfo`, `hcard_chkinfo` beside them. Refused as another
shape (docs/protocol.md, "Refused where the meaning is not the same"), in words that say which:
found from outside, the clerk was told only that `data` was missing."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Server
from tests.integration.parity_helpers import line

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
EMPLOYEE = "441800000000000001"
DAY = "2026-06-10"


@pytest.mark.parametrize("infno", ["2206", "2207"])
async def test_guangzhous_pilot_node_is_told_as_the_pilot_shape(server: Server, infno: str) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await his.register(EMPLOYEE, "310", f"{DAY} 09:00:00", f"GZ-{infno}")
    rows = his.fee_rows(mdtrt_id, EMPLOYEE, [line("1", "ZL0001", "25", 1)], f"{DAY} 09:10:00", "G1")
    await his.ok("2204", {"feedetail": rows})
    national = his.settle_data(EMPLOYEE, mdtrt_id, "11", "25.00", "310", "1", chrg_bchno="G1")
    pilot = {"mdtrtinfo": {**national["data"], "mdtrt_mode": "0", "order_no": "",
                           "hcard_basinfo": "", "hcard_chkinfo": ""}}  # fmt: skip
    before = await server.ledger_fingerprint()
    refused = await his.call(infno, pilot)
    assert refused["infcode"] == -1, refused
    assert "广州试点" in refused["err_msg"] and "data" in refused["err_msg"], refused
    assert await server.ledger_fingerprint() == before
    assert (await his.call(infno, national))["infcode"] == 0  # the national node is taken


async def test_a_registration_naming_its_department_in_caty_is_taken(server: Server) -> None:
    """binzhe's HIS fills 科别 `caty` (a 6-character code) with the department's name
    (SYBController.GH2201, `caty = department.name`); found from outside, "中医内科门诊部" refused
    the registration. Taken within the department name's 100 characters."""
    his = server.client(HOSPITAL)

    def registration(caty: str, ipt: str, dept: str = "内科") -> dict[str, object]:
        return {"data": {"psn_no": EMPLOYEE, "insutype": "310", "begntime": f"{DAY} 09:00:00",
                         "mdtrt_cert_type": "02", "mdtrt_cert_no": "441802199001011234",
                         "ipt_otp_no": ipt, "atddr_no": "D001", "dr_name": "医生",
                         "dept_code": "K01", "dept_name": dept, "caty": caty}}  # fmt: skip

    taken = await his.call("2201", registration("中医内科门诊部", "GZ-CATY-1"))
    assert taken["infcode"] == 0, taken
    refused = await his.call("2201", registration("科" * 101, "GZ-CATY-2"))
    assert refused["infcode"] == -1 and "data.caty" in refused["err_msg"], refused
