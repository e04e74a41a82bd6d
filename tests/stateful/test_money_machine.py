"""Funds never pay more than the rules give, whatever the sequence: a hypothesis state machine
against a real gateway over HTTP.

Each example takes four fresh persons (an employee with an account, a resident, a retiree with a
chronic registration, an employee insured in another region) and drives them through random
outpatient visits, stays and pharmacy sales at five institutions of two regions: uploads, refund
lines (of charges not yet settled, and of charges settled mid-way, netted against the next
settlement), withdrawn lines, pre-settlements, settlements (mid-way and closing), cancellations,
reversals (2601) of settlements, of cancellations and of admissions, 2404, 3301 mapping changes,
and dates in the past, today, across the year boundary and in the future. The machine keeps its
own expectation in the independent model (tests/reference): every accepted settlement must
answer the model's amounts, every refusal must be one the rules call for, and after every step
the ledger checker's money invariants hold with the model as the rules
(gateway/ledger/checker.py) and no balance is below zero.

The two operators' undo paths are driven too, in-process through the functions their commands
call, against the gateway's own database:
- 自费转医保: SELFPAY_HOSPITAL is under the emergency plan's `selfpay` action for its admissions
  (set once, through the plan store, before the first example), so each 2401 there opens a
  self-pay stay; its settlements are refused until `conversion.convert` (`python -m gateway
  encounter convert`) converts it, which is refused for a stay not self-pay or cancelled; the
  converted stay then settles to the model's amounts.
- bulk catalog corrections: after a 3301 re-maps an item, `corrections.targets`, `plan` and
  `apply` (`python -m gateway corrections plan|apply`) must pick the model's settlements (in
  force, a line of the item resolved through another mapping than the one on its fee date now),
  in the order they were made, and re-settle each to the model's amounts (cancel exactly, settle
  the same lines again through the corrected mapping against the accumulators of that moment),
  or list it as refused where the rules refuse it and leave it in force; the plan must be what
  apply does, an interrupted run resumed over the same list skips what was corrected, and a
  second run finds nothing more. The re-settlement keeps the counter's msgid, so a 2601 of the
  original is refused and the new one is cancelled by its setl_id.

STATEFUL_N examples (default 25), STATEFUL_STEPS steps each (default 30), STATEFUL_SEED the seed
(default: drawn and printed); `make stateful N=500 SEED=7` runs more.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.app.reference import Reference, load_reference
from gateway.app.server import DEFAULT_REFERENCE
from gateway.core.catalog import Snapshot
from gateway.emergency.plan import store
from gateway.jobs import corrections
from gateway.ledger import checker, reference_store
from gateway.protocol.errors import GatewayError
from gateway.services import conversion
from tests.integration.his_client import HisClient
from tests.reference.data import Person, ReferenceData, load
from tests.reference.ledger_model import ModelRules
from tests.reference.model import GROUP, FeeLine, Model, Rejected, Visit
from tests.reference.model import Settlement as ModelSettlement
from tests.reference.money import fen_text, line_total_fen
from tests.stateful.harness import Harness

pytestmark = pytest.mark.integration

N = int(os.environ.get("STATEFUL_N", "25"))
STEPS = int(os.environ.get("STATEFUL_STEPS", "30"))
SEED = int(os.environ.get("STATEFUL_SEED") or random.SystemRandom().randrange(1, 2**31))

TEMPLATES = {
    "employee": "441800000000000001",
    "resident": "441800000000000004",
    "retiree": "441800000000000002",  # 1201, chronic M07800
    "remote": "520500000000000001",  # insured in Bijie: no account away from home
}
HOSPITALS = ("H44180000001", "H44180000003", "H52050000001")
# Under the emergency plan's `selfpay` action for its admissions (set once, before the examples):
# every 2401 there opens a self-pay stay that must be converted (自费转医保) before it settles.
SELFPAY_HOSPITAL = "H44180000002"
PHARMACY = "P44180000001"
ITEMS = {
    "ZL0001": ("12.50", "30.00"),  # class 01
    "ZL0003": ("80.00", "150.00"),  # class 01 bed
    "YP0003": ("35.20", "88.00"),  # class 02: first self-pay
    "YP0006": ("1200.00", "2600.00"),  # restricted: covered only when approved
    "HC0004": ("300.00",),  # class 03: self-pay
    "ZL0006": ("260.00", "420.00"),  # class 02
}
DRUGS = {"YP0001": ("18.60",), "YP0003": ("35.20",), "YP0007": ("9.90", "19.80")}
DEMO = load()
DEMO_SEQ = max(m.seq for rows in DEMO.mappings.values() for m in rows)
_ids = itertools.count(1)
_people = itertools.count(1)
# What the runs exercised, printed at the end: transactions by infno and answer.
COUNTS: Counter[str] = Counter()


def _at(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _days() -> dict[str, dt.datetime]:
    now = dt.datetime.now().replace(microsecond=0)
    last = now.year - 1
    return {
        "today": now - dt.timedelta(hours=3),
        "past": now - dt.timedelta(days=40),
        "dec31": dt.datetime(last, 12, 31, 9, 0),
        "jan1": dt.datetime(now.year, 1, 1, 9, 0),
        "future": now + dt.timedelta(days=2),
    }


def _fen(value: Any) -> int:
    return int(Decimal(value) * 100)


@dataclass
class Stay:
    """An outpatient visit, an admission or a pharmacy sale of this example."""

    kind: str  # outpatient | inpatient | pharmacy
    mdtrt_id: str
    code: str
    psn: Person
    begin: dt.datetime
    med_type: str
    dise_codg: str = ""
    lines: dict[str, FeeLine] = field(default_factory=dict)
    settled_by: dict[str, str] = field(default_factory=dict)  # feedetl_sn -> setl_id
    discharged: bool = False
    cancelled: bool = False
    selfpay: bool = False  # admitted self-pay under the plan, not converted yet
    admit_msgid: str = ""  # of its 2401

    def unsettled(self) -> list[FeeLine]:
        return [ln for sn, ln in self.lines.items() if sn not in self.settled_by]


@dataclass
class Setl:
    setl_id: str
    msgid: str
    infno: str
    stay: Stay
    sns: list[str]
    made: ModelSettlement
    final: bool  # a closing inpatient settlement
    in_at: int
    acct: str = "0"  # acct_used_flag
    corrects: str = ""  # the setl_id a bulk correction re-settled into this one
    status: str = "settled"
    cancelled_at: int = 0
    cancel_msgid: str = ""  # of the 2208/2305/2103 that cancelled it (not a 2601)
    lines_changed: bool = False

    @property
    def group(self) -> str:
        return GROUP[self.made.effects.category]

    @property
    def year(self) -> int:
        return self.made.effects.year


class Remap(NamedTuple):
    code: str
    item: str
    national: str
    begin: dt.date


CANCEL_OF = {"2207": "2208", "2304": "2305", "2102": "2103"}
CORRECTION_RUNS = ("apply", "plan and apply", "interrupted")


class MoneyMachine(RuleBasedStateMachine):
    harness: Harness
    data: ReferenceData

    def __init__(self) -> None:
        super().__init__()
        h = self.harness
        self.model = Model(self.data)
        self.persons: dict[str, Person] = {}
        self.opening: dict[str, int] = {}
        self.stays: list[Stay] = []
        self.setls: list[Setl] = []
        self.reversed: set[str] = set()  # msgids a 2601 has reversed
        self.seq = 0
        self.remaps = 0
        self.undone = 0
        self.remapped: list[Remap] = []
        self.days = _days()
        self.trail: list[str] = []
        self.clients = {
            code: h.server.client(code, self.data.institutions[code].region)
            for code in (*HOSPITALS, SELFPAY_HOSPITAL, PHARMACY)
        }

    @initialize(
        balances=st.lists(st.sampled_from((0, 3000, 50000, 200000)), min_size=4, max_size=4)
    )
    def persons_of_the_example(self, balances: list[int]) -> None:
        for (kind, template), balance in zip(TEMPLATES.items(), balances, strict=True):
            self.persons[kind] = self.harness.run(self._person(template, balance))

    async def _person(self, template: str, balance: int) -> Person:
        base = self.data.persons[template]
        psn_no = f"{base.region}9{next(_people):011d}"
        balance = balance if base.employee else 0
        await self.harness.server.fetch(
            "INSERT INTO persons SELECT $2, psn_name, psn_cert_type, $2, gend, brdy, insuplc_admdvs,"
            " insutype, psn_type, psn_insu_stas, cvlserv_flag, maf_class, chronic_dise_codg, ''"
            " FROM persons WHERE psn_no = $1",
            template,
            psn_no,
        )
        await self.harness.server.fetch("INSERT INTO accounts VALUES ($1, $2)", psn_no, balance)
        person = Person(
            psn_no=psn_no,
            name=base.name,
            certno=psn_no,
            region=base.region,
            insutype=base.insutype,
            psn_type=base.psn_type,
            insured=True,
            cvlserv=base.cvlserv,
            balance_fen=balance,
            maf_class=base.maf_class,
            chronic=base.chronic,
            card="",
        )
        self.data.persons[psn_no] = person
        self.model.balances[psn_no] = balance
        self.opening[psn_no] = balance
        return person

    # ------------------------------------------------------------------ transport

    def call(self, code: str, infno: str, input_: Any, psn: Person, **kw: Any) -> dict[str, Any]:
        his: HisClient = self.clients[code]
        answer = self.harness.run(his.call(infno, input_, insuplc_admdvs=psn.region, **kw))
        self.trail.append(f"{infno} {code} {psn.psn_no}: {answer['infcode']} {answer['err_msg']}")
        COUNTS[f"{infno} {'ok' if answer['infcode'] == 0 else 'refused'}"] += 1
        return answer

    def ok(self, answer: dict[str, Any], step: str) -> dict[str, Any]:
        assert answer["infcode"] == 0, f"{step} refused where the rules accept: {answer['err_msg']}"
        out = answer["output"]
        assert isinstance(out, dict)
        return out

    def refused(self, answer: dict[str, Any], step: str, why: str) -> None:
        reason = "later settlement" if why.startswith("later settlement") else why  # no setl_id
        COUNTS[f"refused: {reason}"] += 1
        assert answer["infcode"] == -1, f"{step} accepted where the rules refuse ({why})"
        assert answer["err_msg"], step

    def compare(self, step: str, setlinfo: dict[str, Any], want: ModelSettlement) -> None:
        wrong = {
            f: (_fen(setlinfo[f]), v)
            for f, v in want.amounts.items()
            if f in setlinfo and _fen(setlinfo[f]) != v
        }
        assert not wrong, f"{step}: gateway, model (fen) differ: {wrong}"

    # ------------------------------------------------------------------ expectations

    def line(self, stay: Stay, code: str, day: dt.date, rng: random.Random) -> FeeLine:
        item = rng.choice(sorted(DRUGS if stay.kind == "pharmacy" else ITEMS))
        pric = Decimal(rng.choice((DRUGS if stay.kind == "pharmacy" else ITEMS)[item]))
        cnt = Decimal(rng.choice(("1", "2", "3")))
        flag = None if stay.kind == "pharmacy" else rng.choice(("1", "1", "1", "0", "2"))
        return FeeLine(
            feedetl_sn=str(next(_ids)),
            medins_list_codg=item,
            pric=pric,
            cnt=cnt,
            amount_fen=line_total_fen(pric, cnt),
            fee_date=day,
            hosp_appr_flag=flag,
        )

    def expect(self, stay: Stay, lines: list[FeeLine], acct: str) -> ModelSettlement | str:
        """The model's settlement of these lines now, or why the rules refuse it."""
        if not lines:
            return "no lines to settle"
        try:
            splits = self.model.split_lines(stay.code, lines)
            visit = Visit(
                stay.mdtrt_id,
                stay.psn.psn_no,
                stay.code,
                stay.begin.date(),
                stay.med_type,
                stay.dise_codg,
            )
            made = self.model.compute(visit, stay.med_type, splits, acct)
        except Rejected as exc:
            return str(exc)
        if made.amounts["medfee_sumamt"] == 0:
            return "a zero settlement"
        return made

    def came_in(self, s: Setl) -> None:
        self.seq += 1
        s.in_at = self.seq
        s.status = "settled"
        for sn in s.sns:
            s.stay.settled_by[sn] = s.setl_id
        # Lines a cancelled settlement released, settled again by this one: it cannot come back.
        for other in self.setls:
            if other.status == "cancelled" and other.stay is s.stay and set(other.sns) & set(s.sns):
                other.lines_changed = True

    def went_out(self, s: Setl, cancel_msgid: str) -> None:
        self.model.cancel(s.setl_id)
        self.seq += 1
        s.cancelled_at = self.seq
        s.status = "cancelled"
        s.cancel_msgid = cancel_msgid
        for sn in s.sns:
            s.stay.settled_by.pop(sn, None)

    def may_reinstate(self, s: Setl) -> str:
        """Why the rules refuse to put back this cancelled settlement ('' when they do not)."""
        if s.stay.cancelled:
            return "visit cancelled"
        if s.lines_changed or any(sn not in s.stay.lines for sn in s.sns):
            return "lines changed"
        if any(sn in s.stay.settled_by for sn in s.sns):
            return "lines settled again"
        # A batch is settled once, whole; a stay's closing settlement ends it: neither stands
        # again over lines uploaded since (docs/reliability.md, "Undo and dates").
        if (s.stay.kind == "outpatient" or s.final) and any(
            ln.feedetl_sn not in s.sns for ln in s.stay.unsettled()
        ):
            return "lines since"
        if s.final and any(
            other.stay is s.stay
            and other.status == "cancelled"
            and other.cancelled_at > s.cancelled_at
            for other in self.setls
        ):
            return "mid-way cancelled since"
        for other in self.setls:
            if (
                other.status == "settled"
                and other.stay.psn is s.stay.psn
                and other.year == s.year
                and other.group == s.group
                and other.in_at > s.cancelled_at
            ):
                return f"later settlement {other.setl_id}"
        if self.model.balances[s.stay.psn.psn_no] < s.made.amounts["acct_pay"]:
            return "account spent"
        return ""

    # ------------------------------------------------------------------ steps: visits

    def _active(self) -> int:
        return len(self._open("outpatient") + self._open("inpatient"))

    @precondition(lambda self: self._active() < 4)
    @rule(data=st.data())
    def open_visit(self, data: st.DataObject) -> None:
        psn = data.draw(st.sampled_from(sorted(self.persons.values(), key=lambda p: p.psn_no)))
        inpatient = data.draw(st.booleans())
        code = data.draw(
            st.sampled_from((SELFPAY_HOSPITAL, *HOSPITALS) if inpatient else HOSPITALS)
        )
        when = data.draw(st.sampled_from(sorted(self.days)))
        begin = self.days[when]
        if inpatient:
            msgid = self.clients[code].msgid()
            answer = self.call(
                code,
                "2401",
                {
                    "mdtrtinfo": {
                        "psn_no": psn.psn_no,
                        "insutype": psn.insutype,
                        "begntime": _at(begin),
                        "mdtrt_cert_type": "02",
                        "mdtrt_cert_no": psn.certno,
                        "med_type": "21",
                        "ipt_no": f"ZY-SM-{next(_ids)}",
                    },
                    "diseinfo": [],
                },
                psn,
                msgid=msgid,
            )
            if when == "future":
                self.refused(answer, "2401", "admission dated ahead of now")
                return
            mdtrt_id = self.ok(answer, "2401")["result"]["mdtrt_id"]
            selfpay = code == SELFPAY_HOSPITAL
            # The plan's selfpay admission says so, and only it (emergency-plan.md, actions).
            assert ("自费" in (answer["warn_msg"] or "")) == selfpay, answer["warn_msg"]
            self.stays.append(
                Stay(
                    "inpatient",
                    mdtrt_id,
                    code,
                    psn,
                    begin,
                    "21",
                    selfpay=selfpay,
                    admit_msgid=msgid,
                )
            )
            COUNTS["self-pay admissions" if selfpay else "insured admissions"] += 1
            return
        answer = self.call(
            code,
            "2201",
            {
                "data": {
                    "psn_no": psn.psn_no,
                    "insutype": psn.insutype,
                    "begntime": _at(begin),
                    "mdtrt_cert_type": "02",
                    "mdtrt_cert_no": psn.certno,
                    "ipt_otp_no": f"MZ-SM-{next(_ids)}",
                    "atddr_no": "D001",
                    "dr_name": "医生",
                    "dept_code": "K01",
                    "dept_name": "内科",
                    "caty": "A03",
                }
            },
            psn,
        )
        if when == "future":
            self.refused(answer, "2201", "visit dated ahead of now")
            return
        mdtrt_id = self.ok(answer, "2201")["data"]["mdtrt_id"]
        chronic = bool(psn.chronic) and data.draw(st.booleans())
        med_type, dise = ("14", sorted(psn.chronic)[0]) if chronic else ("11", "")
        self.ok(
            self.call(
                code,
                "2203",
                {
                    "mdtrtinfo": {
                        "mdtrt_id": mdtrt_id,
                        "psn_no": psn.psn_no,
                        "med_type": med_type,
                        "begntime": _at(begin),
                        "dise_codg": dise,
                        "dise_name": "",
                    },
                    "diseinfo": [],
                },
                psn,
            ),
            "2203",
        )
        self.stays.append(Stay("outpatient", mdtrt_id, code, psn, begin, med_type, dise))

    def _open(self, kind: str) -> list[Stay]:
        return [s for s in self.stays if s.kind == kind and not s.cancelled and not s.discharged]

    def _has_open(self) -> bool:
        return self._active() > 0

    @precondition(lambda self: self._has_open())
    @rule(data=st.data())
    def upload(self, data: st.DataObject) -> None:
        # A stay's kind first: outpatient visits outnumber stays, whose uploads carry refunds.
        kinds = [k for k in ("inpatient", "outpatient") if self._open(k)]
        stay = data.draw(st.sampled_from(self._open(data.draw(st.sampled_from(kinds)))))
        rng = random.Random(data.draw(st.integers(0, 2**32)))
        lines = [
            self.line(stay, stay.code, stay.begin.date(), rng) for _ in range(rng.randint(1, 3))
        ]
        # Refunds of charges not yet settled here (the next rule refunds settled ones).
        charges = [
            ln for sn, ln in stay.lines.items() if ln.amount_fen > 0 and sn not in stay.settled_by
        ]
        if stay.kind == "inpatient" and charges and data.draw(st.booleans()):
            lines.append(self.refund_of(rng.choice(charges), stay))
        if self.send_lines(stay, lines) and stay.kind == "inpatient" and data.draw(st.booleans()):
            # The ward's routine: the day's fees, then a mid-way settlement of them.
            self.settle(stay, data, pre=False)

    def _refundable(self, stay: Stay) -> list[FeeLine]:
        return [
            ln
            for sn, ln in stay.lines.items()
            if ln.amount_fen > 0 and not ln.init_feedetl_sn and sn in stay.settled_by
        ]

    @precondition(lambda self: any(self._refundable(s) for s in self._open("inpatient")))
    @rule(data=st.data())
    def refund_settled(self, data: st.DataObject) -> None:
        """A refund of a charge settled mid-way, with new charges or none (2301): the next
        settlement nets it against its own lines (§2) and is refused where a component would
        go below zero (§6); a correction re-mapping the item may take it there."""
        stay = data.draw(
            st.sampled_from([s for s in self._open("inpatient") if self._refundable(s)])
        )
        rng = random.Random(data.draw(st.integers(0, 2**32)))
        lines = [
            self.line(stay, stay.code, stay.begin.date(), rng) for _ in range(rng.randint(0, 2))
        ]
        lines.append(self.refund_of(rng.choice(self._refundable(stay)), stay))
        COUNTS["refunds of settled charges uploaded"] += 1
        if self.send_lines(stay, lines) and data.draw(st.booleans()):
            self.settle(stay, data, pre=False)  # settled at once, mid-way or closing

    def refund_of(self, of: FeeLine, stay: Stay) -> FeeLine:
        """A refund line: negative cnt citing a charge (2301), the whole of its quantity."""
        return FeeLine(
            feedetl_sn=str(next(_ids)),
            medins_list_codg=of.medins_list_codg,
            pric=of.pric,
            cnt=-of.cnt,
            amount_fen=-of.amount_fen,
            fee_date=stay.begin.date(),
            hosp_appr_flag=of.hosp_appr_flag,
            init_feedetl_sn=of.feedetl_sn,
        )

    def send_lines(self, stay: Stay, lines: list[FeeLine]) -> bool:
        fee_time = _at(stay.begin + dt.timedelta(minutes=10))
        rows = []
        for ln in lines:
            row = {
                "feedetl_sn": ln.feedetl_sn,
                "mdtrt_id": stay.mdtrt_id,
                "psn_no": stay.psn.psn_no,
                "chrg_bchno": "B1" if stay.kind == "outpatient" else "",
                "rx_circ_flag": "0",
                "fee_ocur_time": fee_time,
                "med_list_codg": "",
                "medins_list_codg": ln.medins_list_codg,
                "det_item_fee_sumamt": fen_text(ln.amount_fen),
                "cnt": str(ln.cnt),
                "pric": str(ln.pric),
                "bilg_dept_codg": "K01",
                "bilg_dept_name": "内科",
                "bilg_dr_codg": "D001",
                "bilg_dr_name": "医生",
            }
            if ln.hosp_appr_flag is not None:
                row["hosp_appr_flag"] = ln.hosp_appr_flag
            if ln.init_feedetl_sn:
                row["init_feedetl_sn"] = ln.init_feedetl_sn
            rows.append(row)
        infno = "2204" if stay.kind == "outpatient" else "2301"
        answer = self.call(stay.code, infno, {"feedetail": rows}, stay.psn)
        if stay.kind == "outpatient" and stay.settled_by:
            # A charge batch is settled once, whole (README): the machine's one batch, B1, with
            # a settlement in force takes no more lines until that settlement is cancelled.
            self.refused(answer, infno, "a line into a settled charge batch")
            assert "收费批次B1已结算" in answer["err_msg"], answer["err_msg"]
            return False
        # A charge may be refunded once, in whole (the machine's refunds take all its quantity):
        # docs/reliability.md, D8.
        refunded = {ln.init_feedetl_sn for ln in stay.lines.values() if ln.init_feedetl_sn}
        if any(ln.init_feedetl_sn in refunded for ln in lines if ln.init_feedetl_sn):
            self.refused(answer, infno, "refunds beyond their charge")
            return False
        self.ok(answer, infno)
        for ln in lines:
            stay.lines[ln.feedetl_sn] = ln
        return True

    @precondition(lambda self: self._has_open())
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        stay = data.draw(st.sampled_from(self._open("outpatient") + self._open("inpatient")))
        if not stay.lines:
            return
        if stay.kind == "outpatient":
            answer = self.call(
                stay.code,
                "2205",
                {
                    "data": {
                        "mdtrt_id": stay.mdtrt_id,
                        "chrg_bchno": "B1",
                        "psn_no": stay.psn.psn_no,
                    }
                },
                stay.psn,
            )
            gone = [sn for sn in stay.lines if sn not in stay.settled_by]
            if not gone:
                self.refused(answer, "2205", "every line of the batch is settled")
                return
        else:
            sn = data.draw(st.sampled_from(sorted(stay.lines)))
            answer = self.call(
                stay.code,
                "2302",
                {
                    "data": [
                        {"mdtrt_id": stay.mdtrt_id, "feedetl_sn": sn, "psn_no": stay.psn.psn_no}
                    ]
                },
                stay.psn,
            )
            gone = [sn]
            if sn in stay.settled_by:
                self.refused(answer, "2302", "a settled line")
                return
            if any(ln.init_feedetl_sn == sn for ln in stay.lines.values()):
                # docs/reliability.md, D8: a refund never stands without its charge.
                self.refused(answer, "2302", "a charge with a refund uploaded")
                return
        self.ok(answer, "withdraw")
        for sn in gone:
            del stay.lines[sn]
        for s in self.setls:
            if s.stay is stay and set(s.sns) & set(gone):
                s.lines_changed = True

    def _dischargeable(self) -> list[Stay]:
        # Stays with fees only: one discharged the step after its admission uploads nothing more,
        # and the stays' mid-way settlements, refunds and their corrections would go undriven.
        return [s for s in self._open("inpatient") if s.lines]

    @precondition(lambda self: bool(self._dischargeable()))
    @rule(data=st.data())
    def discharge(self, data: st.DataObject) -> None:
        stay = data.draw(st.sampled_from(self._dischargeable()))
        answer = self.call(
            stay.code,
            "2402",
            {
                "dscginfo": {
                    "mdtrt_id": stay.mdtrt_id,
                    "psn_no": stay.psn.psn_no,
                    "endtime": _at(stay.begin + dt.timedelta(hours=1)),
                }
            },
            stay.psn,
        )
        self.ok(answer, "2402")
        stay.discharged = True

    # ------------------------------------------------------------------ steps: settling

    def _settleable(self) -> list[Stay]:
        return [
            s
            for s in self.stays
            if not s.cancelled
            and (
                s.kind == "outpatient"
                or (
                    s.kind == "inpatient"
                    and not any(
                        x.stay is s and x.final and x.status == "settled" for x in self.setls
                    )
                )
            )
        ]

    def _with_lines(self, kind: str) -> list[Stay]:
        return [s for s in self._settleable() if s.kind == kind and s.unsettled()]

    @precondition(lambda self: bool(self._with_lines("outpatient")))
    @rule(data=st.data(), pre=st.sampled_from((False, False, True)))
    def settle_visit(self, data: st.DataObject, pre: bool) -> None:
        stays = self._with_lines("outpatient")
        self.settle(data.draw(st.sampled_from(stays)), data, pre)

    @precondition(lambda self: bool(self._with_lines("inpatient")))
    @rule(data=st.data(), pre=st.sampled_from((False, False, True)))
    def settle_stay(self, data: st.DataObject, pre: bool) -> None:
        stays = self._with_lines("inpatient")
        self.settle(data.draw(st.sampled_from(stays)), data, pre)

    def settle(self, stay: Stay, data: st.DataObject, pre: bool) -> None:
        acct = data.draw(st.sampled_from(("0", "1"))) if stay.psn.employee else "0"
        lines = stay.unsettled()
        want = self.expect(stay, lines, acct)
        if stay.selfpay:
            # emergency-plan.md: a self-pay admission settles "normally" only once converted.
            want = "self-pay admission not converted"
        medfee = sum(ln.amount_fen for ln in lines)
        inpatient = stay.kind == "inpatient"
        if inpatient and stay.discharged and medfee == 0:
            # The gateway closes a stay whose remaining lines net to zero; the model refuses a
            # zero total (tests/reference/DISAGREEMENTS.md): a disagreement reported, not driven.
            return
        extra: dict[str, Any] = (
            {"chrg_bchno": "B1"}
            if not inpatient
            else {"mid_setl_flag": "0" if stay.discharged else "1"}
        )
        body = {
            "data": {
                "psn_no": stay.psn.psn_no,
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": stay.psn.certno,
                "med_type": stay.med_type,
                "medfee_sumamt": fen_text(medfee),
                "psn_setlway": "01",
                "mdtrt_id": stay.mdtrt_id,
                "acct_used_flag": acct,
                "insutype": stay.psn.insutype,
                "invono": "",
                **extra,
            }
        }
        infno = ("2303" if pre else "2304") if inpatient else ("2206" if pre else "2207")
        msgid = self.clients[stay.code].msgid()
        answer = self.call(stay.code, infno, body, stay.psn, msgid=msgid)
        if isinstance(want, str):
            self.refused(answer, infno, want)
            if stay.selfpay and data.draw(st.booleans()):
                # The counter is told to have the stay converted first; the duty team does.
                self.convert_stay(stay, data, pre)
            return
        out = self.ok(answer, infno)
        self.compare(infno, out["setlinfo"], want)
        if pre:
            return
        setl_id = out["setlinfo"]["setl_id"]
        self.model.apply(setl_id, want)
        if any(ln.init_feedetl_sn in stay.settled_by for ln in lines):
            COUNTS["settlements netting a refund of a charge settled before"] += 1
        s = Setl(
            setl_id,
            msgid,
            infno,
            stay,
            [ln.feedetl_sn for ln in lines],
            want,
            final=inpatient and stay.discharged,
            in_at=0,
            acct=acct,
        )
        self.setls.append(s)
        self.came_in(s)

    @precondition(lambda self: sum(1 for s in self.stays if s.kind == "pharmacy") < 3)
    @rule(data=st.data(), pre=st.sampled_from((False, False, True)))
    def pharmacy_sale(self, data: st.DataObject, pre: bool) -> None:
        psn = data.draw(st.sampled_from(sorted(self.persons.values(), key=lambda p: p.psn_no)))
        when = data.draw(st.sampled_from(sorted(self.days)))
        begin = self.days[when]
        rng = random.Random(data.draw(st.integers(0, 2**32)))
        acct = rng.choice(("0", "1")) if psn.employee else "0"
        stay = Stay("pharmacy", "", PHARMACY, psn, begin, "41")
        lines = [self.line(stay, PHARMACY, begin.date(), rng) for _ in range(rng.randint(1, 3))]
        medfee = sum(ln.amount_fen for ln in lines)
        body = {
            "druginfo": {
                "psn_no": psn.psn_no,
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": psn.certno,
                "begntime": _at(begin),
                "medfee_sumamt": fen_text(medfee),
                "insutype": psn.insutype,
                "dise_codg": "",
                "dise_name": "",
                "acct_used_flag": acct,
                "med_type": "41",
            },
            "drugdetail": [
                {
                    "feedetl_sn": ln.feedetl_sn,
                    "rxno": "",
                    "rx_circ_flag": "0",
                    "fee_ocur_time": _at(begin),
                    "med_list_codg": "",
                    "medins_list_codg": ln.medins_list_codg,
                    "det_item_fee_sumamt": fen_text(ln.amount_fen),
                    "cnt": str(ln.cnt),
                    "pric": str(ln.pric),
                    "bilg_dr_codg": "D001",
                    "bilg_dr_name": "医生",
                }
                for ln in lines
            ],
        }
        infno = "2101" if pre else "2102"
        msgid = self.clients[PHARMACY].msgid()
        answer = self.call(PHARMACY, infno, body, psn, msgid=msgid)
        if when == "future":
            self.refused(answer, infno, "sale dated ahead of now")
            return
        want = self.expect(stay, lines, acct)
        if isinstance(want, str):
            self.refused(answer, infno, want)
            return
        out = self.ok(answer, infno)
        self.compare(infno, out["setlinfo"], want)
        if pre:
            return
        info = out["setlinfo"]
        stay.mdtrt_id = info["mdtrt_id"]
        stay.lines = {ln.feedetl_sn: ln for ln in lines}
        self.stays.append(stay)
        self.model.apply(info["setl_id"], want)
        s = Setl(info["setl_id"], msgid, "2102", stay, list(stay.lines), want, False, 0, acct=acct)
        self.setls.append(s)
        self.came_in(s)

    # ------------------------------------------------------------------ steps: undo

    def _in_force(self) -> list[Setl]:
        return [s for s in self.setls if s.status == "settled"]

    @precondition(lambda self: bool(self._in_force()))
    @rule(data=st.data(), by_reversal=st.booleans())
    def cancel(self, data: st.DataObject, by_reversal: bool) -> None:
        s = data.draw(st.sampled_from(self._in_force()))
        psn = s.stay.psn
        msgid = self.clients[s.stay.code].msgid()
        if by_reversal and s.msgid not in self.reversed:
            infno = "2601"
            body: dict[str, Any] = {
                "data": {"psn_no": psn.psn_no, "omsgid": s.msgid, "oinfno": s.infno}
            }
            if s.corrects:
                # The counter's settlement under that msgid was cancelled by the correction;
                # what it re-settled into is cancelled by its own setl_id (2208/2305/2103).
                answer = self.call(s.stay.code, infno, body, psn, msgid=msgid)
                self.refused(answer, "2601", "original re-settled by a correction")
                msgid = self.clients[s.stay.code].msgid()
                infno = CANCEL_OF[s.infno]
                body = {
                    "data": {
                        "setl_id": s.setl_id,
                        "mdtrt_id": s.stay.mdtrt_id,
                        "psn_no": psn.psn_no,
                    }
                }
        else:
            infno = CANCEL_OF[s.infno]
            body = {
                "data": {"setl_id": s.setl_id, "mdtrt_id": s.stay.mdtrt_id, "psn_no": psn.psn_no}
            }
        if s.infno == "2304" and not s.final and self._closing_in_force(s.stay):
            # A stay's mid-way settlement under its closing one in force: the closing one first.
            answer = self.call(s.stay.code, infno, body, psn, msgid=msgid)
            self.refused(answer, infno, "a mid-way settlement under the stay's closing one")
            return
        out = self.ok(self.call(s.stay.code, infno, body, psn, msgid=msgid), infno)
        self.went_out(s, "" if infno == "2601" else msgid)
        if infno == "2601":
            self.reversed.add(s.msgid)
            if s.stay.kind == "pharmacy":  # 2601 of a 2102 removes the sale
                s.stay.cancelled = True
                s.stay.lines.clear()
        else:
            info = out["setlinfo"]
            assert _fen(info["balc"]) == self.model.balances[psn.psn_no], (infno, info["balc"])

    def _closing_in_force(self, stay: Stay) -> bool:
        return any(o.stay is stay and o.final and o.status == "settled" for o in self.setls)

    def _cancellations(self) -> list[Setl]:
        return [
            s
            for s in self.setls
            if s.status == "cancelled" and s.cancel_msgid and s.cancel_msgid not in self.reversed
        ]

    @precondition(lambda self: bool(self._cancellations()))
    @rule(data=st.data())
    def reinstate(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from(self._cancellations()))
        psn = s.stay.psn
        body = {
            "data": {"psn_no": psn.psn_no, "omsgid": s.cancel_msgid, "oinfno": CANCEL_OF[s.infno]}
        }
        answer = self.call(s.stay.code, "2601", body, psn)
        why = self.may_reinstate(s)
        COUNTS[f"reinstate {why.split(' ')[0] if why else 'ok'}"] += 1
        if why:
            self.refused(answer, "2601 of a cancellation", why)
            return
        self.ok(answer, "2601 of a cancellation")
        self.reversed.add(s.cancel_msgid)
        self.model.cancelled.discard(s.setl_id)
        self.model.apply(s.setl_id, s.made)
        s.cancel_msgid = ""
        self.came_in(s)

    # ------------------------------------------------------------------ steps: admissions

    def _admissions(self) -> list[Stay]:
        return [s for s in self.stays if s.kind == "inpatient"]

    @precondition(lambda self: self.undone < 1 and any(not s.cancelled for s in self._admissions()))
    @rule(data=st.data(), by_reversal=st.booleans())
    def undo_admission(self, data: st.DataObject, by_reversal: bool) -> None:
        """2404, or 2601 of the 2401: a stay with no lines (and so no settlement) is cancelled.
        Once an example at most: a cancelled stay settles nothing more."""
        self.undone += 1
        standing = [s for s in self._admissions() if not s.cancelled]
        pool = standing if data.draw(st.integers(0, 3)) else self._admissions()
        stay = data.draw(st.sampled_from(pool))
        psn = stay.psn
        if by_reversal:
            body = {"data": {"psn_no": psn.psn_no, "omsgid": stay.admit_msgid, "oinfno": "2401"}}
            answer = self.call(stay.code, "2601", body, psn)
            why = "admission cancelled" if stay.cancelled else ""
        else:
            body = {"data": {"mdtrt_id": stay.mdtrt_id, "psn_no": psn.psn_no}}
            answer = self.call(stay.code, "2404", body, psn)
            why = "admission cancelled" if stay.cancelled else ""
            why = why or ("discharged" if stay.discharged else "")
        why = why or ("lines uploaded" if stay.lines else "")
        COUNTS[f"undo admission {why.split(' ')[0] if why else 'ok'}"] += 1
        if why:
            self.refused(answer, "2601 of a 2401" if by_reversal else "2404", why)
            return
        self.ok(answer, "2601 of a 2401" if by_reversal else "2404")
        stay.cancelled = True

    def _convertible(self) -> list[Stay]:
        return [s for s in self._admissions() if s.selfpay and not s.cancelled]

    @precondition(lambda self: bool(self._convertible()))
    @rule(data=st.data(), pre=st.booleans())
    def convert(self, data: st.DataObject, pre: bool) -> None:
        """自费转医保, as `python -m gateway encounter convert` runs it; then the stay settles."""
        waiting = self._convertible()
        pool = waiting if data.draw(st.integers(0, 3)) else self._admissions()
        self.convert_stay(data.draw(st.sampled_from(pool)), data, pre)

    def convert_stay(self, stay: Stay, data: st.DataObject, pre: bool) -> None:
        why = "not a self-pay admission" if not stay.selfpay else ""
        why = why or ("admission cancelled" if stay.cancelled else "")
        try:
            psn_no = self.harness.run(
                conversion.convert(
                    self.harness.conn, stay.mdtrt_id, operator="duty", reason="自费转医保"
                )
            )
        except GatewayError as exc:
            self.trail.append(f"convert {stay.mdtrt_id}: refused {exc.err_msg}")
            COUNTS[f"conversions refused: {why or 'unexpectedly'}"] += 1
            assert why, f"conversion refused where the rules accept: {exc.err_msg}"
            return
        self.trail.append(f"convert {stay.mdtrt_id}: ok")
        assert not why, f"conversion accepted where the rules refuse ({why})"
        assert psn_no == stay.psn.psn_no
        COUNTS["conversions"] += 1
        stay.selfpay = False
        if stay.unsettled() and stay in self._settleable():
            # The converted stay settles at once (or pre-settles) against the model's amounts.
            self.settle(stay, data, pre)

    # ------------------------------------------------------------------ steps: catalog

    @precondition(lambda self: self.remaps < 1 or (self.remaps < 3 and bool(self._in_force())))
    @rule(data=st.data())
    def remap(self, data: st.DataObject) -> None:
        # Mostly an item some settlement in force used, from a date its line falls on: a bulk
        # correction then has work to do.
        used: dict[tuple[str, str], dt.date] = {}
        for s in self._in_force():
            for sn in s.sns:
                ln = s.stay.lines[sn]
                key = (s.stay.code, ln.medins_list_codg)
                used[key] = min(used.get(key, ln.fee_date), ln.fee_date)
        # Above all the item of a refund a settlement nets against its other lines: re-mapped, the
        # refund may no longer fit (§6), and its correction must be refused.
        netted = sorted(
            {
                (s.stay.code, s.stay.lines[sn].medins_list_codg)
                for s in self._in_force()
                for sn in s.sns
                if s.stay.lines[sn].init_feedetl_sn in s.stay.settled_by
                and s.stay.settled_by[s.stay.lines[sn].init_feedetl_sn] != s.setl_id
            }
        )
        days = sorted(d for d in self.days if d != "future")
        other_class = False
        if netted and data.draw(st.booleans()):
            code, item = data.draw(st.sampled_from(netted))
            days = [d for d in days if self.days[d].date() <= used[(code, item)]]
            other_class = True
        elif used and data.draw(st.integers(0, 3)):
            code, item = data.draw(st.sampled_from(sorted(used)))
            days = [d for d in days if self.days[d].date() <= used[(code, item)]]
        else:
            code = data.draw(st.sampled_from((*HOSPITALS, SELFPAY_HOSPITAL, PHARMACY)))
            item = data.draw(st.sampled_from(sorted(DRUGS if code == PHARMACY else ITEMS)))
        # Candidates from the demo data as loaded, not as earlier examples changed it: the draws
        # must not depend on what outlives an example.
        demo = DEMO.mapping(code, item, dt.date.today())
        assert demo is not None
        same_type = sorted(
            c
            for c, rows in DEMO.catalog.items()
            if rows[0].list_type == demo.list_type and c != demo.national_code
        )
        if other_class:
            # A code of another class: the netted refund's split changes sign where it differs.
            level = DEMO.catalog[demo.national_code][0].level
            same_type = [c for c in same_type if DEMO.catalog[c][0].level != level] or same_type
        national = data.draw(st.sampled_from(same_type))
        begndate = self.days[data.draw(st.sampled_from(days))].date()
        row = self.data.catalog[national][0]
        psn = next(iter(self.persons.values()))
        answer = self.call(
            code,
            "3301",
            {
                "data": [
                    {
                        "fixmedins_hilist_id": item,
                        "fixmedins_hilist_name": row.name,
                        "list_type": row.list_type,
                        "med_list_codg": national,
                        "begndate": str(begndate),
                        "enddate": "2099-12-31",
                    }
                ]
            },
            psn,
        )
        self.ok(answer, "3301")
        self.remaps += 1
        self.model.map_item(code, item, national, begndate, dt.date(2099, 12, 31))
        self.remapped.append(Remap(code, item, national, begndate))
        if self.correction_targets(code, item):
            COUNTS["remaps leaving settlements to correct"] += 1
            # The agency's sequence: the mapping fixed, then the correction run at once (or
            # later, by the `correct` rule, with other steps between).
            then = data.draw(st.sampled_from(("later", *CORRECTION_RUNS)))
            if then != "later":
                self.correct_item(code, item, then)

    def _correctable(self) -> list[tuple[str, str]]:
        """Items this example re-mapped that some settlement in force used another mapping of."""
        return [
            key
            for key in sorted({(m.code, m.item) for m in self.remapped})
            if self.correction_targets(*key)
        ]

    def correction_targets(self, code: str, item: str) -> list[Setl]:
        """The settlements in force whose line of the item resolved to another national code
        than the mapping on its fee date gives now, in the order they were made (README)."""
        out = []
        for s in self.setls:
            if s.status != "settled" or s.stay.code != code:
                continue
            used = {ln.feedetl_sn: ln.national_code for ln in s.made.lines}
            for sn in s.sns:
                ln = s.stay.lines[sn]
                if ln.medins_list_codg != item:
                    continue
                now = self.data.mapping(code, item, ln.fee_date)
                if used[sn] != (now.national_code if now else ""):
                    out.append(s)
                    break
        return out

    def _snapshot(self) -> Snapshot:
        return self.harness.run(reference_store.read_snapshot(self.harness.conn, _reference()))

    @precondition(lambda self: bool(self._correctable()))
    @rule(data=st.data(), how=st.sampled_from(CORRECTION_RUNS))
    def correct(self, data: st.DataObject, how: str) -> None:
        """Bulk catalog correction of an item this example re-mapped, steps after the 3301."""
        self.correct_item(*data.draw(st.sampled_from(self._correctable())), how)

    def correct_item(self, code: str, item: str, how: str) -> None:
        """`python -m gateway corrections plan|apply`: each settlement that used another mapping
        of the item is cancelled and settled again through today's, in the order they were
        made, each against the accumulators of its moment. `how`: apply; plan, then apply; or
        apply interrupted after the first settlement and run again over the same list (what
        was corrected is skipped)."""
        h = self.harness
        conn = h.conn
        snapshot = self._snapshot()
        mine = {p.psn_no for p in self.persons.values()}
        # The gateway serves every example of the run: earlier examples' persons keep
        # settlements made under mappings since revoked, and are not this example's to correct.
        found = [
            t for t in h.run(corrections.targets(conn, snapshot, code, item)) if t.psn_no in mine
        ]
        want = self.correction_targets(code, item)
        assert [t.setl_id for t in found] == [s.setl_id for s in want], (
            "correction targets: gateway, model",
            [t.setl_id for t in found],
            [s.setl_id for s in want],
        )
        # What each target becomes under the rules: cancel exactly, settle the same lines again
        # through the corrected mapping against the accumulators of that moment (§7); a
        # settlement the rules refuse stays as it is.
        expected: list[ModelSettlement | str] = []
        for s in want:
            self.model.cancel(s.setl_id)
            made = self.expect(s.stay, [s.stay.lines[sn] for sn in s.sns], s.acct)
            expected.append(made)
            if isinstance(made, str):
                self.model.cancelled.discard(s.setl_id)
                self.model.apply(s.setl_id, s.made)
            else:
                self.model.apply(f"correction of {s.setl_id}", made)
        if how == "plan and apply":
            COUNTS["correction plans"] += 1
            planned, plan_failed = h.run(
                corrections.plan(conn, snapshot, found, item, dt.datetime.now())
            )
            self.check_correction("plan", want, expected, planned.items, plan_failed)
        run_id = f"SM{next(_ids)}"
        if how == "interrupted":
            COUNTS["correction runs interrupted and resumed"] += 1
            summary, failed = h.run(corrections.apply(conn, snapshot, found, item, run_id, limit=1))
            rest, failed_rest = h.run(corrections.apply(conn, snapshot, found, item, run_id + "R"))
            summary.items += rest.items
            # A refusal is met again by the run that resumes: listed once.
            failed += [f for f in failed_rest if f[0] not in {x[0] for x in failed}]
        else:
            summary, failed = h.run(corrections.apply(conn, snapshot, found, item, run_id))
        self.check_correction("apply", want, expected, summary.items, failed)
        COUNTS["correction runs"] += 1
        # Run again, nothing is left to correct (README: "nothing is corrected twice"): what was
        # refused stays refused, what was re-settled now uses the corrected mapping.
        again = [
            t.setl_id
            for t in h.run(corrections.targets(conn, self._snapshot(), code, item))
            if t.psn_no in mine
        ]
        assert again == [
            s.setl_id for s, m in zip(want, expected, strict=True) if isinstance(m, str)
        ]
        done = {it.old_setl_id: it for it in summary.items}
        for s, made in zip(want, expected, strict=True):
            if isinstance(made, str):
                COUNTS[f"corrections refused: {made}"] += 1
                continue
            it = done[s.setl_id]
            COUNTS["corrections re-settled"] += 1
            # The model keyed the new settlement by a name of its own: re-key it by setl_id.
            key = f"correction of {s.setl_id}"
            self.model.settlements[it.new_setl_id] = self.model.settlements.pop(key)
            adm = self.model.admissions.get(s.stay.mdtrt_id)
            if adm is not None and key in adm.in_force:
                adm.in_force.discard(key)
                adm.in_force.add(it.new_setl_id)
            self.seq += 1
            s.cancelled_at = self.seq
            s.status = "cancelled"
            s.cancel_msgid = ""  # the correction's own: no counter can reverse it
            for sn in s.sns:
                s.stay.settled_by.pop(sn, None)
            new = Setl(
                it.new_setl_id,
                s.msgid,
                s.infno,
                s.stay,
                list(s.sns),
                made,
                s.final,
                0,
                acct=s.acct,
                corrects=s.setl_id,
            )
            self.setls.append(new)
            self.came_in(new)

    def check_correction(
        self,
        verb: str,
        want: list[Setl],
        expected: list[ModelSettlement | str],
        items: list[corrections.Item],
        failed: list[tuple[str, str]],
    ) -> None:
        refused = [s.setl_id for s, m in zip(want, expected, strict=True) if isinstance(m, str)]
        assert [f[0] for f in failed] == refused, (verb, "refused: gateway, model", failed, refused)
        assert [it.old_setl_id for it in items] == [
            s.setl_id for s, m in zip(want, expected, strict=True) if not isinstance(m, str)
        ], (verb, "re-settled", [it.old_setl_id for it in items])
        for it, (s, made) in zip(
            items,
            [(s, m) for s, m in zip(want, expected, strict=True) if not isinstance(m, str)],
            strict=True,
        ):
            assert isinstance(made, ModelSettlement)
            assert it.old == {k: s.made.amounts[k] for k in it.old}, (verb, "old", it.old)
            wrong = {k: (v, made.amounts[k]) for k, v in it.new.items() if v != made.amounts[k]}
            assert not wrong, f"{verb} {s.setl_id}: gateway, model (fen) differ: {wrong}"

    def teardown(self) -> None:
        """Revoke this example's 3301 rows (3302), so that the next example starts from the demo
        mappings: what outlives an example would make its replays (shrinking) differ."""
        for code, item, national in sorted({m[:3] for m in self.remapped}):
            answer = self.harness.run(
                self.clients[code].call(
                    "3302", {"data": [{"fixmedins_hilist_id": item, "med_list_codg": national}]}
                )
            )
            assert answer["infcode"] == 0, answer["err_msg"]
            rows = self.data.mappings[(code, item)]
            rows[:] = [r for r in rows if r.national_code != national or r.seq <= DEMO_SEQ]

    # ------------------------------------------------------------------ after every step

    @invariant()
    def funds_pay_what_the_rules_give(self) -> None:
        h = self.harness
        persons = [p.psn_no for p in self.persons.values()]
        found = h.run(checker.line_problems(h.conn, persons)) + h.run(
            checker.replay_problems(
                h.conn, ModelRules(self.data), persons=persons, opening_balances=self.opening
            )
        )
        assert found == [], "\n".join([*found, "trail:", *self.trail])
        rows = h.run(
            h.server.fetch(
                "SELECT psn_no, balance_fen FROM accounts WHERE psn_no = ANY($1::text[])", persons
            )
        )
        for r in rows:
            assert r["balance_fen"] >= 0
            assert r["balance_fen"] == self.model.balances[r["psn_no"]], (r, "trail", self.trail)


