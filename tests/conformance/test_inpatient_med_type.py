"""2303/2304 as the national interface defines them carry no med_type (protocol.md §2.4): the
admission (2401) gave it. Shaped after newtouch-cloud/openhis
`WinServiceAPI/YiBaoInterface/Models/Input/Input_2303.cs` / `Input_2304.cs` and TeaHZ/185
`Hos185/OnlineBusHos185_GJYB/Plat/Models/ZYJS/T2303.cs` / `T2304.cs`, whose data nodes have no
med_type field at all."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.integration.conftest import Server
from tests.integration.his_client import HisClient

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000002"
PERSON = "441800000000000001"


async def _admit(his: HisClient, ipt_no: str, med_type: str = "21") -> str:
    out = await his.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": PERSON,
                "insutype": "310",
                "begntime": "2026-05-10 09:00:00",
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": "441802199001011234",
                "med_type": med_type,
                "ipt_no": ipt_no,
                "atddr_no": "D01",
                "chfpdr_name": "主治医师",
                "adm_diag_dscr": "肺炎",
                "adm_dept_codg": "K02",
                "adm_dept_name": "呼吸科",
                "adm_bed": "12",
                "dscg_maindiag_code": "J18.900",
                "dscg_maindiag_name": "肺炎",
            },
            "diseinfo": [],
        },
    )
    mdtrt_id = out["result"]["mdtrt_id"]
    assert isinstance(mdtrt_id, str)
    lines = [
        {
            "feedetl_sn": f"{ipt_no}-1",
            "medins_list_codg": "ZL0003",
            "pric": "60",
            "cnt": "3",
            "det_item_fee_sumamt": "180.00",
        }
    ]
    await his.ok(
        "2301",
        {"feedetail": his.fee_rows(mdtrt_id, PERSON, lines, "2026-05-10 10:00:00", "")},
    )
    return mdtrt_id


def _spec_data(mdtrt_id: str, **extra: Any) -> dict[str, Any]:
    """The 2303/2304 data node of protocol.md §2.4: no med_type."""
    return {
        "data": {
            "psn_no": PERSON,
            "mdtrt_cert_type": "02",
            "mdtrt_cert_no": "441802199001011234",
            "medfee_sumamt": "180.00",
            "psn_setlway": "01",
            "mdtrt_id": mdtrt_id,
            "insutype": "310",
            "acct_used_flag": "0",
            "invono": "",
            "mid_setl_flag": "1",
            **extra,
        }
    }


async def test_spec_shaped_2303_and_2304_without_med_type_settle(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await _admit(his, "ZY-MEDTYPE-1")
    pre = (await his.ok("2303", _spec_data(mdtrt_id)))["setlinfo"]
    assert pre["med_type"] == "21" and pre["setl_id"] is None
    settled = (await his.ok("2304", _spec_data(mdtrt_id)))["setlinfo"]
    assert settled["med_type"] == "21"
    assert Decimal(settled["medfee_sumamt"]) == Decimal("180.00")
    assert Decimal(settled["medfee_sumamt"]) == Decimal(pre["medfee_sumamt"])
    row = await server.fetchrow(
        "SELECT med_type, status FROM settlements WHERE setl_id = $1", settled["setl_id"]
    )
    assert row is not None and (row["med_type"], row["status"]) == ("21", "settled")


async def test_med_type_equal_to_the_admissions_is_accepted(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await _admit(his, "ZY-MEDTYPE-2", med_type="22")
    settled = (await his.ok("2304", _spec_data(mdtrt_id, med_type="22")))["setlinfo"]
    assert settled["med_type"] == "22"


async def test_med_type_other_than_the_admissions_is_refused_naming_both(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await _admit(his, "ZY-MEDTYPE-3")
    before = await server.ledger_fingerprint()
    for infno in ("2303", "2304"):
        answer = await his.call(infno, _spec_data(mdtrt_id, med_type="22"))
        assert answer["infcode"] == -1
        assert "22" in answer["err_msg"] and "21" in answer["err_msg"], answer["err_msg"]
        assert "入院" in answer["err_msg"]
    assert await server.ledger_fingerprint() == before
