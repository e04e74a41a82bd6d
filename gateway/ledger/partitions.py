"""The ledger split by pooling region: which database holds a request's money.

Every settlement touches one pooling region's money, the insured's (`insuplc_admdvs`): its
policy, the person's accumulators and account. So the ledger partitions by that region with no
transaction across partitions. `[[ledger_clusters]]` in the configuration gives each cluster
(a Patroni cluster behind its DSN) the regions it holds: their persons, accounts, visits, fee
lines, settlements, deferred claims and msgid journal. The main database holds the reference data
every region reads (catalog, mappings, institutions, plan, operators), the person directory, and
the ledger of every region no cluster lists; with no clusters configured it holds everything,
as `make run` does.

A request that names the person (a psn_no, or a certificate) goes to the cluster of the person's
region as the directory in the main database has it: one round trip more the first time a
process meets the person, taken only when the ledger is split. Found from outside: routed by the
envelope's `insuplc_admdvs` first, a HIS that fills it with its own region (as some do before
they have read the card, and go on doing) had every 毕节 patient's registration and sale refused
as "no such person" in its 清远 ledger, though 1101 found them; a single database settles them.
The envelope's region routes a person the directory does not know, and, while the directory
cannot be asked, a request to a database that holds the person it names; one whose region does
not hold them is told to retry (sent there, its refusal would be kept against its msgid, and
the retry would settle where the person is: two answers to one message). Anything else (a sign-in, a catalog upload, an institution's
reconciliation) goes to the database of the envelope's region, or the main one. A retry names
the same person and region, so it reaches the same cluster and its stored answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import asyncpg
import msgspec

from adapters.national.envelope import Request
from gateway.app.config import LedgerCluster
from gateway.ledger import db, idempotency

MAIN = "main"
# Persons whose region a process keeps (about 200 bytes each).
REGIONS_KEPT = 100_000
# How long a request whose envelope names a region waits for the directory before it goes there.
DIRECTORY_SECONDS = 0.5
# The main database's advisory lock held while persons are placed into their clusters.
PLACING_LOCK = 0x5E7717


@dataclass(frozen=True, slots=True)
class Partition:
    """One ledger database: `regions` it holds (empty for the main one: every region not
    listed elsewhere) and the process's pool of connections to it."""

    name: str
    pool: asyncpg.Pool
    regions: frozenset[str] = frozenset()


class Partitions:
    """The process's ledger databases and the region -> database map."""

    def __init__(self, main: Partition, clusters: Iterable[Partition] = ()) -> None:
        self.main = main
        self.clusters = tuple(clusters)
        self.all = (main, *self.clusters)
        self._by_region = {region: c for c in self.clusters for region in c.regions}
        self.split = bool(self.clusters)
        for partition in self.all:
            db.name_pool(partition.pool, partition.name)
        # (psn_no, certificate type, number) -> the region the directory gave. A person's
        # region moves only when persons are placed into their clusters at a server's start, so
        # a process keeps what it read (emptied when full, a bound on its memory).
        self._regions: dict[tuple[str, str, str], str] = {}

    @classmethod
    async def open(
        cls, main: asyncpg.Pool, clusters: Iterable[LedgerCluster], **pool_kw: object
    ) -> Partitions:
        """The main pool and a pool per configured cluster (opened here, with `pool_kw`)."""
        opened: list[Partition] = []
        try:
            for cluster in clusters:
                pool = await db.create_pool(cluster.dsn, **pool_kw)  # type: ignore[arg-type]
                opened.append(Partition(cluster.name, pool, frozenset(cluster.regions)))
        except BaseException:
            for p in opened:
                p.pool.terminate()
            raise
        return cls(Partition(MAIN, main), opened)

    def of_region(self, admdvs: str) -> Partition:
        return self._by_region.get(admdvs, self.main)

    async def of_request(self, req: Request, wait: float) -> Partition:
        """The database holding this request's money (see the module's words): the directory's
        region of the person it names, the envelope's for anyone else."""
        if not self.split:
            return self.main
        who = _who(req.input)
        region = None if who is None else self._regions.get(who)
        if who is not None and region is None:
            # With the envelope's region to fall back on, a main database that hangs delays a
            # cluster's request by a moment, not its whole deadline.
            asked = min(wait, DIRECTORY_SECONDS) if req.insuplc_admdvs else wait
            try:
                async with asyncio.timeout(asked), db.leased(self.main.pool, asked) as conn:
                    region = await region_of(conn, *who)
            except db.UNAVAILABLE:  # a timeout among them
                # The envelope's region only where the person is: a request sent there for
                # someone who is not would keep a refusal ("no such person") against its msgid
                # in that database, and its retry, the directory back, would settle in the
                # person's (found from outside: two answers to one message).
                guessed = self.of_region(req.insuplc_admdvs) if req.insuplc_admdvs else self.main
                if guessed is self.main or not await _holds(guessed, who[0], wait):
                    raise  # the main database is the one that did not answer
                return guessed
            if region is not None:
                if len(self._regions) >= REGIONS_KEPT:
                    self._regions.clear()
                self._regions[who] = region
        if region is None:
            region = req.insuplc_admdvs  # no one the directory knows: as the envelope says
        return self.of_region(region) if region else self.main

    async def holding(self, fixmedins_code: str, msgid: str, wait: float) -> Partition | None:
        """The database whose msgid journal holds the institution's msgid as a message it
        received (not a bar), if any: where a 2601 of it must run. A bar is not looked at: the
        2601 that wrote it ran where its own region or person sends it, and so does its retry,
        which must find its stored answer there."""
        for partition in self.all:
            async with db.elsewhere(partition.pool, wait) as conn:
                found = await idempotency.lookup(conn, fixmedins_code, msgid)
            # A reversed original is held here too (found in review: skipped as a bar, a second
            # 2601 of it went to the envelope's region and barred it there, answered 成功).
            if found is not None and not found.barred:
                return partition
        return None

    async def close(self, within: float) -> None:
        """Close the clusters' pools (the main pool is its owner's to close)."""
        await asyncio.gather(*(db.close_pool(c.pool, within) for c in self.clusters))


