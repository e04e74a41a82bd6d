"""Scripted counter traffic for the settlement-parity tests.

A `Script` is a fixed list of requests, msgids included, that several gateways receive alike; a
`Counter` is one gateway's side of it, resolving the ids that gateway handed out (就诊ID, 结算ID)
when a later request names them. Answers and ledger rows are then normalised so that only what
may legitimately differ between two gateways is set aside: the clocks (`inf_refmsgid`,
`refmsg_time`, `respond_time`, `setl_time`, time columns) and the ids each ledger draws, which are
replaced by the msgid of the request that created them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from gateway.ops import metrics
from tests.integration.conftest import Server
from tests.integration.his_client import HisClient, certificate, decode

# ----------------------------------------------------------------------------------- requests


def line(sn: str, code: str, pric: str, cnt: int, **extra: str) -> dict[str, Any]:
    """A fee line as the examples write it; the amount is price × count, exactly."""
    return {
        "feedetl_sn": sn,
        "medins_list_codg": code,
        "pric": pric,
        "cnt": str(cnt),
        "det_item_fee_sumamt": f"{Decimal(pric) * cnt:.2f}",
        **extra,
    }


def total(lines: Iterable[dict[str, Any]]) -> str:
    return f"{sum(Decimal(ln['det_item_fee_sumamt']) for ln in lines):.2f}"


@dataclass(frozen=True, slots=True)
class Person:
    psn_no: str
    insutype: str
    insuplc_admdvs: str = "441800"

    def cert(self) -> dict[str, str]:
        """An electronic voucher (01) whose token is the psn_no: it identifies the person."""
        return certificate(self.psn_no)


@dataclass(frozen=True, slots=True)
class Step:
    name: str  # unique in the script; answers are kept under it
    code: str  # the institution sending it
    infno: str
    msgid: str
    inf_time: str
    insuplc_admdvs: str
    build: Callable[[Counter], Any]  # the input, with this gateway's own ids
    expect: int = 0  # the infcode every online gateway must answer


@dataclass(slots=True)
class Visit:
    name: str
    code: str
    person: Person
    opened_by: str  # the step whose answer carries the 就诊ID


class Script:
    """Builds the steps; every helper returns the name of the step it added."""

    def __init__(self, stamp: str, visits: dict[str, Visit]) -> None:
        self.stamp = stamp  # yyyyMMddHHmmss of the msgids and inf_time
        self.inf_time = dt.datetime.strptime(stamp, "%Y%m%d%H%M%S").strftime("%Y-%m-%d %H:%M:%S")
        self.steps: list[Step] = []
        self.visits = visits  # shared by the parts of one run: a later part names earlier visits
        self._serial = 0

    def step(
        self,
        name: str,
        code: str,
        infno: str,
        build: Callable[[Counter], Any],
        *,
        person: Person | None = None,
        expect: int = 0,
    ) -> str:
        assert all(s.name != name for s in self.steps), name
        self._serial += 1
        msgid = f"{code}{self.stamp}{self._serial:04d}"
        region = person.insuplc_admdvs if person else "441800"
        self.steps.append(Step(name, code, infno, msgid, self.inf_time, region, build, expect))
        return name

    def again(self, name: str, of: str) -> str:
        """The same request once more: same msgid, same bytes (a counter's retry)."""
        first = next(s for s in self.steps if s.name == of)
        self.steps.append(dataclasses.replace(first, name=name))
        return name

    @staticmethod
    def _infno(name: str) -> str:
        """The transaction of a step, from its name (<visit>.<infno><batch or tag>)."""
        return "2304" if ".2304." in name else name.rsplit(".", 1)[-1][:4]

    # ------------------------------------------------------------------------- outpatient

    def register(self, v: str, code: str, p: Person, begntime: str) -> str:
        self.visits[v] = Visit(v, code, p, f"{v}.2201")
        data = {
            "psn_no": p.psn_no,
            "insutype": p.insutype,
            "begntime": begntime,
            **p.cert(),
            "ipt_otp_no": f"MZ-{v}",
            "atddr_no": "D001",
            "dr_name": "医生",
            "dept_code": "K01",
            "dept_name": "内科",
            "caty": "A03",
        }
        return self.step(f"{v}.2201", code, "2201", lambda c: {"data": data}, person=p)

    def visit_info(self, v: str, begntime: str, med_type: str = "11") -> str:
        visit = self.visits[v]
        p = visit.person

        def build(c: Counter) -> Any:
            return HisClient.visit_info_input(c.mdtrt(v), p.psn_no, med_type, begntime)

        return self.step(f"{v}.2203", visit.code, "2203", build, person=p)

    def upload(
        self, v: str, lines: list[dict[str, Any]], fee_time: str, batch: str = "", tag: str = ""
    ) -> str:
        """2204 (outpatient, one charge batch) or 2301 (inpatient) of the visit."""
        visit = self.visits[v]
        p = visit.person
        infno = "2301" if batch == "" else "2204"

        def build(c: Counter) -> Any:
            return {"feedetail": fee_rows(c.mdtrt(v), p.psn_no, lines, fee_time, batch)}

        return self.step(f"{v}.{infno}{tag or batch}", visit.code, infno, build, person=p)

    def _settle_data(
        self, v: str, medfee: str, acct: str, med_type: str | None, **extra: str
    ) -> Callable[[Counter], Any]:
        p = self.visits[v].person

        def build(c: Counter) -> Any:
            data: dict[str, Any] = {
                "psn_no": p.psn_no,
                **p.cert(),
                "medfee_sumamt": medfee,
                "psn_setlway": "01",
                "mdtrt_id": c.mdtrt(v),
                "acct_used_flag": acct,
                "insutype": p.insutype,
                "invono": "",
                **extra,
            }
            if med_type is not None:
                data["med_type"] = med_type
            return {"data": data}

        return build

    def presettle(self, v: str, batch: str, medfee: str, acct: str) -> str:
        visit = self.visits[v]
        build = self._settle_data(v, medfee, acct, "11", chrg_bchno=batch)
        return self.step(f"{v}.2206{batch}", visit.code, "2206", build, person=visit.person)

    def settle(
        self, v: str, batch: str, medfee: str, acct: str, tag: str = "", expect: int = 0
    ) -> str:
        visit = self.visits[v]
        build = self._settle_data(v, medfee, acct, "11", chrg_bchno=batch)
        return self.step(
            f"{v}.2207{batch}{tag}", visit.code, "2207", build, person=visit.person, expect=expect
        )

    def cancel(self, v: str, settled: str, tag: str = "") -> str:
        """2208 / 2305 of the settlement answered to step `settled`."""
        visit = self.visits[v]
        p = visit.person
        infno = "2305" if self._infno(settled) == "2304" else "2208"

        def build(c: Counter) -> Any:
            return {
                "data": {
                    "setl_id": c.setl(settled),
                    "mdtrt_id": c.mdtrt(v),
                    "psn_no": p.psn_no,
                    **p.cert(),
                }
            }

        return self.step(f"{v}.{infno}{tag}", visit.code, infno, build, person=p)

    # -------------------------------------------------------------------------- inpatient

    def admit(self, v: str, code: str, p: Person, begntime: str, med_type: str = "21") -> str:
        self.visits[v] = Visit(v, code, p, f"{v}.2401")
        info = {
            "psn_no": p.psn_no,
            "insutype": p.insutype,
            "begntime": begntime,
            **p.cert(),
            "med_type": med_type,
            "ipt_no": f"ZY-{v}",
            "atddr_no": "D1",
            "chfpdr_name": "医生",
            "adm_diag_dscr": "肺炎",
            "adm_dept_codg": "K1",
            "adm_dept_name": "内科",
            "adm_bed": "3",
            "dscg_maindiag_code": "J18",
            "dscg_maindiag_name": "肺炎",
        }
        return self.step(
            f"{v}.2401", code, "2401", lambda c: {"mdtrtinfo": info, "diseinfo": []}, person=p
        )

    def discharge(self, v: str, endtime: str) -> str:
        visit = self.visits[v]
        p = visit.person

        def build(c: Counter) -> Any:
            return {
                "dscginfo": {
                    "mdtrt_id": c.mdtrt(v),
                    "psn_no": p.psn_no,
                    "insutype": p.insutype,
                    "endtime": endtime,
                    "dscg_dept_codg": "K1",
                    "dscg_dept_name": "内科",
                    "dscg_way": "1",
                },
                "diseinfo": [],
            }

        return self.step(f"{v}.2402", visit.code, "2402", build, person=p)

    def presettle_stay(self, v: str, medfee: str, mid: str, acct: str) -> str:
        visit = self.visits[v]
        build = self._settle_data(v, medfee, acct, None, mid_setl_flag=mid)
        return self.step(f"{v}.2303.{mid}", visit.code, "2303", build, person=visit.person)

    def settle_stay(
        self, v: str, medfee: str, mid: str, acct: str, tag: str = "", expect: int = 0
    ) -> str:
        visit = self.visits[v]
        build = self._settle_data(v, medfee, acct, None, mid_setl_flag=mid)
        return self.step(
            f"{v}.2304.{mid}{tag}", visit.code, "2304", build, person=visit.person, expect=expect
        )

    # --------------------------------------------------------------------------- pharmacy

    def sale(
        self,
        v: str,
        code: str,
        p: Person,
        begntime: str,
        lines: list[dict[str, Any]],
        acct: str,
        *,
        medfee: str | None = None,
        presettle: bool = False,
        expect: int = 0,
    ) -> str:
        """2102 (after a 2101 when asked); the sale's answer carries its own 就诊ID."""
        self.visits[v] = Visit(v, code, p, f"{v}.2102")
        node = HisClient.drug_input(
            p.psn_no, begntime, medfee or total(lines), lines, acct, p.insutype
        )
        if presettle:
            self.step(f"{v}.2101", code, "2101", lambda c: node, person=p, expect=expect)
        return self.step(f"{v}.2102", code, "2102", lambda c: node, person=p, expect=expect)

    def cancel_sale(self, v: str) -> str:
        visit = self.visits[v]
        p = visit.person

        def build(c: Counter) -> Any:
            return {
                "data": {
                    "setl_id": c.setl(f"{v}.2102"),
                    "mdtrt_id": c.mdtrt(v),
                    "psn_no": p.psn_no,
                    **p.cert(),
                }
            }

        return self.step(f"{v}.2103", visit.code, "2103", build, person=p)


def fee_rows(
    mdtrt_id: str, psn_no: str, lines: list[dict[str, Any]], fee_time: str, batch: str
) -> list[dict[str, Any]]:
    """feedetail[] rows; no national code sent, so each line resolves through the mapping."""
    return [
        {
            "feedetl_sn": ln["feedetl_sn"],
            "mdtrt_id": mdtrt_id,
            "psn_no": psn_no,
            "chrg_bchno": batch,
            "rx_circ_flag": "0",
            "fee_ocur_time": fee_time,
            "med_list_codg": "",
            "medins_list_codg": ln["medins_list_codg"],
            "det_item_fee_sumamt": ln["det_item_fee_sumamt"],
            "cnt": ln["cnt"],
            "pric": ln["pric"],
            "bilg_dept_codg": "K01",
            "bilg_dept_name": "内科",
            "bilg_dr_codg": "D001",
            "bilg_dr_name": "医生",
            "hosp_appr_flag": ln.get("hosp_appr_flag", "1"),
            **({"init_feedetl_sn": ln["init_feedetl_sn"]} if "init_feedetl_sn" in ln else {}),
        }
        for ln in lines
    ]


# ------------------------------------------------------------------------------------ playing


def group_batches() -> int:
    """Batches the group commit has committed so far in this process."""
    for family in metrics.GROUP_BATCH_SIZE.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                return int(sample.value)
    return 0


@dataclass(slots=True)
class Counter:
    """One gateway's side of the script: the raw answers and the ids it handed out."""

    server: Server
    visits: dict[str, Visit]
    raw: dict[str, bytes] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)  # group-commit batches per step

    def mdtrt(self, visit: str) -> str:
        out = self.answers[self.visits[visit].opened_by]["output"]
        node = out.get("data") or out.get("result") or out.get("setlinfo")
        mdtrt_id = node["mdtrt_id"]
        assert isinstance(mdtrt_id, str)
        return mdtrt_id

    def setl(self, step: str) -> str:
        setl_id = self.answers[step]["output"]["setlinfo"]["setl_id"]
        assert isinstance(setl_id, str)
        return setl_id

    async def send(self, step: Step) -> dict[str, Any]:
        client = self.server.client(step.code)
        envelope = client.envelope(
            step.infno,
            step.build(self),
            msgid=step.msgid,
            inf_time=step.inf_time,
            insuplc_admdvs=step.insuplc_admdvs,
        )
        before = group_batches()
        status, raw = await client.post_raw(msgspec.json.encode(envelope))
        self.batches[step.name] = group_batches() - before
        assert status == 200, raw
        answer = decode(raw)
        if step.name in self.raw:
            raise AssertionError(f"step {step.name} sent twice")
        self.raw[step.name] = raw
        self.answers[step.name] = answer
        return answer


