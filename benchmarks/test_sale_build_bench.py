"""A pharmacy sale's build in the group commit: the Python a durable 2102 costs between its
decode and its batch's statement (the split, the staged rows, the answer and its envelope).

The HTTP harness measures the whole request on a box whose speed drifts by more than the
changes to this part; this holds the part still (benchmarks/RESULTS.md cites both).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from adapters.national.envelope import decode_request, encode_response
from adapters.pos.pharmacy import output, purchase_of
from benchmarks.test_core_bench import PERSON, SNAPSHOT
from benchmarks.test_envelope_bench import five_drug_lines
from gateway.core.dates import DateRules
from gateway.core.model import Accumulators
from gateway.pipeline.grouped import Held
from gateway.protocol.origin import Origin
from gateway.services.purchase import purchase_job
from tests.integration.his_client import HisClient

pytestmark = pytest.mark.benchmark

PHARMACY = "P44180000001"
NOW = dt.datetime(2026, 3, 1, 8, 31)
SALE = msgspec.json.encode(
    {
        "infno": "2102",
        "msgid": f"{PHARMACY}202603010830000001",
        "mdtrtarea_admvs": "441800",
        "insuplc_admdvs": "441800",
        "recer_sys_code": "YBXT",
        "dev_no": "POS-01",
        "infver": "V1.0",
        "opter_type": "1",
        "opter": "OP001",
        "opter_name": "收银员",
        "inf_time": "2026-03-01 08:30:00",
        "fixmedins_code": PHARMACY,
        "fixmedins_name": "清远演示药店",
        # The pharmacy's mapped items YP0001–YP0005 (config/demo/mappings.csv).
        "input": HisClient.drug_input(
            PERSON.psn_no, "2026-03-01 08:30:00", "100.00", five_drug_lines(first=1)
        ),
    }
)


def test_build_a_five_line_sale(benchmark: Any) -> None:
    """The sale's job built over its person (as a batch holds it), its rows staged and its
    answer encoded: per durable 2102, once the request is decoded and before the batch's write."""
    req = decode_request(SALE)
    ask = purchase_of(req)
    institution = SNAPSHOT.institution(PHARMACY)
    assert institution is not None
    job = purchase_job(SNAPSHOT, DateRules(), Origin.of(req), institution, NOW, ask, output)

    def build() -> bytes:
        built = job.build(Held(PERSON, 200_000, Accumulators()), 17, 18)
        return encode_response(
            region="441800", received=NOW, output=built.output, warn_msg=built.warn_msg, now=NOW
        )

    body = benchmark(build)
    answer = msgspec.json.decode(body)
    assert answer["infcode"] == 0, answer["err_msg"]
    info = answer["output"]["setlinfo"]
    assert info["setl_id"] == "44180020260301000000000018"
    assert info["mdtrt_id"] == "44180020260301000000000017"
    assert len(answer["output"]["detlcutinfo"]) == 5
