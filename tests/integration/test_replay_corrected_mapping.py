"""A deferred claim replayed after its item's mapping was corrected is settled with the mapping in
force, as a bulk correction re-settles a settlement of the same lines.

Found from outside: a wrong mapping was corrected (3301, the documented repair) while a claim of
that item waited; replay refused its lines as "目录对照不一致" against the code they were sent
with, `deferred retry` could not mend it, and the bulk correction does not see claims: the
fund's share was never paid. A code the institution never mapped the item to is still refused.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.national import deferral
from adapters.national.envelope import decode_request
from gateway.emergency.deferred.journal import Journal
from gateway.ledger.deferred import Entry
from tests.integration.conftest import Server, running_gateway
from tests.integration.emergency_helpers import clear_rule, cli, set_rule, until
from tests.integration.his_client import HisClient
from tests.integration.parity_helpers import line

pytestmark = pytest.mark.integration

HOSPITAL = "H44180000001"
PHARMACY = "P44180000001"
PERSON = "441800000000000001"
ITEM = "YP9003"  # the institutions' own code for 阿托伐他汀钙片, a class-B drug
CLASS_B = "XC10AAA140A001010100003"  # its right national code: 10% first self-pay here
WRONG_CLASS_A = "XA10BAA020A001010100004"  # the mistake: class A, no first self-pay
NEVER_MAPPED = "XA02BCA011A001010100001"  # a real code neither institution ever mapped it to
DAY = "2026-05-10"
LINES = [line("1", ITEM, "40", 2, med_list_codg=WRONG_CLASS_A)]  # 80.00


def _mapping(code: str) -> dict[str, Any]:
    return {
        "catalogcompin": [
            {
                "fixmedins_hilist_id": ITEM,
                "fixmedins_hilist_name": "阿托伐他汀钙片",
                "list_type": "101",
                "med_list_codg": code,
                "begndate": "2026-01-01",
                "enddate": "2099-12-31",
            }
        ]
    }


def _sale(pos: HisClient, code: str) -> dict[str, Any]:
    sale = pos.drug_input(PERSON, f"{DAY} 09:30:00", "80.00", LINES)
    sale["drugdetail"][0]["med_list_codg"] = code
    return sale


async def _deferred(srv: Server, client: HisClient, infno: str, input_: dict[str, Any]) -> str:
    """The plan's `defer` for the institution's settlements, in force (its pre-settlement says
    so): the claim's number."""
    probe = {"2207": "2206", "2102": "2101"}[infno]
    scope = f"institution:{client.fixmedins_code}"
    await set_rule(srv.dsn, scope, "settlement", "defer", "演练主动报")

    async def deferring() -> bool:
        answer = await client.call(probe, input_)
        return "应急预案" in str(answer.get("warn_msg") or "")

    await until(deferring)
    claim_id = str((await client.ok(infno, input_))["setlinfo"]["setl_id"])
    assert claim_id.startswith("DF")
    await clear_rule(srv.dsn, scope, "settlement")
    return claim_id


async def _replayed(srv: Server, claim_id: str) -> dict[str, Any]:
    summary = json.loads(cli("deferred", "replay", "--json", "--database-url", srv.dsn).stdout)
    assert (summary["settled"], summary["failed"]) == (1, []), summary
    row = await srv.fetchrow(
        "SELECT s.fulamt_ownpay_amt, s.preselfpay_amt, s.inscp_scp_amt, s.medfee_sumamt"
        " FROM deferred d JOIN settlements s ON s.setl_id = d.setl_id WHERE d.claim_id = $1",
        claim_id,
    )
    assert row is not None
    return dict(row)


async def test_a_visits_claim_is_replayed_with_the_corrected_mapping(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        his = srv.client(HOSPITAL)
        await his.ok("3301", _mapping(WRONG_CLASS_A))
        mdtrt_id = await his.register(PERSON, "310", f"{DAY} 09:00:00", "MZ-REMAP-1")
        rows = his.fee_rows(mdtrt_id, PERSON, LINES, f"{DAY} 09:10:00", "B1")
        await his.ok("2204", {"feedetail": rows})
        settle = his.settle_data(PERSON, mdtrt_id, "11", "80.00", "310", "0", chrg_bchno="B1")
        claim_id = await _deferred(srv, his, "2207", settle)
        await his.ok("3301", _mapping(CLASS_B))  # the correction, while the claim waits

        settled = await _replayed(srv, claim_id)
        # Class B: 10% first self-pay of 80.00, the rest in scope (class A had none).
        assert settled == {
            "fulamt_ownpay_amt": 0,
            "preselfpay_amt": 800,
            "inscp_scp_amt": 7200,
            "medfee_sumamt": 8000,
        }
        code = "SELECT med_list_codg FROM fee_lines WHERE mdtrt_id = $1 AND feedetl_sn = '1'"
        assert await srv.fetchval(code, mdtrt_id) == CLASS_B
        assert await srv.check_ledger() == []


async def test_a_pharmacy_claim_is_replayed_with_the_corrected_mapping(
    new_database: Callable[..., Any],
) -> None:
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        await pos.ok("3301", _mapping(WRONG_CLASS_A))
        claim_id = await _deferred(srv, pos, "2102", _sale(pos, WRONG_CLASS_A))
        await pos.ok("3301", _mapping(CLASS_B))

        settled = await _replayed(srv, claim_id)
        assert (settled["preselfpay_amt"], settled["inscp_scp_amt"]) == (800, 7200)
        assert await srv.check_ledger() == []


async def test_a_code_the_item_was_never_mapped_to_is_still_refused_at_replay(
    new_database: Callable[..., Any], tmp_path: Path
) -> None:
    """A sale journaled with the ledger away is not judged when taken: a code the pharmacy never
    mapped the item to is refused at replay, not quietly read as the mapping."""
    async with running_gateway(new_database) as srv:
        pos = srv.client(PHARMACY)
        await pos.ok("3301", _mapping(CLASS_B))
        at = dt.datetime.now().replace(microsecond=0)
        sale = _sale(pos, NEVER_MAPPED)
        sale["druginfo"]["begntime"] = sale["drugdetail"][0]["fee_ocur_time"] = f"{at:%F %T}"
        req = decode_request(msgspec.json.encode(pos.envelope("2102", sale)))
        journal = Journal(tmp_path)
        await journal.append(
            Entry(
                kind="claim",
                fixmedins_code=PHARMACY,
                msgid=req.msgid,
                infno="2102",
                psn_no=PERSON,
                mdtrt_id="",
                service_date=at.date(),
                medfee_sumamt=8000,
                body=deferral.stored_request(req),
                answer=b"{}",
                received_at=at,
                claim_id=deferral.new_claim_id("441800", at, PHARMACY, req.msgid),
            )
        )
        journal.close()
        replay = cli(
            "deferred", "replay", "--json", "--journal-dir", str(tmp_path),
            "--database-url", srv.dsn, check=False,
        )  # fmt: skip
        summary = json.loads(replay.stdout)
        assert summary["settled"] == 0 and len(summary["failed"]) == 1, summary
        assert "目录对照不一致" in json.dumps(summary["failed"], ensure_ascii=False)
        assert await srv.fetchval("SELECT count(*) FROM settlements") == 0
