"""One path per service (Hebei's shape, protocol.md §1.1): found from outside, a 1101 posted to
`/fsi/api/fsiPsnInfoService/queryPsnInfo`, as newtouch-cloud/openhis's table sends it, was
answered 404, and a HIS built that way could reach nothing. Every transaction of a visit goes
through its own path here, as such a HIS sends it, and the answers are the ones `callService`
gives."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from adapters.national.envelope import base_infno
from adapters.national.service_paths import SERVICE_PATHS
from gateway.protocol.transaction import TRANSACTIONS
from tests.integration.conftest import Server
from tests.integration.his_client import HisClient, decode
from tests.integration.parity_helpers import line

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
EMPLOYEE = "441800000000000001"
DAY = "2026-06-11"
# The path each transaction is posted to, as the Hebei table gives it (the base code's own).
_PATH_OF = {infno: path for path, infno in SERVICE_PATHS.items()}


class ServicePathHis(HisClient):
    """A HIS that posts each transaction to its service's own path."""

    async def call(self, infno: str, input_: Any, **kw: Any) -> dict[str, Any]:
        body = msgspec.json.encode(self.envelope(infno, input_, **kw))
        status, raw = await self.post_raw(body, _PATH_OF[infno])
        assert status == 200, raw
        return decode(raw)


def test_every_service_path_names_a_transaction_the_gateway_serves() -> None:
    # The server's module registers every transaction (the HIS's and the pharmacy's).
    import gateway.app.server  # noqa: F401

    for path, infno in SERVICE_PATHS.items():
        assert path.startswith("/fsi/api/"), path
        assert base_infno(infno) in TRANSACTIONS, (path, infno)
    # The table's two paths for one code are the base and its revision, never two bases.
    assert len({base for base in map(base_infno, SERVICE_PATHS.values())}) + 3 == len(SERVICE_PATHS)


async def test_a_visit_settles_and_is_cancelled_through_its_services_paths(
    server: Server,
) -> None:
    his = ServicePathHis(server.session, server.url, HOSPITAL)
    person = await his.ok(
        "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "441802199001011234"}}
    )
    assert person["baseinfo"]["psn_no"] == EMPLOYEE
    mdtrt_id = await his.register(EMPLOYEE, "310", f"{DAY} 09:00:00", "SP-1")
    await his.visit_info(mdtrt_id, EMPLOYEE, "11", f"{DAY} 09:00:00")
    lines = [line("1", "YP0003", "45.5", 1), line("2", "ZL0003", "60", 1)]
    rows = his.fee_rows(mdtrt_id, EMPLOYEE, lines, f"{DAY} 09:10:00", "B1")
    await his.ok("2204", {"feedetail": rows})
    data = his.settle_data(EMPLOYEE, mdtrt_id, "11", "105.50", "310", "1", chrg_bchno="B1")
    pre = (await his.ok("2206", data))["setlinfo"]
    settled = (await his.ok("2207", data))["setlinfo"]
    assert settled["medfee_sumamt"] == pre["medfee_sumamt"] == Decimal("105.50")
    assert settled["fund_pay_sumamt"] == pre["fund_pay_sumamt"]
    keys = {"setl_id": settled["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": EMPLOYEE}
    found = (await his.ok("5203", {"data": keys}))["setlinfo"]
    assert found["setl_id"] == settled["setl_id"]
    assert found["fund_pay_sumamt"] == settled["fund_pay_sumamt"]
    cancelled = (await his.ok("2208", {"data": keys}))["setlinfo"]
    assert settled["acct_pay"] > 0  # the account paid: its refund is visible
    for field in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
        assert cancelled[field] == -settled[field], field
    rows = await server.fetch(
        "SELECT infno, status FROM settlements WHERE mdtrt_id = $1 ORDER BY setl_time", mdtrt_id
    )
    assert [tuple(r) for r in rows] == [("2207", "cancelled")]


async def test_a_body_naming_another_transaction_than_its_path_is_refused(
    server: Server,
) -> None:
    his = HisClient(server.session, server.url, HOSPITAL)
    before = await server.ledger_fingerprint()
    env = his.envelope("2201", {"data": {"psn_no": EMPLOYEE}})
    status, raw = await his.post_raw(
        msgspec.json.encode(env), "/fsi/api/fsiPsnInfoService/queryPsnInfo"
    )
    answer = decode(raw)
    assert status == 200 and answer["infcode"] == -1, answer
    assert "地址为1101" in answer["err_msg"] and "2201" in answer["err_msg"], answer
    # The older 2207 (saveSettletment) is the revision 2207A: its body may name either.
    env = his.envelope("2207", {"data": {"psn_no": EMPLOYEE}})
    status, raw = await his.post_raw(
        msgspec.json.encode(env), "/fsi/api/outpatientSettleService/saveSettletment"
    )
    answer = decode(raw)
    assert answer["infcode"] == -1 and "交易编号不一致" not in answer["err_msg"], answer
    assert await server.ledger_fingerprint() == before


async def test_a_service_path_asked_the_wrong_way_is_told_so_in_the_envelope(
    server: Server,
) -> None:
    async with server.session.get(server.url + "/fsi/api/fsiPsnInfoService/queryPsnInfo") as r:
        assert r.status == 405
        answer = decode(await r.read())
    assert answer["infcode"] == -1 and "接口地址或请求方法错误" in answer["err_msg"], answer
    assert "/fsi/api/fsiPsnInfoService/queryPsnInfo" in answer["err_msg"], answer
    # A path of the same shape that no service has is still an unknown address.
    async with server.session.post(server.url + "/fsi/api/fsiPsnInfoService/nothing") as r:
        assert r.status == 404