class _Named(msgspec.Struct):
    psn_no: str = ""
    mdtrt_cert_type: str = ""
    mdtrt_cert_no: str = ""


class _Input(msgspec.Struct):
    """The nodes in which the transactions name the person: `data` (1101, 2201, 2206/2207,
    2303/2304, 2601 ...; an array in some clients' 2302), `druginfo` (2101/2102), `mdtrtinfo`
    (2203, 2401), `dscginfo` (2402), `feedetail` (2204, 2301) and `purcinfo` (as objects or
    arrays)."""

    data: _Named | list[_Named] | None = None
    druginfo: _Named | None = None
    mdtrtinfo: _Named | None = None
    dscginfo: _Named | None = None
    feedetail: _Named | list[_Named] | None = None
    purcinfo: _Named | list[_Named] | None = None


_input = msgspec.json.Decoder(_Input)


def _first(node: _Named | list[_Named] | None) -> _Named | None:
    if isinstance(node, list):
        return node[0] if node else None
    return node


def _who(raw: bytes) -> tuple[str, str, str] | None:
    """(psn_no, certificate type, certificate number) the input names, if it names anyone."""
    try:
        node = _input.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    for named in (
        _first(node.data),
        node.druginfo,
        node.mdtrtinfo,
        node.dscginfo,
        _first(node.feedetail),
        _first(node.purcinfo),
    ):
        if named is not None and (named.psn_no or named.mdtrt_cert_no):
            return named.psn_no, named.mdtrt_cert_type, named.mdtrt_cert_no
    return None


async def _holds(partition: Partition, psn_no: str, wait: float) -> bool:
    """Whether the person is in the database (False when it cannot be asked either)."""
    if not psn_no:
        return False  # a certificate alone: the directory reads those
    try:
        async with asyncio.timeout(wait), db.leased(partition.pool, wait) as conn:
            found = await conn.fetchval("SELECT 1 FROM persons WHERE psn_no = $1", psn_no)
    except db.UNAVAILABLE:
        return False
    return found is not None


# The directory columns a certificate type is matched against (as gateway.ledger.persons matches
# persons): 01 e-voucher (psn_no or ID number), 02 ID number, 03 social-security card.
_CERT_COLUMNS = {"01": ("psn_no", "certno"), "02": ("certno",), "03": ("mdtrt_cert_no_card",)}


async def region_of(
    conn: asyncpg.Connection, psn_no: str, cert_type: str, cert_no: str
) -> str | None:
    """The person's insured region from the directory; None when it does not know them (the
    main database then answers, as it would for anyone unknown)."""
    if psn_no:
        found = await conn.fetchval(
            "SELECT insuplc_admdvs FROM person_directory WHERE psn_no = $1", psn_no
        )
        return None if found is None else str(found)
    columns = _CERT_COLUMNS.get(cert_type)
    if columns is None:
        return None
    where = " OR ".join(f"{column} = $1" for column in columns)
    found = await conn.fetchval(
        f"SELECT insuplc_admdvs FROM person_directory WHERE {where} LIMIT 1", cert_no
    )
    return None if found is None else str(found)


