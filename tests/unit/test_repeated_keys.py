"""The refusal of a key sent twice, against a plain reading of the rule over generated JSON.

Bodies are written here by hand, not by a JSON library (which cannot write a key twice): keys
and texts with colons, quotes and backslashes, some characters (colons among them) escaped as
\\uXXXX, whitespace anywhere it may go, nesting, and bodies past the size where the check
counts by walking. The reference is the rule itself: some object holds a key twice.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.national import repeated_keys
from adapters.national.envelope import decode_request
from adapters.national.paths import printable
from adapters.national.repeated_keys import refuse_repeated_keys
from gateway.protocol.errors import BadRequest

# A node as sent: ("obj", [(key, node), ...]) keeps repeats; ("arr", [...]); ("str", text); ("num", n).
Node = tuple[str, Any]

_chars = st.sampled_from([*list('ab:"\\ 药\n/'), "psn_no", "msgid"])
texts = st.lists(_chars, max_size=6).map("".join)
keys = st.sampled_from(["msgid", "input", "psn_no", "a:b", 'q"', "x\\", ":", "药"]) | texts


def _leaf() -> st.SearchStrategy[Node]:
    return texts.map(lambda t: ("str", t)) | st.integers(-99, 99).map(lambda n: ("num", n))


nodes: st.SearchStrategy[Node] = st.recursive(
    _leaf(),
    lambda inner: (
        st.lists(st.tuples(keys, inner), max_size=4).map(lambda p: ("obj", p))
        | st.lists(inner, max_size=3).map(lambda items: ("arr", items))
    ),
    max_leaves=12,
)


def _text(value: str, escape: bool) -> str:
    """A JSON string; with `escape`, every colon and non-ASCII character as \\uXXXX."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif escape and (ch == ":" or ord(ch) > 127):
            out.append(f"\\u{ord(ch):04x}" if ch != ":" else "\\u003A")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _write(node: Node, escape: bool, space: str) -> str:
    kind, value = node
    if kind == "str":
        return _text(value, escape)
    if kind == "num":
        return str(value)
    if kind == "arr":
        return "[" + f"{space},{space}".join(_write(v, escape, space) for v in value) + "]"
    pairs = (f"{_text(k, escape)}{space}:{space}{_write(v, escape, space)}" for k, v in value)
    return "{" + space + f",{space}".join(pairs) + space + "}"


def _repeats(node: Node) -> set[str]:
    """The rule read plainly: every key some object holds more than once."""
    kind, value = node
    found: set[str] = set()
    if kind == "obj":
        names = [k for k, _ in value]
        found |= {k for k in names if names.count(k) > 1}
        for _, v in value:
            found |= _repeats(v)
    elif kind == "arr":
        for v in value:
            found |= _repeats(v)
    return found


def _verdict(raw: bytes) -> str | None:
    try:
        refuse_repeated_keys(raw)
    except BadRequest as exc:
        return str(exc.args[0])
    return None


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(keys, nodes), max_size=5),
    st.booleans(),
    st.sampled_from(["", " ", "\n\t "]),
    st.booleans(),
)
def test_the_refusal_is_the_rule(
    pairs: list[tuple[str, Node]], escape: bool, space: str, large: bool
) -> None:
    body: Node = ("obj", pairs)
    if large:  # past the size where the check walks the reading instead of writing it again
        body = ("obj", [*pairs, ("padding", ("str", "x" * (repeated_keys._WRITE_UP_TO + 1)))])
    raw = _write(body, escape, space).encode()
    repeats = _repeats(body)
    verdict = _verdict(raw)
    if not repeats:
        assert verdict is None
    else:
        assert verdict is not None
        named = verdict.removeprefix("报文中字段").split("在同一节点内出现了两次")[0]
        # Control characters written out (\u000a), as every refusal quotes a name.
        shown = {printable(k) for k in repeats}
        assert named in {k if len(k) <= 40 else f"{k[:40]}…" for k in shown}
        assert not any(ord(ch) < 0x20 for ch in verdict)


def test_a_body_that_is_not_json_is_left_to_the_decoder() -> None:
    assert _verdict(b'{"a":1,"a":') is None
    with pytest.raises(BadRequest, match="不是有效的JSON"):
        decode_request(b'{"a":1,"a":')


_ENVELOPE = {"infno": "2101", "mdtrtarea_admvs": "441800", "fixmedins_code": "P1"}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        # The two msgids of the finding: journaled under the last, a later send under the first
        # would settle the same sale again.
        (b'{"msgid":"M1","msgid":"M2","input":{}}', "msgid"),
        (b'{"msgid":"M1","input":{},"input":{"druginfo":{}}}', "input"),
        (b'{"msgid":"M1","input":{"druginfo":{"psn_no":"P1","psn_no":"P2"}}}', "psn_no"),
        (b'{"msgid":"M1","input":{"drugdetail":[{"cnt":"1"},{"cnt":"1","cnt":"9"}]}}', "cnt"),
        # `input` sent as a JSON string holding the object: its keys are read as well.
        (b'{"msgid":"M1","input":"{\\"druginfo\\":{\\"psn_no\\":\\"1\\",\\"psn_no\\":\\"2\\"}}"}',
         "psn_no"),
    ],
)  # fmt: skip
def test_an_envelope_holding_a_key_twice_is_refused_naming_it(body: bytes, named: str) -> None:
    raw = msgspec.json.encode(_ENVELOPE)[:-1] + b"," + body[1:]
    with pytest.raises(BadRequest) as refused:
        decode_request(raw)
    assert (
        refused.value.args[0] == f"报文中字段{named}在同一节点内出现了两次，请只发送一次后重新发送"
    )


def test_equal_keys_in_different_nodes_are_not_repeats() -> None:
    lines = [{"feedetl_sn": str(i), "cnt": "1", "pric": "1.00"} for i in range(3)]
    body = msgspec.json.encode(
        {**_ENVELOPE, "msgid": "M1", "input": {"druginfo": {"msgid": "x"}, "drugdetail": lines}}
    )
    assert decode_request(body).msgid == "M1"


def test_a_repeated_key_holding_a_control_character_is_written_out() -> None:
    """Found from outside: the repeated key `a\u0000` went back with a raw NUL in err_msg, and
    `\u001b[2J` as a terminal's clear-screen."""
    for key, shown in ((b"a\\u0000", "a\\u0000"), (b"x\\u001b[2J", "x\\u001b[2J")):
        body = b'{"' + key + b'":1,"' + key + b'":2}'
        assert _verdict(body) == f"报文中字段{shown}在同一节点内出现了两次，请只发送一次后重新发送"
