"""One settlement, whichever way it enters: the group commit, the single path, the deferred
replay, the bulk correction and 自费转医保 settle the same request to the same answer and rows.

Three gateways on fresh databases with the demo data receive one fixed sequence of requests with
the same msgids, one request at a time:

- `grouped`: the group commit on (the default), so 2102 and 2207 go through it as batches of one;
- `single`: the group commit off (`[group_commit] writers = 0`), every settlement on the single
  path;
- `deferred`: the region's settlements under the plan's `defer`, then `deferred replay`.

Part R (service dates in 2025, account not asked for) goes to all three; part S (2026, the
account asked for, caps and the account running out) to the two online ones. The grouped and
single gateways must answer byte for byte alike (clocks and drawn ids aside) and leave the same
ledger rows; the replayed settlements must be those the single path made online (settlement-rules
§7: replay does not use the account, so part R asks for none). Last, the same wrong mapping is
corrected in bulk on one gateway and at the counter (2208 → 3301 → 2207) on the other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from msgspec.structs import replace

from gateway.app.config import GroupCommitConfig
from gateway.ledger.settlements import AMOUNT_FIELDS
from tests.integration.conftest import GENEROUS, Server, running_gateway
from tests.integration.emergency_helpers import clear_rule, set_rule, until
from tests.integration.parity_helpers import (
    Counter,
    IdNames,
    Person,
    Script,
    Step,
    Visit,
    ledger,
    line,
    normalised_answer,
    table,
    total,
)

pytestmark = pytest.mark.integration

EMPLOYEE = Person("441800000000000001", "310")  # account 2000.00
RETIREE = Person("441800000000000002", "310")  # account 5000.00, retiree bonus
CIVIL = Person("441800000000000003", "310")  # account 3000.00, civil-servant subsidy
RESIDENT = Person("441800000000000004", "390")  # no account; small outpatient cap
DIBAO = Person("441800000000000005", "390")  # medical assistance
WENZHOU = Person("330300000000000001", "310", "330300")  # insured elsewhere, account usable here
BIJIE = Person("520500000000000001", "310", "520500")  # insured elsewhere, account not usable here

HOSPITAL = "H44180000001"  # level 3
COUNTY = "H44180000002"  # level 2; on the replay gateway its admissions are taken self-pay
PHARMACY = "P44180000001"
WRONG_ITEM = "YP9301"  # mapped to a class-A code by mistake, corrected to its class-B code
WRONG_CLASS_A = "XA10BAA020A001010100004"
CLASS_B = "XC10AAA140A001010100003"

CONSULT = line("1", "ZL0001", "25", 1)
BIG = [CONSULT, line("2", "YP0001", "100", 30)]  # 3025.00, class A: past the outpatient cap twice
CLASS_B_VISIT = [CONSULT, line("2", "YP0003", "40", 40)]  # 1625.00, 10% first self-pay
RESIDENT_VISIT = [CONSULT, line("2", "YP0003", "40", 25)]  # 1025.00: the resident cap in one
MIXED = [CONSULT, line("2", "YP0003", "40", 2), line("3", "YP0010", "35", 1)]  # class C too
DRUGS = [line("1", "YP0003", "40", 20)]  # 800.00
FEW_DRUGS = [line("1", "YP0001", "20", 5)]  # 100.00
DRUG_MIX = [line("1", "YP0003", "40", 3), line("2", "YP0010", "35", 1)]  # 155.00
SURGERY = [
    line("1", "ZL0003", "80", 10),  # bed over its 60.00 cap
    line("2", "ZL0009", "30000", 1),
    line("3", "HC0002", "9000", 2),  # stent over its cap, 30% first self-pay
    line("4", "YP0006", "6000", 2),  # restricted drug, approved
    line("5", "ZL0008", "20", 20),
]  # 61200.00: past the residents' critical-illness threshold
WARD = [line("1", "ZL0003", "60", 10), line("2", "ZL0008", "20", 20)]  # 1000.00
WARD_AFTER = [
    line("3", "ZL0008", "20", -5, init_feedetl_sn="2"),  # a refund of a line settled mid-way
    line("4", "ZL0004", "30", 10),
]  # 200.00
ASSISTED = [line("1", "ZL0003", "60", 10), line("2", "ZL0006", "400", 5)]  # 2600.00
ASSISTED_AFTER = [line("3", "YP0001", "100", 90)]  # 9000.00
CORRECTED_VISIT = [line("1", WRONG_ITEM, "40", 2), CONSULT | {"feedetl_sn": "2"}]  # 105.00


def mapping(item: str, code: str) -> Callable[[Counter], Any]:
    data = {
        "fixmedins_hilist_id": item,
        "fixmedins_hilist_name": "阿托伐他汀钙片",
        "list_type": "101",
        "med_list_codg": code,
        "begndate": "2026-01-01",
        "enddate": "2099-12-31",
    }
    return lambda c: {"data": data}


def outpatient(
    s: Script,
    v: str,
    p: Person,
    day: str,
    lines: list[dict[str, Any]],
    acct: str,
    *,
    presettle: bool = False,
) -> str:
    s.register(v, HOSPITAL, p, f"{day} 08:30:00")
    s.visit_info(v, f"{day} 08:30:00")
    s.upload(v, lines, f"{day} 08:40:00", "B1")
    if presettle:
        s.presettle(v, "B1", total(lines), acct)
    return s.settle(v, "B1", total(lines), acct)


def stay(
    s: Script,
    v: str,
    code: str,
    p: Person,
    days: tuple[str, str],
    parts: list[list[dict[str, Any]]],
    acct: str,
) -> str:
    """Admission, each part uploaded (all but the last settled mid-way), discharge, final."""
    admitted, discharged = days
    s.admit(v, code, p, f"{admitted} 10:00:00")
    day = dt.date.fromisoformat(admitted)
    for n, part in enumerate(parts):
        day += dt.timedelta(days=1)
        s.upload(v, part, f"{day} 10:00:00", tag=str(n))
        if n < len(parts) - 1:
            s.settle_stay(v, total(part), "1", acct, tag=str(n))
    s.discharge(v, f"{discharged} 10:00:00")
    s.presettle_stay(v, total(parts[-1]), "0", acct)
    return s.settle_stay(v, total(parts[-1]), "0", acct)


def part_r(r: Script) -> Script:
    """2025, account not asked for: what the replay gateway receives too."""
    outpatient(r, "R1", EMPLOYEE, "2025-03-03", BIG, "0", presettle=True)
    outpatient(r, "R2", RESIDENT, "2025-03-05", RESIDENT_VISIT, "0")
    r.sale("R3", PHARMACY, WENZHOU, "2025-03-06 10:00:00", DRUG_MIX, "0", presettle=True)
    r.sale("R4", PHARMACY, EMPLOYEE, "2025-03-07 10:00:00", FEW_DRUGS, "0")
    r.cancel_sale("R4")
    outpatient(r, "R5", EMPLOYEE, "2025-04-04", BIG, "0")  # the year's pool cap reached
    first = outpatient(r, "R6", CIVIL, "2025-05-05", CLASS_B_VISIT, "0")
    r.cancel("R6", first)
    r.settle("R6", "B1", total(CLASS_B_VISIT), "0", tag="again")
    stay(r, "R7", HOSPITAL, RESIDENT, ("2025-06-01", "2025-06-08"), [SURGERY], "0")
    stay(r, "R8", HOSPITAL, RETIREE, ("2025-07-01", "2025-07-06"), [WARD, WARD_AFTER], "0")
    stay(r, "R9", HOSPITAL, DIBAO, ("2025-08-01", "2025-08-05"), [ASSISTED + ASSISTED_AFTER], "0")
    outpatient(r, "R10", BIJIE, "2025-09-09", MIXED, "0")
    stay(r, "R11", COUNTY, CIVIL, ("2025-10-10", "2025-10-15"), [WARD], "0")  # 自费转医保
    return r


def part_s(s: Script) -> Script:
    """2026, the account asked for: caps and the account run out along the way."""
    s.step("S0.3301", HOSPITAL, "3301", mapping(WRONG_ITEM, WRONG_CLASS_A))
    outpatient(s, "S1", EMPLOYEE, "2026-02-03", BIG, "1", presettle=True)
    s.sale("S2", PHARMACY, EMPLOYEE, "2026-02-10 10:00:00", DRUGS, "1", presettle=True)
    s.sale("S3", PHARMACY, RETIREE, "2026-02-11 10:00:00", DRUG_MIX, "1")
    s.cancel_sale("S3")
    s.sale("S4", PHARMACY, RESIDENT, "2026-02-12 10:00:00", FEW_DRUGS, "1")
    outpatient(s, "S5", RESIDENT, "2026-02-13", RESIDENT_VISIT, "1")
    outpatient(s, "S6", CIVIL, "2026-02-14", CLASS_B_VISIT, "1", presettle=True)
    outpatient(s, "S7", WENZHOU, "2026-03-03", CLASS_B_VISIT, "1")
    outpatient(s, "S8", BIJIE, "2026-03-04", MIXED, "1")
    capped = outpatient(s, "S9", EMPLOYEE, "2026-03-10", BIG, "1")  # cap, account empty
    s.again("S9.retry", capped)
    s.settle("S9", "B1", total(BIG), "1", tag="twice", expect=-1)  # 已结算
    s.sale("S10", PHARMACY, CIVIL, "2026-03-12 10:00:00", DRUGS, "1")
    s.sale("S11", PHARMACY, CIVIL, "2026-03-12 11:00:00", FEW_DRUGS, "1", medfee="99.00", expect=-1)
    s.register("S12", HOSPITAL, RETIREE, "2026-03-20 08:30:00")
    s.visit_info("S12", "2026-03-20 08:30:00")
    s.upload("S12", MIXED, "2026-03-20 08:40:00", "B1")
    s.settle("S12", "B1", "150.00", "1", tag="wrong", expect=-1)
    first = s.settle("S12", "B1", total(MIXED), "1")
    s.cancel("S12", first)
    s.settle("S12", "B1", total(MIXED), "1", tag="again")
    s.admit("S13", HOSPITAL, RETIREE, "2026-04-01 10:00:00")
    s.upload("S13", WARD, "2026-04-02 10:00:00", tag="0")
    s.presettle_stay("S13", total(WARD), "1", "1")
    s.settle_stay("S13", total(WARD), "0", "1", tag="early", expect=-1)  # not discharged
    s.settle_stay("S13", total(WARD), "1", "1")
    s.upload("S13", WARD_AFTER, "2026-04-05 10:00:00", tag="1")
    s.discharge("S13", "2026-04-06 10:00:00")
    final = s.settle_stay("S13", total(WARD_AFTER), "0", "1")
    s.cancel("S13", final)
    s.settle_stay("S13", total(WARD_AFTER), "0", "1", tag="again")
    stay(s, "S14", HOSPITAL, RESIDENT, ("2026-05-10", "2026-05-18"), [SURGERY], "1")
    stay(s, "S15", HOSPITAL, DIBAO, ("2026-06-10", "2026-06-15"), [ASSISTED, ASSISTED_AFTER], "1")
    stay(s, "S16", HOSPITAL, EMPLOYEE, ("2026-07-01", "2026-07-05"), [SURGERY], "1")
    stay(s, "S17", HOSPITAL, EMPLOYEE, ("2026-08-01", "2026-08-04"), [WARD], "1")  # repeat dedc
    stay(s, "S18", COUNTY, WENZHOU, ("2026-09-01", "2026-09-04"), [WARD, ASSISTED_AFTER], "1")
    outpatient(s, "S19", CIVIL, "2026-04-08", CORRECTED_VISIT, "1")
    s.step(
        "S20.5203",
        HOSPITAL,
        "5203",
        lambda c: {"data": {"setl_id": c.setl("S6.2207B1"), "psn_no": CIVIL.psn_no}},
    )
    return s


async def cli(*args: str) -> tuple[int, str, str]:
    """`python -m gateway …` as an operator runs it: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


