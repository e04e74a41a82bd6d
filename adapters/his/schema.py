"""The input type of every transaction, and the OpenAPI document generated from them.

The document is derived from the same msgspec types the gateway decodes with, so it cannot
drift from what is accepted. Served at GET /openapi.json; the fuzzer and clients read it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from adapters.his import catalog, reconciliation, reversal, wire
from adapters.his.envelope import REVISIONS
from adapters.pos import pharmacy
from gateway.dispatch import TRANSACTIONS

INPUT_TYPES: dict[str, type[Any]] = {
    "9001": wire.In9001,
    "9002": wire.In9002,
    "1101": wire.In1101,
    "2201": wire.In2201,
    "2202": wire.In2202,
    "2203": wire.In2203,
    "2203A": wire.In2203,
    "2204": wire.In2204,
    "2205": wire.In2205,
    "2206": wire.In2206,
    "2207": wire.In2206,
    "2208": wire.In2208,
    "2301": wire.In2204,
    "2302": wire.In2302,
    "2303": wire.In2206,
    "2304": wire.In2206,
    "2305": wire.In2208,
    "2401": wire.In2401,
    "2402": wire.In2402,
    "2404": wire.In2202,
    "2405": wire.In2202,
    "2101": pharmacy.In2101,
    "2102": pharmacy.In2101,
    "2103": wire.In2208,
    "2601": reversal.In2601,
    "3201": reconciliation.In3201,
    "3202": reconciliation.In3201,
    "9101": reconciliation.In9101,
    "9102": reconciliation.In9102,
    "3301": catalog.In3301,
    "3302": catalog.In3302,
    "1312": catalog.In13xx,
    "1317": catalog.In13xx,
    "1318": catalog.In13xx,
    "1319": catalog.In13xx,
    "5203": wire.In5203,
}
# Revision codes are dispatched as their base transaction; each gets the base's operation so a
# client generated from this document can call them by the code its province uses.
for _code, _base in REVISIONS.items():
    INPUT_TYPES.setdefault(_code, INPUT_TYPES[_base])

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
    types = sorted(set(INPUT_TYPES.values()), key=lambda t: t.__name__)
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
            "err_msg": {"type": ["string", "null"]},
            "warn_msg": {"type": ["string", "null"]},
            "output": {"type": "object"},
        },
    }
    paths: dict[str, Any] = {}
    for infno, kind in sorted(INPUT_TYPES.items()):
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
