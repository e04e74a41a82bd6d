"""The bank payment file's header dates the batch as its number does."""

from __future__ import annotations

import datetime as dt

from gateway.ledger.payouts import Batch
from gateway.services.payouts import SEP, payment_file


def test_a_batch_made_after_midnight_beijing_time_is_dated_by_its_number() -> None:
    # Made at 00:21 on 2026-12-06 in Beijing: 16:21 on the 5th in UTC, as the database returns it
    # (found from outside: the header said 20261205 beside ZF20261206…).
    made = dt.datetime(2026, 12, 5, 16, 21, 39, tzinfo=dt.UTC)
    batch = Batch(
        batch_no="ZF20261206000002",
        status="approved",
        line_count=0,
        total_fen=0,
        created_by="maker",
        created_at=made,
    )
    head = payment_file(batch, []).decode().splitlines()[0].split(SEP)
    assert head[2:4] == ["ZF20261206000002", "20261206"]