Rows = dict[str, list[dict[str, Any]]]
REPLAY_VIEW = {
    # Each settlement in force, by msgid. Left aside: the ids and event numbers drawn, and the
    # link to a refunded predecessor (a withdrawn claim never became a settlement to replace).
    "settlements": (
        "SELECT * FROM settlements WHERE status = 'settled'",
        ("setl_id", "replaces_setl_id", "in_force_seq", "cancel_seq", "cancel_msgid"),
    ),
    "settlement_funds": (
        "SELECT s.medins_setl_id, s.psn_no, f.* FROM settlement_funds f"
        " JOIN settlements s USING (setl_id) WHERE s.status = 'settled'",
        ("setl_id",),
    ),
    "fee_lines": (
        "SELECT s.medins_setl_id, l.* FROM fee_lines l"
        " JOIN settlements s ON s.setl_id = l.setl_id WHERE s.status = 'settled'",
        ("setl_id", "released_from"),
    ),
    "encounters": (
        "SELECT * FROM encounters e WHERE EXISTS (SELECT 1 FROM settlements s"
        " WHERE s.mdtrt_id = e.mdtrt_id AND s.status = 'settled')",
        (),
    ),
    "accumulators": ("SELECT * FROM accumulators", ()),
    "accounts": ("SELECT * FROM accounts", ()),
}


