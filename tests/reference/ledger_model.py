"""The reference model as the ledger checker's rules function (gateway.ledger.checker.Rules).

The checker walks a person's history out of the ledger; this adapter answers each step with the
independent model (tests/reference/model.py) instead of the gateway's core, so the walk holds the
core to rules written without reading it. The model is used as it is: a fresh `Model` per person,
the stored per-line splits handed to `Model.compute` as its own `LineSplit`s, and a reinstatement
(2601 of a cancellation) is the model's own `apply` of the settlement it computed before.
"""

from __future__ import annotations

from gateway.ledger.checker import Outcome, Refused, SettlementFacts
from tests.reference.data import Person, ReferenceData
from tests.reference.model import LineSplit, Model, Rejected, Visit

# The ledger's accumulator fields as sums over the model's per-group years.
_YEAR_FIELDS = {
    "hifob": "large_amount",
    "hifmi": "critical_illness",
    "mi_qualified": "qualified_burden",
    "maf": "assistance",
    "cvlserv": "cvlserv",
}


class ModelRules:
    """`Rules` over the reference model."""

    def __init__(self, data: ReferenceData) -> None:
        self.data = data
        self.model = Model(data)
        self.psn_no = ""

    def open(self, psn_no: str, opening_balance: int) -> None:
        self.model = Model(self.data)
        self.model.balances[psn_no] = opening_balance
        self.psn_no = psn_no

    def _person(self, s: SettlementFacts) -> None:
        """The person as the settlement saw them (the model reads data.persons)."""
        p = s.person
        known = self.data.persons.get(p.psn_no)
        person = Person(
            psn_no=p.psn_no,
            name=known.name if known else "",
            certno=known.certno if known else "",
            region=p.insuplc_admdvs,
            insutype=p.insutype,
            psn_type=p.psn_type,
            insured=True,
            cvlserv=p.cvlserv_flag == "1",
            balance_fen=known.balance_fen if known else 0,
            maf_class=p.maf_class,
            chronic=frozenset(p.chronic_dise_codg),
            card=known.card if known else "",
        )
        self.data.persons[p.psn_no] = person

    def settle(self, s: SettlementFacts) -> Outcome:
        self._person(s)
        visit = Visit(
            mdtrt_id=s.mdtrt_id,
            psn_no=s.person.psn_no,
            fixmedins_code=s.fixmedins_code,
            service_date=s.service_date,
            med_type=s.med_type,
            dise_codg=s.dise_codg,
        )
        lines = [
            LineSplit(
                feedetl_sn=ln.feedetl_sn,
                amount=ln.det_item_fee_sumamt,
                chrgitm_lv=ln.chrgitm_lv,
                selfpay_bp=ln.selfpay_bp,
                fulamt=ln.fulamt_ownpay_amt,
                overlmt=ln.overlmt_amt,
                preselfpay=ln.preselfpay_amt,
                inscp=ln.inscp_scp_amt,
                national_code=ln.med_list_codg,
                memo=ln.memo,
            )
            for ln in s.lines
        ]
        try:
            made = self.model.compute(visit, s.med_type, lines, "1" if s.acct_used_flag else "0")
        except (Rejected, LookupError) as exc:
            raise Refused(str(exc)) from exc
        self.model.apply(s.setl_id, made)
        return Outcome(amounts=dict(made.amounts), funds={f.code: f.amount for f in made.funds})

    def cancel(self, setl_id: str) -> None:
        self.model.cancel(setl_id)

    def reinstate(self, setl_id: str) -> None:
        self.model.cancelled.discard(setl_id)
        self.model.apply(setl_id, self.model.settlements[setl_id])

    def accumulators(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for (psn_no, year, group), y in self.model.years.items():
            if psn_no != self.psn_no:
                continue
            acc = out.setdefault(year, _zero())
            acc[f"pool_{group}"] += y.pool
            for ledger_field, model_field in _YEAR_FIELDS.items():
                acc[ledger_field] += getattr(y, model_field)
        for (psn_no, year, category), used in self.model.deductible_used.items():
            if psn_no == self.psn_no:
                out.setdefault(year, _zero())[f"dedc_{category}"] += used
        return out

    def balance(self) -> int:
        return self.model.balances[self.psn_no]


def _zero() -> dict[str, int]:
    return {
        "dedc_outpatient": 0,
        "dedc_chronic": 0,
        "pool_outpatient": 0,
        "pool_inpatient": 0,
        "pool_pharmacy": 0,
        **dict.fromkeys(_YEAR_FIELDS, 0),
    }
