"""The input type of every transaction, and the OpenAPI document generated from them.

The document is derived from the same msgspec types the gateway decodes with, so it cannot
drift from what is accepted. Served at GET /openapi.json; the fuzzer and clients read it.
"""

from __future__ import annotations

from typing import Any

import msgspec

import adapters.his.transactions
import adapters.pos.pharmacy  # noqa: F401 - registers the pharmacy transactions
from adapters.national.envelope import REVISIONS
from gateway.protocol.transaction import TRANSACTIONS


def input_types() -> dict[str, type[Any]]:
    """Each registered transaction's input type, and each revision code's (its base's): a
    client generated from this document can call them by the code its province uses."""
    out = {t.infno: t.input for t in TRANSACTIONS.values() if t.input is not None}
    for code, base in REVISIONS.items():
        if base in out:
            out.setdefault(code, out[base])
    return out


_ENVELOPE_FIELDS = (
    "msgid",
    "mdtrtarea_admvs",
    "insuplc_admdvs",
    "recer_sys_code",
    "dev_no",
    "dev_safe_info",
    "cainfo",
    "signtype",
    "infver",
    "opter_type",
    "opter",
    "opter_name",
    "inf_time",
    "fixmedins_code",
    "fixmedins_name",
    "sign_no",
)


def openapi() -> dict[str, Any]:
    """OpenAPI 3.1 for POST /hsa/hgs/{infno}, one operation per transaction."""
    inputs = input_types()
    types = sorted(set(inputs.values()), key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    code = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}
    answer = {
        "type": "object",
        "required": ["infcode", "inf_refmsgid", "refmsg_time", "respond_time", "err_msg", "output"],
        "properties": {
            "infcode": {"type": "integer", "enum": [0, -1]},
            "inf_refmsgid": {"type": "string"},
            "refmsg_time": {"type": "string"},
            "respond_time": {"type": "string"},
            "err_msg": {"type": ["string", "null"], "maxLength": 200},
            "warn_msg": {"type": ["string", "null"]},
            "output": {"type": "object"},
        },
    }
    paths: dict[str, Any] = {}
    for infno, kind in sorted(inputs.items()):
        base = REVISIONS.get(infno)
        tx = TRANSACTIONS.get(base or infno)
        envelope = {
            "type": "object",
            "required": ["msgid", "fixmedins_code", "input"],
            "properties": {
                "infno": {"const": infno},
                **{name: code for name in _ENVELOPE_FIELDS},
                "input": {
                    "anyOf": [
                        {"$ref": f"#/components/schemas/{kind.__name__}"},
                        {
                            "type": "string",
                            "description": "the same object as a JSON string (older clients)",
                        },
                    ]
                },
            },
        }
        revision = (
            {}
            if base is None
            else {
                "description": f"{infno}: revision code of {base}, accepted and answered as {base}",
                "x-base-infno": base,
            }
        )
        paths[f"/hsa/hgs/{infno}"] = {
            "post": {
                "operationId": f"tx{infno}",
                "summary": f"{infno} {tx.name if tx else ''}".strip(),
                **revision,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": envelope}},
                },
                "responses": {
                    "200": {
                        "description": "公共输出",
                        "content": {"application/json": {"schema": answer}},
                    }
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Settlement gateway — national interface", "version": "1.0"},
        "paths": paths,
        "components": {"schemas": components},
    }