async def replay_view(server: Server) -> Rows:
    """What a replay must reproduce: the settlements in force and everything they left."""
    names = await IdNames.of(server)
    return {
        name: await table(server, names, sql, drop=drop)
        for name, (sql, drop) in REPLAY_VIEW.items()
    }


async def money(server: Server) -> Rows:
    """Accumulators and balances: what a re-settlement moves, whichever way it is made."""
    names = IdNames({}, {})
    return {
        name: await table(server, names, f"SELECT * FROM {name}")
        for name in ("accumulators", "accounts")
    }


@dataclass
class Run:
    r: Script
    s: Script
    grouped: Counter
    single: Counter
    deferred: Counter
    replay_summary: dict[str, Any]
    claims: dict[str, dict[str, Any]]  # by msgid
    single_after_r: Rows
    replayed: Rows
    grouped_ledger: Rows
    single_ledger: Rows
    grouped_answers: dict[str, bytes]
    single_answers: dict[str, bytes]
    corrected: list[dict[str, Any]]  # `corrections apply --json`, one row per settlement
    bulk: list[dict[str, Any]]  # the corrected visit's settlements, oldest first
    counter: list[dict[str, Any]]
    bulk_funds: list[dict[str, Any]]  # the re-settlement's fund rows
    counter_funds: list[dict[str, Any]]
    bulk_money: Rows
    counter_money: Rows


