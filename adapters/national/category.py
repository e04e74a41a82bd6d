"""A request's medical category (门诊, 门慢门特, 住院, 药店), read before its handler runs, for the
emergency plan's scopes narrowed to one category (gateway.emergency.plan.rules).

Asked only while some plan scope names a category, so the plain path never decodes anything here.
Cheap when asked: the kind of visit a transaction belongs to settles it for inpatient stays and
pharmacy purchases (each admits one category only), and otherwise only the nodes that carry a
`med_type` are decoded, every other field of the input skipped by the decoder.
"""

from __future__ import annotations

import msgspec

from adapters.national.envelope import Code, Request
from gateway.core.eligibility import CATEGORY_OF, KIND_CATEGORIES
from gateway.core.model import Category


class _MedTyped(msgspec.Struct):
    med_type: Code = None


class _Nodes(msgspec.Struct):
    """Where the national inputs carry med_type: 2206/2207 (and 2303/2304, optional there)
    `data`, 2203/2401 `mdtrtinfo`, 2101/2102 `druginfo`, 2204/2301 `feedetail[]` (one object
    accepted as well, as the upload handlers do)."""

    data: _MedTyped | None = None
    mdtrtinfo: _MedTyped | None = None
    druginfo: _MedTyped | None = None
    feedetail: list[_MedTyped] | _MedTyped | None = None


_nodes = msgspec.json.Decoder(_Nodes)


def request_category(kind: str | None, req: Request) -> Category | None:
    """The category of this request: from the kind of visit when that admits only one, else
    from the med_type its input names. None when neither tells (an outpatient call without a
    med_type — outpatient or chronic —, a med_type the gateway does not settle, input that does
    not decode: the handler refuses it later with the proper message)."""
    allowed = KIND_CATEGORIES.get(kind) if kind is not None else None
    if allowed is not None and len(allowed) == 1:
        return next(iter(allowed))
    try:
        nodes = _nodes.decode(req.input)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    codes: list[Code] = []
    for node in (nodes.data, nodes.mdtrtinfo, nodes.druginfo):
        if node is not None and node.med_type is not None:
            codes.append(node.med_type)
    rows = nodes.feedetail
    if isinstance(rows, _MedTyped):
        rows = [rows]
    codes += [row.med_type for row in rows or () if row.med_type is not None]
    found = {CATEGORY_OF.get(str(code)) for code in codes}
    if len(found) != 1:
        return None  # none named, or rows naming different categories
    category = found.pop()
    if category is None or (allowed is not None and category not in allowed):
        return None  # unsupported, or not this kind of visit's: the handler refuses it
    return category