# -------------------------------------------------------------------------------- normalising


@dataclass(frozen=True, slots=True)
class IdNames:
    """A gateway's ids named by the msgid of the request that created them."""

    visits: dict[str, str]  # mdtrt_id -> "V:<created_msgid>"
    settlements: dict[str, str]  # setl_id -> "S:<medins_setl_id>"

    @classmethod
    async def of(cls, server: Server) -> IdNames:
        visits = {
            r["mdtrt_id"]: f"V:{r['created_msgid']}"
            for r in await server.fetch("SELECT mdtrt_id, created_msgid FROM encounters")
        }
        settlements = {
            r["setl_id"]: f"S:{r['medins_setl_id']}"
            for r in await server.fetch("SELECT setl_id, medins_setl_id FROM settlements")
        }
        # Two ids under one name would compare as one: refused rather than compared loosely.
        assert len(set(visits.values())) == len(visits)
        assert len(set(settlements.values())) == len(settlements)
        return cls(visits, settlements)

    def visit(self, value: Any) -> Any:
        return self.visits.get(value, value) if isinstance(value, str) else value

    def settlement(self, value: Any) -> Any:
        return self.settlements.get(value, value) if isinstance(value, str) else value


# Fields whose value is a clock reading: the receive and answer times, and the settlement time.
_CLOCKS = re.compile(rb'"(inf_refmsgid|refmsg_time|respond_time|setl_time)":"[^"]*"')
_IDS = re.compile(rb'"(mdtrt_id|setl_id)":"([^"]*)"')
_IDS_IN_TEXT = re.compile(r"(就诊ID|结算ID)(\d{20,})")


