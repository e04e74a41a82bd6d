"""The length check against a plain reading of its rule, over generated requests: the same
verdict and, for a refusal, the same words (the first too-long text in the order decoded,
named by its path, a list's items counted from 1 as the clerk counts lines:
feedetail第3条.feedetl_sn)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.national import lengths
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
