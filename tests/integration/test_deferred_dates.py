"""A request deferred under the emergency plan is held to the same date bounds as a settlement.

A deferred request is answered before the ledger settles it: a sale or a visit dated next year
acknowledged with a cash answer would only fail at replay, after the patient had left.
"""

from __future__ import annotations

import datetime as dt
import json

from tests.integration.conftest import Server
from tests.integration.emergency_helpers import (
    DRUG_LINES,
    DRUG_TOTAL,
    clear_rule,
    cli,
    set_rule,
    until,
)

HOSPITAL = "H44180000001"
PHARMACY = "P44180000001"
PSN = "441800000000000001"
FUTURE = "2099-06-05 10:00:00"


async def test_future_dated_requests_are_refused_not_deferred(server: Server) -> None:
    his, pos = server.client(HOSPITAL), server.client(PHARMACY)
    await set_rule(server.dsn, "region:441800", "settlement", "defer", "演练主动报")
    await set_rule(server.dsn, "region:441800", "encounter", "defer", "演练主动报")
    today = (dt.datetime.now() - dt.timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S")
    try:

        async def in_force() -> bool:
            answer = await pos.call("2101", pos.drug_input(PSN, today, DRUG_TOTAL, DRUG_LINES))
            return "应急预案" in (answer["warn_msg"] or "")

        await until(in_force)
        sale = await pos.call("2102", pos.drug_input(PSN, FUTURE, DRUG_TOTAL, DRUG_LINES))
        assert sale["infcode"] == -1
        assert "2099-06-05 10:00:00" in sale["err_msg"] and "未来日期" in sale["err_msg"]

        visit = await his.call(
            "2201",
            {
                "data": {
                    "psn_no": PSN,
                    "insutype": "310",
                    "begntime": FUTURE,
                    "mdtrt_cert_type": "01",
                    "mdtrt_cert_no": PSN,
                    "ipt_otp_no": "MZ-DEFER-FUTURE",
                    "atddr_no": "D001",
                    "dr_name": "医生",
                    "dept_code": "K01",
                    "dept_name": "内科",
                    "caty": "A03",
                }
            },
        )
        assert visit["infcode"] == -1 and "未来日期" in visit["err_msg"]
        assert await server.fetchval("SELECT count(*) FROM deferred") == 0

        # A sale dated now is still deferred: the rule is in force, only the date was refused.
        ok = await pos.ok("2102", pos.drug_input(PSN, today, DRUG_TOTAL, DRUG_LINES))
        assert ok["setlinfo"]["setl_id"].startswith("DF")
        assert await server.fetchval("SELECT count(*) FROM deferred") == 1
    finally:
        await clear_rule(server.dsn, "region:441800", "settlement")
        await clear_rule(server.dsn, "region:441800", "encounter")


async def test_a_replay_run_from_a_clock_behind_the_gateways_settles_the_claims(
    server: Server,
) -> None:
    """Found from outside: `deferred replay` run from a shell in UTC, the gateway in Beijing
    time, judged every sale's begntime to be in the future and filed all of them failed, beyond
    retrying. A claim is replayed no earlier than it was taken; the command runs in Beijing
    time, and says so."""
    pos = server.client(PHARMACY)
    await set_rule(server.dsn, "region:441800", "settlement", "defer", "演练主动报")
    now = dt.datetime.now().replace(microsecond=0)
    sold = (now - dt.timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S")
    try:

        async def in_force() -> bool:
            answer = await pos.call("2101", pos.drug_input(PSN, sold, DRUG_TOTAL, DRUG_LINES))
            return "应急预案" in (answer["warn_msg"] or "")

        await until(in_force)
        claim = await pos.ok("2102", pos.drug_input(PSN, sold, DRUG_TOTAL, DRUG_LINES))
        claim_id = claim["setlinfo"]["setl_id"]
        assert claim_id.startswith("DF")
    finally:
        await clear_rule(server.dsn, "region:441800", "settlement")
    # A shell eight hours behind the gateway's clock (POSIX: "XXX+8" is UTC-8).
    done = cli("deferred", "replay", "--json", "--database-url", server.dsn, tz="XXX+8")
    summary = json.loads(done.stdout)
    assert summary["failed"] == [] and summary["settled"] >= 1, summary
    assert "it runs in Beijing time (TZ=CST-8)" in done.stderr, done.stderr
    status = "SELECT status, setl_id FROM deferred WHERE claim_id = $1"
    row = await server.fetchrow(status, claim_id)
    assert row is not None and row["status"] == "settled"
    setl_time = await server.fetchval(
        "SELECT setl_time FROM settlements WHERE setl_id = $1", row["setl_id"]
    )
    assert setl_time >= now - dt.timedelta(minutes=1)  # not dated by the slow clock
