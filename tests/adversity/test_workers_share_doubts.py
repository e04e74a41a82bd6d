"""Two workers of one host, as `serve --workers 2` runs them: a till's retry comes on a new
connection, which the kernel may hand to the other worker. Left open by the stop that made a
message in doubt refuse claims in its own process: a sale whose COMMIT hung in one worker was
retried into the other, which took it as an all-cash claim once its breaker opened, and the
first worker's COMMIT then landed (the patient paid in cash and the account paid too; this
module's test fails so without the shared files). A message one worker holds at work or in doubt is seen by every worker sharing
its journal's directory (`gateway.pipeline.shared_doubts`), and is not taken off the ledger's
path there either."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from gateway.app.appkeys import GATEWAY
from gateway.app.config import Breakers, LedgerBreaker
from gateway.emergency.breaker import Breaker
from gateway.ledger.partitions import MAIN
from tests.adversity.proxy import Proxy
from tests.adversity.test_ledger_outage import (
    CONFIG,
    FAST_BREAKER,
    PERSONS,
    PHARMACY,
    ProxiedLedger,
    _sale,
    _the_sale_stands_alone,
    _through,
)
from tests.integration.conftest import Server, another_worker, running_gateway
from tests.integration.emergency_helpers import cli, until
from tests.integration.his_client import HisClient, decode

# The first worker's breaker stays closed while its COMMIT hangs (as a worker that saw only
# that sale); the second's opens on its first hung call, as under an outage.
PATIENT = msgspec.structs.replace(
    CONFIG,
    breakers=Breakers(postgres=LedgerBreaker(**{
        **msgspec.structs.asdict(FAST_BREAKER), "consecutive_failures": 50, "min_calls": 500,
        "probe_on_timeout": False,
    })),
)  # fmt: skip


@dataclass
class Workers:
    """Two workers of one host over one ledger through a proxy, each having sold once; `sale`
    the body of the sale the tests hang."""

    first: Server
    proxy: Proxy
    pos: HisClient  # a till of the first worker
    other: HisClient  # the same institution's till on the second
    breaker: Breaker  # the second worker's ledger breaker
    sale: bytes


@asynccontextmanager
async def _two_workers(new_database: Callable[..., Any]) -> AsyncIterator[Workers]:
    journal = Path(tempfile.mkdtemp(prefix="gw-journal-"))
    ledger = ProxiedLedger()
    async with running_gateway(
        new_database, PATIENT, serve_through=ledger, journal_dir=journal, pool_min=4
    ) as first:
        proxy = ledger.started()
        try:
            async with another_worker(_through(first.dsn, proxy.port), journal, CONFIG) as second:
                pos, other = first.client(PHARMACY), second.client(PHARMACY)
                assert second.app is not None
                assert (await pos.call("2102", _sale(pos, 0)))["infcode"] == 0
                assert (await other.call("2102", _sale(other, 2)))["infcode"] == 0
                sale = msgspec.json.encode(pos.envelope("2102", _sale(pos, 1)))
                breaker = second.app[GATEWAY].ledger_breaker(MAIN)
                try:
                    yield Workers(first, proxy, pos, other, breaker, sale)
                finally:
                    proxy.thaw()  # a failure must not leave the workers hung at their ends
        finally:
            await proxy.close()


async def test_a_sale_in_doubt_in_one_worker_is_not_taken_as_a_claim_in_another(
    new_database: Callable[..., Any],
) -> None:
    async with _two_workers(new_database) as w:
        w.proxy.freeze_at(b"COMMIT")
        answer = decode((await w.pos.post_raw(w.sale))[1])  # its deadline, its COMMIT hung
        assert answer["infcode"] != 0 and "请勿按现金收费" in answer["err_msg"], answer
        # The till's first try: no earlier attempt to speak of (found from outside: it was told
        # "the previous settlement of the same msgid" was at work).
        assert "上一次" not in answer["err_msg"], answer
        told: list[str] = []
        opened = False
        for _ in range(12):  # the till's retries, each on the other worker
            answer = decode((await w.other.post_raw(w.sale))[1])
            assert answer["infcode"] != 0, (answer["output"], told)  # no claim: no cash
            told.append(answer["err_msg"])
            opened = opened or w.breaker.is_open
            if opened and len(told) >= 3:
                break
            await asyncio.sleep(0.3)
        # Its retries met the other worker's breaker open, where a claim was taken.
        assert opened, told
        assert all("请勿按现金收费" in t for t in told), told
        w.proxy.thaw()  # the COMMIT lands
        await _the_sale_stands_alone(w.first, w.pos, w.sale, PERSONS[1])
        # And the other worker, asked again, answers the sale too.
        again = decode((await w.other.post_raw(w.sale))[1])
        assert again["infcode"] == 0, again
        assert not again["output"]["setlinfo"]["setl_id"].startswith("DF"), again


async def test_another_workers_own_attempt_of_the_message_does_not_clear_the_doubt(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside (tester 268, 2 of 2 runs): a sale's COMMIT held on its connection; the
    till's next try, on the other worker, went to the ledger and waited there on the first
    attempt's lock until it was answered "retry", which wrote the message's one shared file over
    the first worker's doubt, and cleared it when that try's attempt ended. Once the ledger froze
    the try after was taken there as an all-cash claim, and the COMMIT landed: cash and account
    both paid. Each worker writes and clears its own file."""
    async with _two_workers(new_database) as w:
        w.proxy.freeze_at(b"COMMIT", alone=True)  # that COMMIT's connection alone
        told = [decode((await w.pos.post_raw(w.sale))[1])]  # its deadline: in doubt
        # The next try, to the other worker: to the ledger, where the first attempt's lock holds
        # it until its own deadline.
        told.append(decode((await w.other.post_raw(w.sale))[1]))
        assert not w.breaker.is_open  # its probe passed: only one connection hangs
        await asyncio.sleep(2.5)  # that attempt over, its connection dropped
        w.proxy.freeze()  # now the whole ledger
        for _ in range(12):  # the next tries, to the other worker again
            told.append(decode((await w.other.post_raw(w.sale))[1]))
            if w.breaker.is_open and len(told) >= 5:
                break
            await asyncio.sleep(0.3)
        assert w.breaker.is_open, [a["err_msg"] for a in told]
        claims = [a for a in told if a["infcode"] == 0]
        assert not claims, [(a["infcode"], a["err_msg"]) for a in told]
        assert all("请勿按现金收费" in a["err_msg"] for a in told), told
        w.proxy.thaw()  # the COMMIT lands
        await _the_sale_stands_alone(w.first, w.pos, w.sale, PERSONS[1])


