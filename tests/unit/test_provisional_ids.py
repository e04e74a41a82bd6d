"""Replay resolves only the provisional visit ids a claim's body names (each claim used to read,
and replace in its body, every id an outage handed out)."""

from __future__ import annotations

import datetime as dt

from adapters.national.deferral import new_provisional_id
from gateway.emergency.deferred import PROVISIONAL_ID_LENGTH
from gateway.ledger.deferred import provisional_ids_in

NOW = dt.datetime(2026, 12, 5, 9, 30)


def test_every_provisional_id_a_body_names_is_found_wherever_it_stands() -> None:
    first = new_provisional_id("441800", NOW, "H44180000001", "M1")
    second = new_provisional_id("441800", NOW, "H44180000001", "M2")
    assert len(first) == len(second) == PROVISIONAL_ID_LENGTH
    body = (
        f'{{"data":{{"mdtrt_id":"{first}","psn_no":"PV1"}},'
        f'"feedetail":[{{"mdtrt_id":"{second}"}},{{"mdtrt_id":"{first}"}}],"memo":"x{second}"}}'
    ).encode()
    found = provisional_ids_in(body)
    assert first in found and second in found
    # Each id once; the other candidates are texts no id is (looked up, never matched).
    assert len(found) == len(set(found))
    assert all(len(f) <= PROVISIONAL_ID_LENGTH and f.startswith("PV") for f in found)


def test_a_body_without_the_prefix_looks_nothing_up() -> None:
    assert provisional_ids_in(b'{"data":{"mdtrt_id":"44180020260605000000000001"}}') == []
