"""The OpenAPI document covers every transaction and matches what the gateway decodes."""

from __future__ import annotations

from gateway.dispatch import TRANSACTIONS
from tests.integration.conftest import Server


async def test_openapi_lists_every_transaction(server: Server) -> None:
    async with server.session.get(server.url + "/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    paths = {p.rsplit("/", 1)[-1] for p in doc["paths"]}
    assert paths == set(TRANSACTIONS)
    schemas = doc["components"]["schemas"]
    settle = schemas["SettleData"]["properties"]
    assert {"psn_no", "mdtrt_id", "medfee_sumamt", "chrg_bchno", "acct_used_flag"} <= set(settle)
    op = doc["paths"]["/hsa/hgs/2207"]["post"]
    assert op["summary"] == "2207 门诊结算"
    ref = op["requestBody"]["content"]["application/json"]["schema"]["properties"]["input"][
        "anyOf"
    ][0]["$ref"]
    assert ref.endswith("/In2206")
