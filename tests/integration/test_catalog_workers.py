"""A catalog change answered by one worker prices the next requests in every worker of the host
(gateway.app.catalog_versions). Found from outside: with two workers, sales sent right after a
3301 was answered, and handed by the kernel to the other worker, were settled on the replaced
mapping (a class-03 item priced as class 01, 4 of 160), and the ledger kept them so."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.app.catalog_versions import CatalogVersions
from tests.integration.conftest import another_worker, running_gateway

PHARMACY = "P44180000001"
PERSON = "441800000000000004"
ITEM = "YP0002"  # mapped in the demo data to a class-01 drug
CLASS_C = "XS01XAA990A001010100010"  # a class-03 national code: wholly self-pay


def _line(n: int) -> list[dict[str, Any]]:
    return [
        {
            "feedetl_sn": str(n),
            "medins_list_codg": ITEM,
            "pric": "10",
            "cnt": "1",
            "det_item_fee_sumamt": "10.00",
        }
    ]


async def test_a_3301_answered_by_one_worker_prices_the_next_sale_in_another(
    new_database: Callable[..., Any],
) -> None:
    journal = Path(tempfile.mkdtemp(prefix="gw-journal-"))
    today = dt.date.today().isoformat()
    # The other worker hears no announcement (no Redis) and polls only hourly here: what it
    # knows of the change, it knows from the shared file.
    async with (
        running_gateway(new_database, journal_dir=journal) as first,
        another_worker(first.dsn, journal, catalog_poll_seconds=3600.0) as second,
    ):
        pos, other = first.client(PHARMACY), second.client(PHARMACY)
        now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        before = await other.ok(
            "2101", other.drug_input(PERSON, now, "10.00", _line(1), insutype="390")
        )
        assert Decimal(before["setlinfo"]["fulamt_ownpay_amt"]) == 0  # class 01
        mapping = {
            "data": [
                {
                    "fixmedins_hilist_id": ITEM,
                    "fixmedins_hilist_name": "阿莫西林胶囊",
                    "list_type": "101",
                    "med_list_codg": CLASS_C,
                    "begndate": today,
                    "enddate": "2099-12-31",
                }
            ]
        }
        await pos.ok("3301", mapping)
        pre = await other.ok(
            "2101", other.drug_input(PERSON, now, "10.00", _line(2), insutype="390")
        )
        assert Decimal(pre["setlinfo"]["fulamt_ownpay_amt"]) == Decimal("10.00"), pre
        sale = await other.ok(
            "2102", other.drug_input(PERSON, now, "10.00", _line(3), insutype="390")
        )
        assert Decimal(sale["setlinfo"]["fulamt_ownpay_amt"]) == Decimal("10.00"), sale
        # The ledger keeps the line as the new mapping priced it, whichever worker is asked.
        keys = {
            "data": {
                "psn_no": PERSON,
                "setl_id": sale["setlinfo"]["setl_id"],
                "mdtrt_id": sale["setlinfo"]["mdtrt_id"],
            }
        }
        lines = await pos.call("5204", keys)
        assert lines["infcode"] == 0, lines["err_msg"]
        assert [ln["chrgitm_lv"] for ln in lines["output"]] == ["03"], lines["output"]
        assert await first.check_ledger() == []


def test_a_version_asked_is_seen_by_every_map_of_the_file(tmp_path: Path) -> None:
    one = CatalogVersions(tmp_path, "postgresql://h/db")
    two = CatalogVersions(tmp_path, "postgresql://h/db")
    elsewhere = CatalogVersions(tmp_path, "postgresql://h/another")
    try:
        assert one.wanted(PHARMACY) == 0
        one.raise_to(PHARMACY, 7)
        assert two.wanted(PHARMACY) == 7
        two.raise_to(PHARMACY, 5)  # never lowered by an older change
        assert one.wanted(PHARMACY) == 7
        assert elsewhere.wanted(PHARMACY) == 0  # another database's versions are its own
        two.lower_to(PHARMACY, 3)  # a database made afresh under the same name
        assert one.wanted(PHARMACY) == 3
    finally:
        for versions in (one, two, elsewhere):
            versions.close()


def test_a_directory_that_cannot_be_written_shares_nothing(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    versions = CatalogVersions(blocked / "journal", "postgresql://h/db")
    versions.raise_to(PHARMACY, 9)
    assert versions.wanted(PHARMACY) == 0
    versions.close()


def test_nothing_is_written_until_a_version_is_asked_or_told(tmp_path: Path) -> None:
    """A command that serves nothing (a `ledger check` run from a read-only folder) neither
    creates the journal's folder nor warns of it."""
    journal = tmp_path / "journal"
    versions = CatalogVersions(journal, "postgresql://h/db")
    versions.close()
    assert not journal.exists()
