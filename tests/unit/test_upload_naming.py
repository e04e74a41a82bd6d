"""Which bodies on the national path name an upload (charged to the upload budget before
anything else is done with them): the pre-check that skips decoding agrees with decoding."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.national.envelope import base_infno
from gateway.app import server
from gateway.pipeline.edge import EdgeConfig


def _spelled(text: str, escape: list[bool]) -> str:
    """A JSON string literal of `text`, some of its characters written as \\u escapes."""
    return '"' + "".join(f"\\u{ord(c):04x}" if e else c for c, e in zip(text, escape, strict=False)) + text[len(escape):] + '"'  # fmt: skip


@given(
    st.sampled_from(["9101", "9101 ", " 9101", "2101", "2102A", "9102", "", "91010"]),
    st.sampled_from(["string", "number", "escaped", "inside input", "absent"]),
    st.lists(st.booleans(), max_size=5),
    st.sampled_from(["", '"memo": "9101"', '"memo": "\\u4e2d"', '"cnt": 9101.00']),
)
def test_the_upload_pre_check_agrees_with_decoding(
    infno: str, form: str, escape: list[bool], extra: str
) -> None:
    """Skipping the decode for a body that cannot name an upload never changes the verdict:
    for any body, the answer is the one the envelope's decoded infno gives."""
    edge = EdgeConfig(upload_transactions=("9101", "2102"))
    value = {
        "string": f'"{infno}"',
        "number": infno.strip() if infno.strip().isdigit() else f'"{infno}"',
        "escaped": _spelled(infno, escape or [True]),
    }.get(form, f'"{infno}"')
    fields = [f'"infno": {value}'] if form not in ("inside input", "absent") else []
    inner = f'{{"infno": {value}}}' if form == "inside input" else "{}"
    fields += [f'"input": {inner}', *([extra] if extra else [])]
    body = ("{" + ", ".join(fields) + "}").encode()
    decoded = server._infno_only.decode(body).infno
    expected = base_infno(str(decoded or "").strip()) in edge.upload_transactions
    assert server._names_upload(body, edge) is expected