def normalised_answer(raw: bytes, names: IdNames) -> bytes:
    """The answer's bytes with the clocks blanked and the ledger's ids named; key order, every
    other value and the bytes between them stay exactly as answered."""

    def clock(m: re.Match[bytes]) -> bytes:
        return b'"' + m.group(1) + b'":"<clock>"'

    def named(m: re.Match[bytes]) -> bytes:
        key, value = m.group(1), m.group(2).decode()
        name = names.visit(value) if key == b"mdtrt_id" else names.settlement(value)
        return b'"' + key + b'":"' + name.encode() + b'"'

    def in_text(m: re.Match[str]) -> str:
        kind, value = m.group(1), m.group(2)
        return kind + (names.visit(value) if kind == "就诊ID" else names.settlement(value))

    out = _IDS.sub(named, _CLOCKS.sub(clock, raw))
    return _IDS_IN_TEXT.sub(in_text, out.decode()).encode()


# Columns that hold a clock reading, never compared.
TIME_COLUMNS = frozenset({"setl_time", "cancel_setl_time", "created_at", "at", "replayed_at"})
VISIT_KEYS = frozenset({"mdtrt_id"})
SETTLEMENT_KEYS = frozenset({"setl_id", "replaces_setl_id", "released_from", "old_setl_id"})
# Columns numbered from settlement_event_seq: compared by their order, not their value.
EVENT_COLUMNS = frozenset({"in_force_seq", "cancel_seq", "seq"})


