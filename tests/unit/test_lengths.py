"""The length check against a plain reading of its rule, over generated requests: the same
verdict and, for a refusal, the same words (the first too-long text in the order decoded,
named by its path, a list's items counted from 1 as the clerk counts lines:
feedetail第3条.feedetl_sn)."""

from __future__ import annotations

import inspect
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.national import lengths
from adapters.national.envelope import Envelope, decode_input, decode_request, text
from adapters.national.wire import Node
from adapters.pos.pharmacy import DrugDetail, DrugInfo, In2101
from gateway.protocol.errors import BadRequest

NAMES = ["msgid", "infno", "feedetl_sn", "psn_no", "in", "medins_list_codg", "unknown_field"]


def _reference(node: Any, at: str = "") -> str | None:
    """The rule read plainly: every text of a field within its length (`in` without one, any
    field the interface gives no length `OTHER`); lists' items under their field's name."""

    def value(v: Any, name: str, path: str) -> str | None:
        if isinstance(v, str):
            limit = lengths.LENGTHS.get(name, lengths.OTHER)
            if name not in lengths.UNBOUNDED and len(v) > limit:
                return (
                    f"字段{path}过长（{len(v)}个字符），接口规定最多{limit}个字符，请核对后重新发送"
                )
            return None
        if isinstance(v, list):
            for i, item in enumerate(v):
                if (found := value(item, name, f"{path}第{i + 1}条")) is not None:
                    return found
            return None
        if isinstance(v, (msgspec.Struct, dict)):
            return _reference(v, path)
        return None

    if isinstance(node, msgspec.Struct):
        node = {f.encode_name: getattr(node, f.name) for f in msgspec.structs.fields(node)}
    for key, v in node.items():
        if (found := value(v, str(key), f"{at}.{key}" if at else str(key))) is not None:
            return found
    return None


def _texts(name: str) -> st.SearchStrategy[str]:
    """Texts around the field's limit, where the verdict turns."""
    limit = lengths.LENGTHS.get(name, lengths.OTHER)
    return st.integers(max(0, limit - 1), limit + 1).map(lambda n: "药" * n)


leaves = st.sampled_from(NAMES).flatmap(
    lambda n: st.tuples(st.just(n), st.one_of(_texts(n), st.integers(), st.none()))
)
trees = st.recursive(
    st.dictionaries(st.sampled_from(NAMES), st.one_of(st.text(max_size=3), st.integers())),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: {"feedetail": items}),
        st.lists(leaves, max_size=4).map(dict),
        st.tuples(inner, inner).map(lambda pair: {**pair[0], "data": pair[1]}),
        st.lists(leaves, max_size=3).map(lambda ls: {ls[0][0]: [v for _, v in ls]} if ls else {}),
    ),
    max_leaves=12,
)


def _verdict(node: Any) -> str | None:
    try:
        lengths.check(node)
    except BadRequest as exc:
        return str(exc.args[0]) if exc.args else str(exc)
    return None


@settings(max_examples=400, deadline=None)
@given(trees)
def test_the_check_is_the_rule(tree: dict[str, Any]) -> None:
    assert _verdict(tree) == _reference(tree)


class Line(msgspec.Struct):
    feedetl_sn: str
    note: str | None = None
    codes: list[str] = []


class Body(msgspec.Struct, rename={"lines": "feedetail"}):
    psn_no: str
    lines: list[Line]
    input_in: str = msgspec.field(default="", name="in")


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (Body("p", [Line("1" * 30), Line("2", codes=["x"] * 3)]), None),
        (Body("p", [Line("1"), Line("2" * 31)]), "feedetail第2条.feedetl_sn"),
        (Body("p", [Line("1", note="n" * 1001)]), "feedetail第1条.note"),
        (Body("p", [Line("1", codes=["c", "c" * 1001])]), "feedetail第1条.codes第2条"),
        (Body("p" * 31, [Line("1" * 31)]), "psn_no"),
        (Body("p", [], "A" * 100_000), None),
    ],
)
def test_decoded_nodes_are_named_as_on_the_wire(body: Body, refused: str | None) -> None:
    reference = _reference(body)
    assert _verdict(body) == reference
    assert (reference is None) == (refused is None)
    if refused is not None:
        assert reference is not None and reference.startswith(f"字段{refused}过长")


