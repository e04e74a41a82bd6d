"""Who may be settled under what: the checks on the person and the visit that come before the
split (pure). Adapters decode the request and call these; the split (gateway.core.settle)
calls them too, so a rule is written once whichever transaction reaches it first."""

from __future__ import annotations

from gateway.core.model import Category, Person
from gateway.protocol.errors import RuleRejected

OUTPATIENT, INPATIENT, CHRONIC, PHARMACY = (
    Category.OUTPATIENT,
    Category.INPATIENT,
    Category.CHRONIC,
    Category.PHARMACY,
)

# The policy category of each med_type the gateway settles (settlement-rules §3).
CATEGORY_OF = {
    "11": OUTPATIENT,
    "12": OUTPATIENT,
    "13": OUTPATIENT,
    "19": OUTPATIENT,
    "21": INPATIENT,
    "22": INPATIENT,
    "23": INPATIENT,
    "24": INPATIENT,
    "14": CHRONIC,
    "41": PHARMACY,
}


def category_of(med_type: str) -> Category:
    """Policy category of a med_type; others are unsupported (rules §3)."""
    category = CATEGORY_OF.get(med_type)
    if category is None:
        raise RuleRejected(
            f"不支持的医疗类别{med_type}（支持11、12、13、14、19、21、22、23、24、41）"
        )
    return category


# The categories each kind of visit may be settled under (settlement-rules §3).
KIND_CATEGORIES = {
    "outpatient": frozenset({Category.OUTPATIENT, Category.CHRONIC}),
    "inpatient": frozenset({Category.INPATIENT}),
    "pharmacy": frozenset({Category.PHARMACY}),
}


def require_insutype(sent: str, held: str, *, held_as: str = "参保人险种") -> None:
    """An insutype the request names must be the one the person (or the visit) holds; none
    sent is no claim. `held_as`: what the held one is, in the refusal."""
    if sent and sent != held:
        raise RuleRejected(f"险种类型{sent}与{held_as}{held}不一致")


def category_for(kind: str, med_type: str, mdtrt_id: str) -> Category:
    """The med_type must be supported and belong to the kind of visit."""
    category = category_of(med_type)
    if category not in KIND_CATEGORIES[kind]:
        raise RuleRejected(f"医疗类别{med_type}与就诊类型不符（就诊ID{mdtrt_id}）")
    return category


# A settlement reads the disease from the visit: its request has no field to send it in.
FROM_THE_VISIT = "门诊慢特病结算须先在就诊信息上传（2203）中填写病种编码dise_codg"


def require_chronic_filing(
    person: Person, dise_codg: str, missing: str = "门诊慢特病就诊须填写病种编码dise_codg"
) -> None:
    """A chronic-disease (门慢门特) visit needs the disease filed for the person (`missing`: the
    refusal when none is named, in the words of where it is sent)."""
    if not dise_codg:
        raise RuleRejected(missing)
    if dise_codg not in person.chronic_dise_codg:
        raise RuleRejected(f"参保人未办理病种{dise_codg}的门诊慢特病备案，不能按门慢门特结算")