def _named(value: Any, names: IdNames, key: str = "") -> Any:
    if key in VISIT_KEYS:
        return names.visit(value)
    if key in SETTLEMENT_KEYS:
        return names.settlement(value)
    if isinstance(value, dict):
        return {k: _named(v, names, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_named(v, names) for v in value]
    return value


def _plain(value: Any) -> Any:
    """A database value as comparable, printable data."""
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (int, str, bool, type(None), dict, list)):
        return value
    return str(value)


async def table(
    server: Server,
    names: IdNames,
    sql: str,
    *,
    drop: Iterable[str] = (),
    events: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """The rows of a query, normalised: time columns and `drop` left out, ids named, event
    numbers replaced by their rank; sorted, so that row order is not what is compared."""
    skip = TIME_COLUMNS | set(drop)
    rows = []
    for record in await server.fetch(sql):
        row: dict[str, Any] = {}
        for key, value in record.items():
            if key in skip:
                continue
            if key in EVENT_COLUMNS and events is not None:
                row[key] = None if value is None else events[int(value)]
            else:
                row[key] = _named(_plain(value), names, key)
        rows.append(row)
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, ensure_ascii=False))


async def event_ranks(server: Server) -> dict[int, int]:
    """settlement_event_seq values in use, by their rank: the order of settling and cancelling."""
    rows = await server.fetch("SELECT seq FROM settlement_events ORDER BY seq")
    return {int(r["seq"]): n for n, r in enumerate(rows)}


LEDGER = {
    "settlements": "SELECT * FROM settlements",
    "settlement_funds": "SELECT * FROM settlement_funds",
    "settlement_events": "SELECT * FROM settlement_events",
    "accumulators": "SELECT * FROM accumulators",
    "accounts": "SELECT * FROM accounts",
    "fee_lines": "SELECT * FROM fee_lines",
    "encounters": "SELECT * FROM encounters",
    "presettlements": "SELECT * FROM presettlements",
    # The stored answers themselves are compared as answers; here, who got which outcome.
    "idempotency": "SELECT fixmedins_code, msgid, infno, infcode, reversed_by, tombstone"
    " FROM idempotency",
}


async def ledger(server: Server) -> dict[str, list[dict[str, Any]]]:
    """Every ledger table a settlement writes, normalised."""
    names = await IdNames.of(server)
    events = await event_ranks(server)
    return {name: await table(server, names, sql, events=events) for name, sql in LEDGER.items()}