# The decoded node types: code fields bounded where msgspec decodes them, the rest walked. -----


def _node_types() -> list[type[Any]]:
    import gateway.app.server  # noqa: F401  (every transaction's module, and so its node types)

    found: list[type[Any]] = [Envelope]
    pending: list[type[Any]] = [Node]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found


def test_every_code_field_of_every_node_type_is_bounded_by_its_wire_name() -> None:
    """Bounded by the decoder, each with its own name's limit; every other field (amounts,
    free-form values, nested nodes) left to the walk, but the raw input node."""
    kinds = _node_types()
    assert len(kinds) > 40
    bounded = 0
    for kind in kinds:
        annotations = inspect.get_annotations(kind)
        walked = [wire for _, wire, _ in lengths._left(kind)]
        for attr, wire in zip(kind.__struct_fields__, kind.__struct_encode_fields__, strict=True):
            written = annotations[attr]
            if lengths._is_bounded(written):
                bounded += 1
                limit = lengths.limit_of(wire)
                metas = [
                    (member.__origin__, meta)
                    for member in written.__args__
                    for meta in getattr(member, "__metadata__", ())
                ]
                assert [m.max_length for t, m in metas if t is str] == [limit], (kind, wire)
                # A number is held to as many characters as its decimal text, sign included,
                # as far as msgspec's int64 bounds reach.
                (held,) = [m for t, m in metas if t is int]
                widest = 2**63 - 1
                assert held.le == min(10**limit - 1 if limit < 19 else widest, widest)
                assert held.ge == -(10 ** (limit - 1) - 1 if limit < 19 else widest)
                assert wire not in walked
            else:
                assert written not in ("Code", str | int | None), (kind, wire)
                assert wire in walked or wire in ("input", "Input"), (kind, wire)
    assert bounded > 190  # nearly two hundred code fields in the interface's nodes


def _known(node: dict[str, Any], kind: type[Any]) -> dict[str, Any]:
    """The fields of `node` that `kind` decodes (the others are ignored, as real centres do)."""
    names = {f.encode_name for f in msgspec.structs.fields(kind)}
    return {k: v for k, v in node.items() if k in names}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["envelope", "druginfo", "drugdetail"]),
    st.sampled_from(
        [
            *("feedetl_sn", "medins_list_codg", "rxno", "pric", "cnt", "memo", "psn_no"),
            *("opter_name", "dev_no", "medfee_sumamt", "fixmedins_name"),
        ]
    ),
    st.integers(0, 2),
    st.integers(-1, 1),
)
def test_a_decoded_sale_is_refused_as_the_rule_says(
    where: str, name: str, line: int, past: int
) -> None:
    """One text around its field's length somewhere in a pharmacy sale (a code field the
    decoder bounds, an amount the walk checks, a field the node does not have): the verdict and
    the words are the plain rule's, read over the JSON as sent."""
    text = "药" * (lengths.LENGTHS.get(name, lengths.OTHER) + past)
    lines: list[dict[str, Any]] = [{"feedetl_sn": str(i + 1), "pric": "1.00"} for i in range(3)]
    node: dict[str, Any] = {"druginfo": {"psn_no": "P"}, "drugdetail": lines}
    envelope: dict[str, Any] = {"infno": "2101", "msgid": "M1", "fixmedins_code": "P1"}
    if where == "envelope":
        envelope[name] = text
    elif where == "druginfo":
        node["druginfo"][name] = text
    else:
        lines[line][name] = text
    try:
        decode_input(decode_request(msgspec.json.encode({**envelope, "input": node})), In2101)
        verdict = None
    except BadRequest as exc:
        verdict = str(exc.args[0])
    decoded = {
        **_known(envelope, Envelope),
        "druginfo": _known(node["druginfo"], DrugInfo),
        "drugdetail": [_known(ln, DrugDetail) for ln in lines],
    }
    assert verdict == _reference(decoded)