# R8's closing settlement: on the replay gateway the counter sends it after recovery, once its
# mid-way settlement has been replayed; a closing claim taken while the mid-way claim is pending
# would claim the mid-way claim's lines a second time (a 2304 covers every unsettled line).
AFTER_RECOVERY = frozenset({"R8.2303.0", "R8.2304.0"})
PROBE = {
    "druginfo": {
        "psn_no": EMPLOYEE.psn_no,
        **EMPLOYEE.cert(),
        "begntime": "2025-01-02 10:00:00",
        "medfee_sumamt": "100.00",
        "insutype": "310",
        "acct_used_flag": "0",
        "med_type": "41",
    },
    "drugdetail": [
        {
            "feedetl_sn": "1",
            "medins_list_codg": "YP0001",
            "pric": "20",
            "cnt": "5",
            "det_item_fee_sumamt": "100.00",
            "fee_ocur_time": "2025-01-02 10:00:00",
        }
    ],
}


async def _send_alike(step: Step, *sides: Counter) -> None:
    for side in sides:
        answer = await side.send(step)
        assert answer["infcode"] == step.expect, (step.name, answer["err_msg"])


@pytest.fixture(scope="module")
async def run(new_database: Callable[..., Any]) -> AsyncIterator[Run]:
    today = dt.date.today()
    visits: dict[str, Visit] = {}
    r = part_r(Script(f"{today:%Y%m%d}090001", visits))
    s = part_s(Script(f"{today:%Y%m%d}090002", visits))
    # The counter's repair of S19: refund, correct the mapping, settle the same batch again.
    c = Script(f"{today:%Y%m%d}090003", visits)
    c.cancel("S19", "S19.2207B1")
    fix = c.step("C.3301", HOSPITAL, "3301", mapping(WRONG_ITEM, CLASS_B))
    c.settle("S19", "B1", total(CORRECTED_VISIT), "1", tag="again")
    async with AsyncExitStack() as stack:
        g_srv = await stack.enter_async_context(running_gateway(new_database))
        x_srv = await stack.enter_async_context(
            running_gateway(
                new_database, replace(GENEROUS, group_commit=GroupCommitConfig(writers=0))
            )
        )
        d_srv = await stack.enter_async_context(running_gateway(new_database))
        # The self-pay rule first: once the later defer rule is seen, both are in force.
        await set_rule(d_srv.dsn, f"institution:{COUNTY}", "encounter", "selfpay", "演练自费入院")
        await set_rule(d_srv.dsn, "region:441800", "settlement", "defer", "演练主动报")

        async def deferring(expected: bool = True) -> bool:
            answered = await d_srv.client(PHARMACY).call("2101", PROBE)  # writes nothing
            return ("应急预案" in (answered["warn_msg"] or "")) == expected

        await until(deferring)
        grouped, single = Counter(g_srv, visits), Counter(x_srv, visits)
        deferred = Counter(d_srv, visits)
        for step in r.steps:
            await _send_alike(step, grouped, single)
            if step.name not in AFTER_RECOVERY:
                await _send_alike(step, deferred)  # claims are answered too, all cash
        single_after_r = await replay_view(x_srv)

        code, out, err = await cli(
            "encounter", "convert", "--mdtrt-id", deferred.mdtrt("R11"), "--reason", "演练恢复",
            "--database-url", d_srv.dsn,
        )  # fmt: skip
        assert code == 0, out + err
        _, out, err = await cli("deferred", "replay", "--json", "--database-url", d_srv.dsn)
        replay_summary = json.loads(out)
        claims = {
            row["msgid"]: dict(row)
            for row in await d_srv.fetch("SELECT * FROM deferred WHERE kind = 'claim'")
        }
        # Back to normal: the stay whose mid-way settlement was deferred is settled finally at
        # the counter, as it was online on the other gateways.
        await clear_rule(d_srv.dsn, "region:441800", "settlement")
        await until(lambda: deferring(expected=False))
        for step in r.steps:
            if step.name in AFTER_RECOVERY:
                await deferred.send(step)
        replayed = await replay_view(d_srv)

        for step in s.steps:
            await _send_alike(step, grouped, single)
        grouped_ledger, single_ledger = await ledger(g_srv), await ledger(x_srv)
        g_names, x_names = await IdNames.of(g_srv), await IdNames.of(x_srv)
        grouped_answers = {k: normalised_answer(v, g_names) for k, v in grouped.raw.items()}
        single_answers = {k: normalised_answer(v, x_names) for k, v in single.raw.items()}

        # The same wrong mapping corrected in bulk on the grouped gateway and at the counter on
        # the single one.
        await _send_alike(next(st for st in c.steps if st.name == fix), grouped)
        code, out, err = await cli(
            "corrections", "apply", "--institution", HOSPITAL, "--item", WRONG_ITEM, "--json",
            "--database-url", g_srv.dsn,
        )  # fmt: skip
        assert code == 0, out + err
        corrected = [json.loads(row) for row in out.splitlines() if row.startswith("{")]
        for step in c.steps:
            await _send_alike(step, single)
        query = "SELECT * FROM settlements WHERE mdtrt_id = $1 ORDER BY in_force_seq"
        bulk = [dict(row) for row in await g_srv.fetch(query, grouped.mdtrt("S19"))]
        counter = [dict(row) for row in await x_srv.fetch(query, single.mdtrt("S19"))]
        funds = (
            "SELECT fund_pay_type, fund_pay_type_name, fund_payamt, inscp_scp_amt,"
            " crt_payb_lmt_amt FROM settlement_funds WHERE setl_id = $1 ORDER BY fund_pay_type"
        )
        bulk_funds = [dict(row) for row in await g_srv.fetch(funds, bulk[-1]["setl_id"])]
        counter_funds = [dict(row) for row in await x_srv.fetch(funds, counter[-1]["setl_id"])]
        for srv in (g_srv, x_srv, d_srv):
            assert await srv.check_ledger() == []
        yield Run(
            r, s, grouped, single, deferred, replay_summary, claims, single_after_r, replayed,
            grouped_ledger, single_ledger, grouped_answers, single_answers, corrected, bulk,
            counter, bulk_funds, counter_funds, await money(g_srv), await money(x_srv),
        )  # fmt: skip