async def test_a_registration_claimed_on_another_node_while_its_commit_hung_is_the_visit(
    new_database: Callable[..., Any],
) -> None:
    """Found from outside (tester 268): a 2201's COMMIT hung in one process; its retry reached
    a node that does not share its files (another host), was taken with a provisional visit id
    once that node's breaker opened, and the visit went on there: visit information, fees, and
    a settlement taken as an all-cash claim that promised a reimbursement. The COMMIT landed when
    the network healed; the drain filed the registration failed (its message answered in the
    ledger), then the visit's calls and the claim with it, and nothing flagged it. The
    registration the ledger holds under the same message and body is the visit the provisional
    id stands for: the visit's calls and claim go on against it."""
    from tests.integration.emergency_helpers import OUTPATIENT_LINES, OUTPATIENT_TOTAL

    ledger = ProxiedLedger()
    async with running_gateway(new_database, PATIENT, serve_through=ledger, pool_min=4) as first:
        proxy = ledger.started()
        other_disk = Path(tempfile.mkdtemp(prefix="gw-journal-"))
        try:
            async with another_worker(
                _through(first.dsn, proxy.port), other_disk, CONFIG
            ) as second:
                person, day = PERSONS[2], "2026-07-03"
                here, there = first.client("H44180000001"), second.client("H44180000001")
                registration = {"data": {"psn_no": person, "insutype": "310",
                                         "begntime": f"{day} 08:30:00", "mdtrt_cert_type": "01",
                                         "mdtrt_cert_no": person, "ipt_otp_no": "MZ-DOUBT-1"}}  # fmt: skip
                body = msgspec.json.encode(here.envelope("2201", registration))
                try:
                    proxy.freeze_at(b"COMMIT", alone=True)
                    first_try = decode((await here.post_raw(body))[1])
                    assert first_try["infcode"] != 0, first_try
                    proxy.freeze()
                    provisional = ""
                    for _ in range(20):  # the retries, to the other node
                        answer = decode((await there.post_raw(body))[1])
                        if answer["infcode"] == 0:
                            provisional = answer["output"]["data"]["mdtrt_id"]
                            break
                        await asyncio.sleep(0.3)
                    assert provisional.startswith("PV"), answer
                    await there.visit_info(provisional, person, "11", f"{day} 08:30:00")
                    rows = there.fee_rows(
                        provisional, person, OUTPATIENT_LINES, f"{day} 08:40:00", "B1"
                    )
                    await there.ok("2204", {"feedetail": rows})
                    data = there.settle_data(
                        person, provisional, "11", OUTPATIENT_TOTAL, "310", "1", chrg_bchno="B1"
                    )
                    claim = (await there.ok("2207", data))["setlinfo"]
                    assert claim["setl_id"].startswith("DF")
                finally:
                    proxy.thaw()  # the registration's COMMIT lands

                async def drained() -> bool:
                    done = await first.fetchval(
                        "SELECT count(*) FROM deferred WHERE kind = 'call'"
                        " AND status IN ('applied', 'failed')"
                    )
                    return bool(done == 3)

                await until(drained, within=30.0)
            calls = await first.fetch(
                "SELECT infno, status, fail_reason FROM deferred WHERE kind = 'call' ORDER BY seq"
            )
            assert [(c["infno"], c["status"]) for c in calls] == [
                ("2201", "applied"), ("2203", "applied"), ("2204", "applied")
            ], calls  # fmt: skip
            real = await first.fetchval(
                "SELECT mdtrt_id FROM encounters WHERE ipt_otp_no = 'MZ-DOUBT-1'"
            )
            assert real and await first.fetchval(
                "SELECT mdtrt_id FROM deferred_ids WHERE provisional_id = $1", provisional
            ) == real  # fmt: skip
            summary = json.loads(
                cli("deferred", "replay", "--json", "--database-url", first.dsn).stdout
            )
            assert summary["settled"] == 1 and summary["failed"] == [], summary
            settled = await first.fetchval(
                "SELECT s.mdtrt_id FROM deferred d JOIN settlements s USING (setl_id)"
                " WHERE d.claim_id = $1",
                claim["setl_id"],
            )
            assert settled == real
            assert await first.check_ledger() == []
        finally:
            await proxy.close()
