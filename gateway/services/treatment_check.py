"""2001 人员待遇享受检查: whether a person may be settled by the pool fund for a visit, asked before
it is opened (found from outside: HIS code calls it, nhis-web before a maternity stay, the
Dongguan header, and was told the transaction was not supported).

The answer is the verdict of the rules a settlement applies first, each the one implementation
a settlement calls (gateway.core.eligibility, gateway.core.settle): the person insured, the
insutype the person's, the med_type one the gateway settles (and, for 门慢门特, the disease
filed), a policy of the insured region in force on the day. A rule refused is "does not enjoy",
with the refusal's own words as the reason; nothing is written.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from gateway.core import eligibility, settle
from gateway.core.catalog import Snapshot
from gateway.core.model import Category, Person
from gateway.ledger import persons
from gateway.protocol.errors import RuleRejected


class TreatmentAsk(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2001: the person, the insutype ("" for the person's), the med_type ("" for none), the
    day, the disease (for 门慢门特)."""

    psn_no: str
    insutype: str
    med_type: str
    on: dt.date
    dise_codg: str


class Verdict(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Whether the fund pays (`enjoys`) and, where it does not, why (`why`)."""

    fund_pay_type: str
    enjoys: bool
    why: str


async def check(
    conn: asyncpg.Connection, snapshot: Snapshot, ask: TreatmentAsk
) -> tuple[Person, Verdict]:
    """The person and the pool fund's verdict (an unknown person is refused, not judged)."""
    person, _ = await persons.read(conn, ask.psn_no)
    insutype = ask.insutype or person.insutype
    fund = settle.EMPLOYEE_POOL if insutype == settle.EMPLOYEE else settle.RESIDENT_POOL
    try:
        persons.require_insured(person)
        eligibility.require_insutype(ask.insutype, person.insutype)
        if ask.med_type and eligibility.category_of(ask.med_type) is Category.CHRONIC:
            eligibility.require_chronic_filing(person, ask.dise_codg)
        policy = settle.policy_on(snapshot, person.insuplc_admdvs, ask.on)
        settle.side_of(policy, insutype)
    except RuleRejected as refused:  # NotInsured too
        return person, Verdict(fund_pay_type=fund, enjoys=False, why=refused.err_msg)
    return person, Verdict(fund_pay_type=fund, enjoys=True, why="")