GROUPED_INFNOS = frozenset({"2102", "2201", "2203", "2204", "2207"})
CLAIM_INFNOS = frozenset({"2102", "2207", "2304"})
ENCOUNTER_INFNOS = GROUPED_INFNOS - CLAIM_INFNOS
GROUPED_CLAIM_INFNOS = frozenset({"2102"})  # a pharmacy's claim touches no visit: a job too
REFUSED_BEFORE_THE_LEDGER = frozenset({"S11.2102"})  # medfee_sumamt 99.00, its lines less


async def test_the_grouped_gateway_settled_through_the_group_commit_and_the_single_did_not(
    run: Run,
) -> None:
    """Without this the comparisons below could be the single path compared with itself."""
    for step in run.r.steps + run.s.steps:
        # A batch of one each; but a sale whose total its lines do not make is refused as its
        # job is made, before the ledger, on both paths alike.
        grouped = step.infno in GROUPED_INFNOS and step.name not in REFUSED_BEFORE_THE_LEDGER
        expected = 1 if grouped else 0
        assert run.grouped.batches[step.name] == expected, step.name
        assert run.single.batches[step.name] == 0, step.name
    for step in run.r.steps:
        # Claims are not settled online: a pharmacy's is staged through the group commit as a
        # claim, a visit's takes the single path; a registration, a diagnosis and an upload are
        # no settlements and go their normal (grouped) way under the settlement class's defer
        # rule.
        grouped_here = ENCOUNTER_INFNOS | GROUPED_CLAIM_INFNOS
        expected = 1 if step.infno in grouped_here else 0
        assert run.deferred.batches[step.name] == expected, step.name
    grouped = [s for s in run.r.steps + run.s.steps if s.infno in GROUPED_INFNOS]
    assert {s.infno for s in grouped} == GROUPED_INFNOS and len(grouped) > 20


