"""A visit's information (2203) is dated as its registration is: within the bounds of every
service date, and not on a day before the registration (found from outside: a 2203 dated four
days ahead, and one dated the day before its registration in another year, were both taken)."""

from __future__ import annotations

import datetime as dt

from tests.integration.conftest import Server
from tests.integration.emergency_helpers import clear_rule, set_rule, until

HOSPITAL = "H44180000001"
PSN = "441800000000000001"
_SHOWN = "%Y-%m-%d %H:%M:%S"


async def test_a_visit_info_out_of_its_dates_is_refused_and_nothing_kept(server: Server) -> None:
    his = server.client(HOSPITAL)
    now = dt.datetime.now().replace(microsecond=0)
    registered = now - dt.timedelta(hours=1)
    mdtrt_id = await his.register(PSN, "310", registered.strftime(_SHOWN), "MZ-INFO-DATES")
    info = "SELECT med_type, dise_codg, detail FROM encounters WHERE mdtrt_id = $1"
    before = await server.fetchrow(info, mdtrt_id)

    ahead = (now + dt.timedelta(days=4)).strftime(_SHOWN)
    refused = await his.call("2203", his.visit_info_input(mdtrt_id, PSN, "11", ahead))
    assert refused["infcode"] == -1 and "就诊时间begntime" in refused["err_msg"], refused
    assert ahead in refused["err_msg"] and "未来日期" in refused["err_msg"]

    day_before = (registered - dt.timedelta(days=1)).strftime(_SHOWN)
    refused = await his.call("2203", his.visit_info_input(mdtrt_id, PSN, "11", day_before))
    assert refused["infcode"] == -1, refused
    assert (
        f"就诊时间begntime {day_before}早于挂号时间{registered.strftime(_SHOWN)}"
        in (refused["err_msg"])
    )
    # An outpatient visit's words: no discharge, no 2403 (found from outside).
    assert "出院" not in refused["err_msg"] and "2403" not in refused["err_msg"], refused
    assert await server.fetchrow(info, mdtrt_id) == before

    # A diagnosis dated ahead is refused too (found from outside: three days ahead was taken);
    # one years back is the past (a chronic disease's first diagnosis), not billed by itself.
    ahead_diagnosis = his.visit_info_input(mdtrt_id, PSN, "11", registered.strftime(_SHOWN))
    ahead_diagnosis["diseinfo"][0]["diag_time"] = ahead
    refused = await his.call("2203", ahead_diagnosis)
    assert refused["infcode"] == -1 and "第1条诊断的诊断时间diag_time" in refused["err_msg"]
    assert await server.fetchrow(info, mdtrt_id) == before
    long_ago = his.visit_info_input(mdtrt_id, PSN, "11", registered.strftime(_SHOWN))
    long_ago["diseinfo"][0]["diag_time"] = "2015-03-02 09:00:00"
    await his.ok("2203", long_ago)

    # Earlier the same day, as HIS send a bare date for it, is the visit's own day.
    same_day = registered.replace(hour=0, minute=0, second=0).strftime(_SHOWN)
    await his.visit_info(mdtrt_id, PSN, "11", same_day)


async def test_a_visit_info_dated_ahead_is_refused_not_deferred(server: Server) -> None:
    his = server.client(HOSPITAL)
    mdtrt_id = await his.register(
        PSN, "310", dt.datetime.now().strftime(_SHOWN), "MZ-INFO-DATES-DEFER"
    )
    await set_rule(server.dsn, "region:441800", "encounter", "defer", "演练主动报")
    ahead = "2099-06-05 10:00:00"
    try:

        async def refused_in_force() -> bool:
            answer = await his.call("2203", his.visit_info_input(mdtrt_id, PSN, "11", ahead))
            return answer["infcode"] == -1 and "未来日期" in answer["err_msg"]

        await until(refused_in_force)
        deferring = await his.call(
            "2201",
            {"data": {"psn_no": PSN, "insutype": "310", "begntime": "2099-06-05 10:00:00"}},
        )
        assert deferring["infcode"] == -1  # the rule in force refuses dates as before
        assert await server.fetchval("SELECT count(*) FROM deferred") == 0
    finally:
        await clear_rule(server.dsn, "region:441800", "encounter")