def test_a_field_sent_twice_is_refused_as_sent_twice() -> None:
    """JSON keeps the last of two equal keys; the gateway reads neither (the refusal of repeats
    has its own tests, in test_repeated_keys), whatever their lengths."""
    raw = msgspec.json.encode({"infno": "2101", "msgid": "M1", "fixmedins_code": "P1"})
    body = raw[:-1] + b',"input":{"druginfo":{"psn_no":"' + b"x" * 31 + b'","psn_no":"P"}}}'
    with pytest.raises(BadRequest) as refused:
        decode_input(decode_request(body), In2101)
    assert "psn_no在同一节点内出现了两次" in str(refused.value.args[0])


@pytest.mark.parametrize(
    ("where", "name", "number", "words"),
    [
        ("line", "feedetl_sn", "1" + "0" * 30, "drugdetail第2条.feedetl_sn以数字发送超出范围"),
        ("line", "feedetl_sn", "1" + "0" * 1000, "drugdetail第2条.feedetl_sn以数字发送超出范围"),
        ("line", "feedetl_sn", "1" + "0" * 5000, "drugdetail第2条.feedetl_sn以数字发送超出范围"),
        ("envelope", "opter", "1" + "0" * 25, "字段opter以数字发送超出范围"),
        (
            "envelope",
            "mdtrtarea_admvs",
            "1234567",
            "mdtrtarea_admvs过长（以数字发送），接口规定最多6个",
        ),
        (
            "envelope",
            "mdtrtarea_admvs",
            "-123456",
            "mdtrtarea_admvs过长（以数字发送），接口规定最多6个",
        ),
        ("druginfo", "psn_no", "1" + "0" * 30, "druginfo.psn_no以数字发送超出范围"),
        ("druginfo", "insutype", "3100000", "druginfo.insutype过长（以数字发送），接口规定最多6个"),
    ],
)
def test_a_code_sent_as_a_number_is_held_to_its_length(
    where: str, name: str, number: str, words: str
) -> None:
    """`number` is the JSON number's digits (Python will not write one past 4,300). Found from
    outside: a 1,000-digit feedetl_sn sent as a number settled and was echoed; past 4,300 digits
    the refusal spoke of a number out of range, not of a code too long."""
    lines: list[dict[str, Any]] = [{"feedetl_sn": str(i + 1), "pric": "1.00"} for i in range(3)]
    node: dict[str, Any] = {"druginfo": {"psn_no": "P"}, "drugdetail": lines}
    envelope: dict[str, Any] = {"infno": "2101", "msgid": "M1", "fixmedins_code": "P1"}
    target = {"envelope": envelope, "druginfo": node["druginfo"], "line": lines[1]}[where]
    target[name] = 7  # a placeholder of the same JSON type, swapped for the number's digits
    body = msgspec.json.encode({**envelope, "input": node}).replace(
        f'"{name}":7'.encode(), f'"{name}":{number}'.encode()
    )
    with pytest.raises(BadRequest) as refused:
        decode_input(decode_request(body), In2101)
    assert words in str(refused.value.args[0])


@pytest.mark.parametrize(
    ("name", "number"),
    [("feedetl_sn", 10**18), ("feedetl_sn", -(10**18)), ("mdtrtarea_admvs", 441800),
     ("mdtrtarea_admvs", -99999), ("opter", 2**63 - 1)],
)  # fmt: skip
def test_a_code_number_within_its_length_is_read_as_its_text(name: str, number: int) -> None:
    lines: list[dict[str, Any]] = [{"feedetl_sn": "1", "pric": "1.00"}]
    envelope: dict[str, Any] = {"infno": "2101", "msgid": "M1", "fixmedins_code": "P1"}
    (lines[0] if name == "feedetl_sn" else envelope)[name] = number
    body = msgspec.json.encode({**envelope, "input": {"druginfo": {}, "drugdetail": lines}})
    request = decode_request(body)
    sale = decode_input(request, In2101)
    read = sale.drugdetail[0].feedetl_sn if name == "feedetl_sn" else getattr(request, name)
    assert text(read) == str(number)