_REFERENCE: list[Reference] = []


def _reference() -> Reference:
    """The reference files the CLI reads (`--reference-dir`), loaded once."""
    if not _REFERENCE:
        _REFERENCE.append(load_reference(DEFAULT_REFERENCE))
    return _REFERENCE[0]


async def _selfpay_admissions(h: Harness) -> None:
    """The plan's `selfpay` action for SELFPAY_HOSPITAL's admissions, as the duty team sets it,
    and in force in the gateway (it polls the plan) before the first example."""
    await store.set_rule(
        h.conn,
        scope=f"institution:{SELFPAY_HOSPITAL}",
        klass="encounter",
        action="selfpay",
        reason="演练：新入院按自费办理",
        operator="duty",
    )
    his = h.server.client(SELFPAY_HOSPITAL)
    psn = DEMO.persons[TEMPLATES["resident"]]
    admission = {
        "mdtrtinfo": {
            "psn_no": psn.psn_no,
            "insutype": psn.insutype,
            "begntime": _at(dt.datetime.now().replace(microsecond=0) - dt.timedelta(hours=1)),
            "mdtrt_cert_type": "02",
            "mdtrt_cert_no": psn.certno,
            "med_type": "21",
            "ipt_no": "",
        },
        "diseinfo": [],
    }
    for attempt in range(200):
        admission["mdtrtinfo"]["ipt_no"] = f"ZY-SM-PROBE-{attempt}"
        answer = await his.call("2401", admission, insuplc_admdvs=psn.region)
        assert answer["infcode"] == 0, answer["err_msg"]
        mdtrt_id = answer["output"]["result"]["mdtrt_id"]
        await his.ok("2404", {"data": {"mdtrt_id": mdtrt_id, "psn_no": psn.psn_no}})
        if "自费" in (answer["warn_msg"] or ""):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the plan's selfpay action never reached the gateway")


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


@pytest.mark.timeout(0)  # bounded by STATEFUL_N; `make stateful` runs long on purpose
def test_money_machine(harness: Harness) -> None:
    print(f"\nSTATEFUL_SEED={SEED} STATEFUL_N={N} STATEFUL_STEPS={STEPS}")
    MoneyMachine.harness = harness
    MoneyMachine.data = load()
    harness.run(_selfpay_admissions(harness))
    machine = seed(SEED)(MoneyMachine)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=N,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        ),
    )
    print("exercised:", ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))
    assert harness.run(harness.server.check_ledger()) == []