async def test_grouped_and_single_answers_are_the_same_bytes(run: Run) -> None:
    """Every answer, refusals and a retry included, byte for byte once the clocks are blanked
    and each 就诊ID / 结算ID is named by the msgid that created it."""
    assert run.grouped_answers.keys() == run.single_answers.keys()
    unnamed = re.compile(rb'"(mdtrt_id|setl_id)":"\d')
    for name, answer in run.grouped_answers.items():
        # Every id answered is one the ledger holds (else it would not have been named).
        assert not unnamed.search(answer), (name, answer)
        assert answer == run.single_answers[name], name
    refusals = [n for n, a in run.grouped.answers.items() if a["infcode"] != 0]
    assert len(refusals) == 4
    # The retry of a settled msgid gets the stored answer again, on both paths.
    for side in (run.grouped, run.single):
        assert side.raw["S9.retry"] == side.raw["S9.2207B1"]


async def test_grouped_and_single_leave_the_same_ledger_rows(run: Run) -> None:
    """Settlements, fund rows, events in order, accumulators, balances, lines, visits and the
    msgid journal, with time columns left out and drawn ids named by msgid."""
    assert run.grouped_ledger.keys() == run.single_ledger.keys()
    for name, rows in run.grouped_ledger.items():
        assert rows, name
        assert rows == run.single_ledger[name], name


def _without(view: Rows, psn_no: str) -> Rows:
    return {
        name: [row for row in rows if row.get("psn_no") != psn_no] for name, rows in view.items()
    }


def _only(view: Rows, psn_no: str) -> Rows:
    return {
        name: [row for row in rows if row.get("psn_no") == psn_no] for name, rows in view.items()
    }