# The ids a database draws from its sequences (就诊ID, 结算ID and sign-in serials among them:
# 12 digits each after region and date) start at its number × ID_RANGE, the main database's at 0.
ID_RANGE = 10**10
NUMBERED_SEQUENCES = (
    "mdtrt_seq",
    "setl_seq",
    "sign_seq",
    "file_seq",
    "manual_claim_seq",  # 受理号: the agency finds a claim by it in any database
    "payout_batch_seq",  # 支付批次号, likewise
    "owed_lines_owed_id_seq",  # shown beside the others' in the owed list
)


# The sequences that step by 2, by the parity of their ids' serials past a cluster's floor:
# a 就诊ID and a 结算ID are never the same text (migration 037).
PARITY = {"mdtrt_seq": 1, "setl_seq": 2}


async def prepare_clusters(main: asyncpg.Connection, clusters: Iterable[LedgerCluster]) -> None:
    """Each cluster migrated and numbered, and the persons of its regions still in the main
    database (the demo set and synthetic persons are loaded there) moved into it; one process
    at a time."""
    async with placing(main):
        for cluster in clusters:
            other = await asyncpg.connect(cluster.dsn)
            try:
                await db.migrate(other)
                await number_cluster(main, other, cluster.name)
                await place_persons(main, other, cluster.regions)
            finally:
                await other.close()


@contextlib.asynccontextmanager
async def placing(main: asyncpg.Connection) -> AsyncIterator[None]:
    """One process at a time numbers clusters and places persons: nodes starting together would
    otherwise copy the same persons into a cluster at once."""
    await main.execute("SELECT pg_advisory_lock($1)", PLACING_LOCK)
    try:
        yield
    finally:
        await main.execute("SELECT pg_advisory_unlock($1)", PLACING_LOCK)


async def number_cluster(main: asyncpg.Connection, cluster: asyncpg.Connection, name: str) -> int:
    """The cluster's number, given once by the main database, and its sequences moved into its
    range (never back: a sequence already past its floor is left alone)."""
    await main.execute(
        "INSERT INTO ledger_numbers (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", name
    )
    number = int(await main.fetchval("SELECT number FROM ledger_numbers WHERE name = $1", name))
    floor = number * ID_RANGE
    for sequence in NUMBERED_SEQUENCES:
        # Visits take odd serials and settlements even ones (migration 037): the floor is moved
        # to one of the sequence's own parity, so its next ids keep it (ID_RANGE is even).
        start = floor + PARITY.get(sequence, 0)
        await cluster.execute(
            f"SELECT setval('{sequence}', greatest((SELECT last_value FROM {sequence}), $1))",
            start,
        )
    return number


async def place_persons(
    main: asyncpg.Connection, cluster: asyncpg.Connection, regions: Iterable[str]
) -> int:
    """Move the persons (and their accounts) of `regions` from the main database into their
    cluster; returns how many moved. A split set up on a database loaded whole (the demo data).
    The cluster commits first, then the main database lets go: interrupted between, the next run
    finds the persons still in the main database and copies them again over the cluster's."""
    wanted = sorted(regions)
    persons = await main.fetch("SELECT * FROM persons WHERE insuplc_admdvs = ANY($1)", wanted)
    if not persons:
        return 0
    numbers = [r["psn_no"] for r in persons]
    accounts = await main.fetch("SELECT * FROM accounts WHERE psn_no = ANY($1)", numbers)
    async with cluster.transaction():
        await cluster.execute("DELETE FROM accounts WHERE psn_no = ANY($1)", numbers)
        await cluster.execute("DELETE FROM persons WHERE psn_no = ANY($1)", numbers)
        await cluster.copy_records_to_table(
            "persons", records=[tuple(r) for r in persons], columns=list(persons[0].keys())
        )
        if accounts:
            await cluster.copy_records_to_table(
                "accounts", records=[tuple(r) for r in accounts], columns=list(accounts[0].keys())
            )
    async with main.transaction():
        await main.execute("DELETE FROM accounts WHERE psn_no = ANY($1)", numbers)
        await main.execute("DELETE FROM persons WHERE psn_no = ANY($1)", numbers)
    return len(persons)
