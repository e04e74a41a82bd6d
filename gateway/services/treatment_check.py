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
from gateway.core.dates import DateRules
from gateway.core.model import Category, Person
from gateway.ledger import persons
from gateway.protocol.errors import RuleRejected

POOL_FUNDS = {settle.EMPLOYEE: settle.EMPLOYEE_POOL, settle.RESIDENT: settle.RESIDENT_POOL}


class TreatmentAsk(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 2001: the person, the insutype ("" for the person's), the med_type ("" for none), the
    visit's time (None: now), the disease (for 门慢门特)."""

    psn_no: str
    insutype: str
    med_type: str
    begntime: dt.datetime | None
    dise_codg: str


class Verdict(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Whether the fund pays (`enjoys`) and, where it does not, why (`why`)."""

    fund_pay_type: str
    enjoys: bool
    why: str


async def check(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    ask: TreatmentAsk,
    *,
    dates: DateRules,
    admdvs: str,
    now: dt.datetime,
) -> tuple[Person, Verdict]:
    """The person and the pool fund's verdict (an unknown person is refused, not judged);
    `admdvs` the institution's region, whose date bounds a registration there is held to."""
    person, _ = await persons.read(conn, ask.psn_no)
    # The fund of the insutype asked, or of the person's where the one asked is none the
    # gateway settles (found from outside: 320 was answered with the residents' fund).
    insutype = ask.insutype if ask.insutype in POOL_FUNDS else person.insutype
    fund = POOL_FUNDS.get(insutype, settle.RESIDENT_POOL)
    try:
        persons.require_insured(person)
        eligibility.require_insutype(ask.insutype, person.insutype)
        if ask.med_type and eligibility.category_of(ask.med_type) is Category.CHRONIC:
            eligibility.require_chronic_filing(person, ask.dise_codg)
        when = ask.begntime or now
        if ask.begntime is not None:
            # A registration on that day would be refused by the date bounds first (found from
            # outside: a day 40 days ahead was answered "enjoys").
            dates.check("就诊时间begntime", ask.begntime, admdvs=admdvs, now=now)
        policy = settle.policy_on(snapshot, person.insuplc_admdvs, when.date())
        settle.side_of(policy, ask.insutype or person.insutype)
    except RuleRejected as refused:  # NotInsured too
        return person, Verdict(fund_pay_type=fund, enjoys=False, why=refused.err_msg)
    return person, Verdict(fund_pay_type=fund, enjoys=True, why="")
