"""How long a text field of the national interface may be: one rule for every transaction.

Fields are limited to the interface's length where protocol.md gives one (the larger where two
sources differ), any other text to `OTHER`. The gateway stores and echoes what it decodes, so a
100,000-character 门诊号 would otherwise be kept and sent back to every HIS and CSV reader.
Lengths count characters, not bytes: a clerk's 50-character name in Chinese is 50.

Two halves of one rule. A code field (`Code`: text, number or null, nearly two hundred of them)
is bounded where msgspec decodes it, in C: `bound` gives each such field of a decoded node type
the length of its name, and `refusal` words the decoder's complaint as the clerk reads it. The
walk in Python (`check`) is left only the fields a type cannot bound: amounts (`Any`, read later
by their own grammar) and free-form values. On a five-line sale it was a tenth of the gateway's
own work per request while it walked every field.
"""

from __future__ import annotations

import inspect
import re
from typing import Annotated, Any

import msgspec

from adapters.national.paths import clerk_path
from gateway.protocol.errors import BadRequest

OTHER = 1000  # any text the interface gives no length, e.g. main_cond_dscr, a date-time
# 9101 fsUploadIn.in (the Base64 file) has bounds of its own in the upload's reader.
UNBOUNDED = frozenset({"in"})
LENGTHS: dict[str, int] = {
    # 公共输入 (protocol.md §1.2); msgid has room for the 40 characters its grammar allows
    "infno": 6,
    "msgid": 40,
    "mdtrtarea_admvs": 6,
    "insuplc_admdvs": 6,
    "recer_sys_code": 10,
    "dev_no": 100,
    "dev_safe_info": 2000,
    "cainfo": 1024,
    "signtype": 10,
    "infver": 6,
    "opter_type": 3,
    "opter": 30,
    "opter_name": 50,
    "fixmedins_code": 30,
    "fixmedins_name": 200,
    "sign_no": 30,
    # persons and certificates (§2.1, §2.2)
    "opter_no": 20,
    "mac": 20,  # 9001 signIn
    "ip": 20,
    "psn_no": 30,
    "mdtrt_cert_type": 3,
    "mdtrt_cert_no": 50,
    "card_sn": 32,
    "psn_cert_type": 6,
    "certno": 50,
    "psn_name": 50,
    # visits and admissions (§2.3, §2.4)
    "mdtrt_id": 30,
    "setl_id": 30,
    "insutype": 6,
    "ipt_otp_no": 30,
    "ipt_no": 30,
    "medrcdno": 30,
    "atddr_no": 30,
    "dr_name": 50,
    "chfpdr_name": 50,
    "dept_code": 30,
    "dept_name": 100,
    "adm_dept_codg": 30,
    "adm_dept_name": 100,
    "dscg_dept_codg": 30,
    "dscg_dept_name": 100,
    "adm_bed": 30,
    "adm_diag_dscr": 200,
    "coner_name": 50,
    # 科别 is a 6-character code, but binzhe's HIS fills it with the department's name
    # (SYBController.GH2201: `caty = department.name`; found from outside: "中医内科门诊部"
    # refused its registration); the settlement reads none of it: the department name's room.
    "caty": 100,
    "med_type": 6,
    "dise_codg": 30,
    "dise_name": 500,
    "dscg_maindiag_code": 30,
    "dscg_maindiag_name": 100,
    "dscg_way": 6,
    "diag_type": 3,
    "diag_code": 20,
    "diag_name": 100,
    "diag_dept": 50,
    "dise_dor_no": 30,
    "dise_dor_name": 50,
    "vali_flag": 3,
    # fee lines (§2.3 2204, §2.4 2301, §2.5 drugdetail)
    "feedetl_sn": 30,
    "init_feedetl_sn": 30,
    "chrg_bchno": 30,
    "rxno": 30,
    "rx_circ_flag": 3,
    "med_list_codg": 50,
    "medins_list_codg": 150,
    "bilg_dept_codg": 30,
    "bilg_dept_name": 100,
    "bilg_dr_codg": 30,
    "bilg_dr_name": 50,
    "hosp_appr_flag": 3,
    "tcmdrug_used_way": 6,
    "sin_dos_dscr": 200,
    "used_frqu_dscr": 200,
    "medc_way_dscr": 200,
    # settlements, reversals (§2.3 2206/2207, §2.6)
    "psn_setlway": 6,
    "mid_setl_flag": 3,
    "invono": 20,
    "omsgid": 40,
    "oinfno": 6,
    "setl_optins": 6,  # 3201-3202 (§2.7)
    # catalog mappings (§2.8 3301): the descriptive columns are paragraphs in real catalogs
    "fixmedins_hilist_id": 30,
    "fixmedins_hilist_name": 200,
    "list_type": 30,
    "exct_cont": 4000,
    "item_cont": 4000,
}

