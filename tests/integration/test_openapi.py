"""The OpenAPI document covers every transaction and matches what the gateway decodes."""

from __future__ import annotations

from adapters.national.envelope import REVISIONS
from gateway.protocol.transaction import TRANSACTIONS
from tests.integration.conftest import Server


def _input_ref(op: dict) -> str:
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    ref = schema["properties"]["input"]["anyOf"][0]["$ref"]
    assert isinstance(ref, str)
    return ref


async def test_openapi_lists_every_transaction(server: Server) -> None:
    async with server.session.get(server.url + "/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    paths = {p.rsplit("/", 1)[-1] for p in doc["paths"]}
    assert paths == set(TRANSACTIONS) | set(REVISIONS)
    schemas = doc["components"]["schemas"]
    settle = schemas["SettleData"]["properties"]
    assert {"psn_no", "mdtrt_id", "medfee_sumamt", "chrg_bchno", "acct_used_flag"} <= set(settle)
    # A code field's text states the length the decoder holds it to (adapters.national.lengths).
    assert {"type": "string", "maxLength": 30} in settle["psn_no"]["anyOf"]
    assert {"type": "string", "maxLength": 6} in settle["psn_setlway"]["anyOf"]
    op = doc["paths"]["/hsa/hgs/2207"]["post"]
    assert op["summary"] == "2207 门诊结算"
    assert _input_ref(op).endswith("/In2206")


async def test_openapi_names_each_revision_code_with_its_base(server: Server) -> None:
    async with server.session.get(server.url + "/openapi.json") as r:
        doc = await r.json()
    assert {"2203A", "2206A", "2207A", "2304A", "2102A"} <= set(REVISIONS)
    for code, base in REVISIONS.items():
        op = doc["paths"][f"/hsa/hgs/{code}"]["post"]
        base_op = doc["paths"][f"/hsa/hgs/{base}"]["post"]
        assert op["x-base-infno"] == base, code
        assert op["summary"] == f"{code} {TRANSACTIONS[base].name}", code
        assert base in op["description"], code
        assert _input_ref(op) == _input_ref(base_op), code
        infno = op["requestBody"]["content"]["application/json"]["schema"]["properties"]["infno"]
        assert infno == {"const": code}