async def test_replayed_claims_settle_as_the_single_path_settled_them(run: Run) -> None:
    """Part R deferred, 自费转医保 for the self-pay admission, then `deferred replay`: every
    settlement in force, its funds, lines and visit, the accumulators and the balances are those
    the single path left online (the account asked for nowhere; settle-then-refund online is a
    withdrawn claim here). The retiree's stay with a mid-way settlement is the next test's."""
    claimed = [s for s in run.r.steps if s.infno in CLAIM_INFNOS and s.name not in AFTER_RECOVERY]
    for step in claimed:
        info = run.deferred.answers[step.name]["output"]["setlinfo"]
        assert info["setl_id"].startswith("DF") and info["psn_cash_pay"] == info["medfee_sumamt"]
    assert "自费" in run.deferred.answers["R11.2401"]["warn_msg"]
    withdrawn = {run.deferred.setl(name) for name in ("R4.2102", "R6.2207B1")}
    assert {c["claim_id"] for c in run.claims.values() if c["status"] == "withdrawn"} == withdrawn
    stay = run.deferred.mdtrt("R8")
    assert {f["mdtrt_id"] for f in run.replay_summary["failed"]} <= {stay}  # next test's
    summary = run.replay_summary
    assert summary["total"] == len(claimed) - len(withdrawn)
    assert summary["settled"] == summary["total"] - len(summary["failed"])

    online = _without(run.single_after_r, RETIREE.psn_no)
    replayed = _without(run.replayed, RETIREE.psn_no)
    assert len(online["settlements"]) == 9
    assert {r["psn_no"] for r in online["settlements"]} == {
        p.psn_no for p in (EMPLOYEE, RESIDENT, WENZHOU, CIVIL, DIBAO, BIJIE)
    }
    for name, rows in online.items():
        assert replayed[name] == rows, name
    converted = [e for e in replayed["encounters"] if e["ipt_otp_no"] == "ZY-R11"]
    assert len(converted) == 1 and converted[0]["selfpay"] is False
    # What the fund reimburses the patient is what it paid online.
    for row in online["settlements"]:
        claim = run.claims[row["medins_setl_id"]]
        assert claim["status"] == "settled"
        assert claim["reimbursement_fen"] == row["fund_pay_sumamt"] + row["acct_pay"]
        assert row["acct_pay"] == 0


async def test_a_deferred_midway_settlement_replays_as_it_settled_online(run: Run) -> None:
    """R8: lines, a mid-way 2304 (deferred), more lines, discharge; after recovery the closing
    2304 at the counter. Online the mid-way settlement took 1000.00, the closing one 200.00."""
    assert run.replay_summary["failed"] == []
    assert run.deferred.answers["R8.2304.0"]["infcode"] == 0
    assert _only(run.replayed, RETIREE.psn_no) == _only(run.single_after_r, RETIREE.psn_no)


AMOUNTS = (*AMOUNT_FIELDS, "pool_prop_bp", "delta", "lines", "category", "med_type", "year")


async def test_a_bulk_correction_resettles_as_the_counter_does(run: Run) -> None:
    """S19 used a wrong class-A mapping. `corrections apply` on one gateway and 2208 → 3301 →
    2207 at the counter on the other give the same settlement, funds, accumulators, balances."""
    assert [c["old_setl_id"] for c in run.corrected] == [run.grouped.setl("S19.2207B1")]
    for rows in (run.bulk, run.counter):
        assert [r["status"] for r in rows] == ["cancelled", "settled"]
        assert rows[1]["replaces_setl_id"] == rows[0]["setl_id"]
    bulk, counter = run.bulk[1], run.counter[1]
    assert {k: bulk[k] for k in AMOUNTS} == {k: counter[k] for k in AMOUNTS}
    assert run.bulk_funds == run.counter_funds
    assert run.bulk_money == run.counter_money
    # The correction moved money: a first self-pay share now, less from the funds.
    before = run.bulk[0]
    assert before["preselfpay_amt"] == 0 < bulk["preselfpay_amt"]
    assert bulk["fund_pay_sumamt"] < before["fund_pay_sumamt"]
    assert bulk["acct_pay"] > before["acct_pay"]