# One look-up per text: a field's limit, the unbounded ones past any text's length.
_LIMITS: dict[str, int] = {**LENGTHS, **dict.fromkeys(UNBOUNDED, 2**62)}

# A code field's annotation, as written (`Code`, under postponed evaluation) or as its union.
_CODE = ("Code", str | int | None)
# Fields whose values are never text nor hold any: the raw input node, decoded later.
_OPAQUE = ("msgspec.Raw", msgspec.Raw)

# Per decoded type: (attribute, name on the wire, its limit) of the fields left to the walk.
_rest: dict[type[Any], tuple[tuple[str, str, int], ...]] = {}


def limit_of(name: str) -> int:
    return _LIMITS.get(name, OTHER)


# msgspec holds an int's bounds to int64: a code of 19 characters or more sent as a number is
# held to the widest int64, 19 digits, which no client's code number reaches.
_INT64 = 2**63 - 1
# The wire names of every bounded code field: a number refused in one is worded as a length.
_CODE_NAMES: set[str] = set()


def _number(limit: int) -> Any:
    """A code sent as a JSON number, held to its field's length in decimal text (the sign
    counts): the gateway stores and echoes it as that text (envelope.text). Found from outside:
    a 1,000-digit feedetl_sn sent as a number settled and came back in the answer."""
    if limit >= 19:
        return Annotated[int, msgspec.Meta(ge=-_INT64, le=_INT64)]
    return Annotated[int, msgspec.Meta(ge=-(10 ** (limit - 1) - 1), le=10**limit - 1)]


def bound(kind: type[Any]) -> None:
    """Bound each code field of a node type by its wire name's length, as text or number,
    where msgspec decodes it. Before any decoder reads the type's annotations: msgspec resolves
    them once, when the first decoder that reaches the type is built, and keeps what it found."""
    annotations = kind.__annotations__  # the type's own, changed in place
    for attr, wire in zip(kind.__struct_fields__, kind.__struct_encode_fields__, strict=True):
        written = annotations.get(attr)
        if written is not None and any(written == code for code in _CODE):
            limit = limit_of(wire)
            text = Annotated[str, msgspec.Meta(max_length=limit)]
            annotations[attr] = text | _number(limit) | None
            _CODE_NAMES.add(wire)


class Bounded(msgspec.StructMeta):
    """The metaclass of decoded node types: each is bounded as it is made, so no decoder can
    see it unbounded."""

    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **config: Any
    ) -> Bounded:
        kind = super().__new__(mcls, name, bases, namespace, **config)
        bound(kind)
        return kind


def _left(kind: type[Any]) -> tuple[tuple[str, str, int], ...]:
    """The fields of a decoded type that `check` walks: all but the bounded and opaque ones.
    A type `bound` never saw (a test's, a dict-shaped node's) keeps every field."""
    rest = _rest.get(kind)
    if rest is None:
        hints = {}
        for klass in reversed(kind.__mro__):
            hints.update(inspect.get_annotations(klass))
        rest = _rest[kind] = tuple(
            (attr, wire, limit_of(wire))
            for attr, wire in zip(
                kind.__struct_fields__, kind.__struct_encode_fields__, strict=True
            )
            if not _is_bounded(hints.get(attr)) and not any(hints.get(attr) == o for o in _OPAQUE)
        )
    return rest


def _is_bounded(annotation: Any) -> bool:
    """A code field `bound` rewrote: text with a length msgspec checks, a number, or null."""
    return any(
        getattr(member, "__metadata__", None)
        and any(isinstance(meta, msgspec.Meta) and meta.max_length is not None
                for meta in member.__metadata__)
        for member in getattr(annotation, "__args__", ())
    )  # fmt: skip


_CONTAINERS = (list, msgspec.Struct, dict)


