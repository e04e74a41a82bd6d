"""What a cancellation and a 5203 answer say besides the money (found from outside, by a tester
comparing every answer with a model of the rules written from the spec alone): the person's age
on the visit's date, and which of a stay's settlements a 5203 by visit names."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.integration.conftest import Server
from tests.integration.emergency_helpers import BIG_LINES, BIG_TOTAL
from tests.integration.his_client import HisClient
from tests.integration.parity_helpers import total
from tests.integration.test_replay_claim_lines import (
    BEFORE,
    HOSPITAL,
    RETIREE,
    _admission,
    _stay_settlement,
    _upload,
)

pytestmark = pytest.mark.integration

EMPLOYEE = "441800000000000001"  # born 1990-01-01


async def _outpatient(his: HisClient, day: str, no: str) -> dict[str, Any]:
    mdtrt_id = await his.register(EMPLOYEE, "310", f"{day} 08:30:00", no)
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", f"{day} 08:30:00")
    rows = his.fee_rows(mdtrt_id, EMPLOYEE, BIG_LINES, f"{day} 08:40:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", BIG_TOTAL, "310", "0", chrg_bchno="B1")
    return await his.ok("2207", data)


async def test_the_age_answered_is_on_the_visits_date_in_every_answer(server: Server) -> None:
    """The employee was 35 on 2025-03-20 and is older on any day this test runs: the
    cancellation and the 5203 answered the age on the day they were asked."""
    his = server.client(HOSPITAL)
    settled = (await _outpatient(his, "2025-03-20", "MZ-AGE-1"))["setlinfo"]
    assert Decimal(str(settled["age"])) == Decimal("35.0")
    keys = {"setl_id": settled["setl_id"], "mdtrt_id": settled["mdtrt_id"], "psn_no": EMPLOYEE}
    queried = (await his.ok("5203", {"data": keys}))["setlinfo"]
    cancelled = (await his.ok("2208", {"data": keys}))["setlinfo"]
    after = (await his.ok("5203", {"data": keys}))["setlinfo"]
    assert [Decimal(str(x["age"])) for x in (queried, cancelled, after)] == [Decimal("35.0")] * 3


async def test_5203_by_visit_names_the_settlement_in_force(server: Server) -> None:
    """A stay settled mid-way twice, the second cancelled: by mdtrt_id the 5203 answered the
    cancelled one (the newest), and the clerk took the stay for unsettled."""
    his = server.client(HOSPITAL)
    mdtrt_id = (await his.ok("2401", _admission()))["result"]["mdtrt_id"]
    await his.ok("2301", _upload(mdtrt_id, BEFORE[:1], "2025-07-02 10:00:00"))
    kept = (await his.ok("2304", _stay_settlement(his, mdtrt_id, total(BEFORE[:1]), "1")))[
        "setlinfo"
    ]
    await his.ok("2301", _upload(mdtrt_id, BEFORE[1:], "2025-07-03 10:00:00"))
    later = (await his.ok("2304", _stay_settlement(his, mdtrt_id, total(BEFORE[1:]), "1")))[
        "setlinfo"
    ]
    by_visit = {"data": {"psn_no": RETIREE, "setl_id": "", "mdtrt_id": mdtrt_id}}
    found = (await his.ok("5203", by_visit))["setlinfo"]
    assert found["setl_id"] == later["setl_id"]  # both in force: the newest
    cancel = {"data": {"setl_id": later["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    await his.ok("2305", cancel)
    found = (await his.ok("5203", by_visit))["setlinfo"]
    assert found["setl_id"] == kept["setl_id"] and found["refd_setl_flag"] == "0"
    await his.ok(
        "2305", {"data": {"setl_id": kept["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": RETIREE}}
    )
    found = (await his.ok("5203", by_visit))["setlinfo"]
    assert found["setl_id"] == later["setl_id"] and found["refd_setl_flag"] == "1"


async def test_5203_of_a_settlement_with_another_visit_says_the_pair_is_wrong(
    server: Server,
) -> None:
    """A 结算ID sent with another visit's 就诊ID was answered "未查询到本机构的结算信息", which a
    clerk reads as "no such settlement" (and may settle again) when only the pair is wrong."""
    his = server.client(HOSPITAL)
    one = (await _outpatient(his, "2025-04-01", "MZ-PAIR-1"))["setlinfo"]
    other = (await _outpatient(his, "2025-04-02", "MZ-PAIR-2"))["setlinfo"]
    wrong = {"data": {"setl_id": one["setl_id"], "mdtrt_id": other["mdtrt_id"], "psn_no": EMPLOYEE}}
    answer = await his.call("5203", wrong)
    assert answer["infcode"] == -1
    assert answer["err_msg"] == f"结算ID{one['setl_id']}与就诊ID、人员编号不对应，请核对后查询"
    unknown = {"data": {"setl_id": "NO-SUCH", "mdtrt_id": other["mdtrt_id"], "psn_no": EMPLOYEE}}
    assert (await his.call("5203", unknown))["err_msg"] == "未查询到本机构的结算信息"