def check(node: Any, at: str = "") -> None:
    """Refuse the first text longer than its field allows among those msgspec did not bound,
    naming the field as the clerk sees it (feedetail第3条.pric). Walks what was decoded: fields
    the gateway ignores are neither stored nor echoed, and the body limit bounds them. A field's
    path is only spelt out for the containers walked into and the refusal: every request is
    checked, few are refused."""
    if isinstance(node, msgspec.Struct):
        for attr, name, limit in _left(type(node)):
            value = getattr(node, attr)
            if value.__class__ is str:
                if len(value) > limit:
                    _too_long(value, f"{at}.{name}" if at else name, limit)
            elif value is not None:
                _value(value, name, limit, at)
    elif isinstance(node, dict):
        for key, value in node.items():
            name = str(key)
            _value(value, name, limit_of(name), at)


def _value(value: Any, name: str, limit: int, parent: str) -> None:
    """`value` of the field `name`, at `parent`.`name`."""
    if isinstance(value, str):
        if len(value) > limit:
            _too_long(value, f"{parent}.{name}" if parent else name, limit)
    elif isinstance(value, _CONTAINERS):
        _walk(value, name, limit, f"{parent}.{name}" if parent else name)


def _walk(value: Any, name: str, limit: int, at: str) -> None:
    """A container at `at`: a list's items are the field's own, under its name and limit."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                if len(item) > limit:
                    _too_long(item, f"{at}[{i}]", limit)
            elif isinstance(item, _CONTAINERS):
                _walk(item, name, limit, f"{at}[{i}]")
    else:
        check(value, at)


def _too_long(value: str, at: str, limit: int) -> None:
    raise _refused(value, at, limit)


def _refused(value: str, at: str, limit: int) -> BadRequest:
    return BadRequest(
        f"字段{clerk_path(at)}过长（{len(value)}个字符），接口规定最多{limit}个字符，请核对后重新发送"
    )


_BOUND_BROKEN = re.compile(r"Expected `str` of length <= (?P<limit>\d+) - at `\$\.?(?P<at>[^`]*)`")
# A code sent as a number past its bounds, or past what a number may be at all.
_NUMBER_BROKEN = re.compile(
    r"(?:Expected `int` [<>]= -?\d+|Integer value out of range) - at `\$\.?(?P<at>[^`]*)`"
)
_STEP = re.compile(r"\.?([^.\[]+)|\[(\d+)\]")
_LAST = re.compile(r"([^.\[\]]+)(?:\[\d+\])*$")


def refusal(exc: msgspec.ValidationError, raw: bytes) -> BadRequest | None:
    """A bounded field's text (or number) over its length, in the walk's words; None for any
    other complaint. The decoder says where and the limit, not how long the text was: that is
    read from the raw JSON, on this path only (a refused request)."""
    found = _BOUND_BROKEN.fullmatch(str(exc))
    if found is None:
        return _number_refusal(str(exc))
    at, limit = found["at"], int(found["limit"])
    try:
        value: Any = msgspec.json.decode(raw)
        for key, index in _STEP.findall(at):
            value = value[int(index)] if index else value[key]
    except (msgspec.DecodeError, LookupError, TypeError):
        value = None
    if not isinstance(value, str) or len(value) <= limit:
        # A key sent twice: the decoder refused one text, a plain reading keeps the other.
        return BadRequest(f"字段{clerk_path(at)}过长，接口规定最多{limit}个字符，请核对后重新发送")
    return _refused(value, at, limit)


def _number_refusal(complaint: str) -> BadRequest | None:
    """A code field sent as a number too long for it: named with its limit and told to send
    text. An amount out of range is not a length, and is left to the envelope's words."""
    found = _NUMBER_BROKEN.fullmatch(complaint)
    name = _LAST.search(found["at"]) if found is not None else None
    if found is None or name is None or name[1] not in _CODE_NAMES:
        return None
    limit, where = limit_of(name[1]), clerk_path(found["at"])
    if limit >= 19:  # within the field's length, past what a number holds
        return BadRequest(f"字段{where}以数字发送超出范围（最大{_INT64}），请以文本（带引号）发送")
    return BadRequest(f"字段{where}过长（以数字发送），接口规定最多{limit}个字符，请核对后重新发送")
