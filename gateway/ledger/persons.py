"""Insured persons, their accounts and yearly accumulators."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.core.model import Accumulators, Person
from gateway.ledger.keyed import per_key
from gateway.ledger.writes import insert_statement, update_statement
from gateway.protocol.errors import IdentityRejected, NotInsured

_PERSON_COLUMNS = (
    "p.psn_no, p.psn_name, p.psn_cert_type, p.certno, p.gend, p.brdy, p.insuplc_admdvs,"
    " p.insutype, p.psn_type, p.psn_insu_stas, p.cvlserv_flag, p.maf_class,"
    " p.chronic_dise_codg, p.mdtrt_cert_no_card"
)
ACCUMULATOR_FIELDS: tuple[str, ...] = tuple(Accumulators.__struct_fields__)

_SELECT = f"SELECT {_PERSON_COLUMNS}, a.balance_fen FROM persons p JOIN accounts a USING (psn_no)"
_BALANCE = "SELECT balance_fen FROM accounts WHERE psn_no = $1"
_LOCK = f"{_SELECT} WHERE p.psn_no = $1 FOR UPDATE OF a"
_READ = f"{_SELECT} WHERE p.psn_no = $1"
# Several persons at once, locked in psn_no order: two batches locking overlapping sets of
# persons always queue in the same order, so they cannot deadlock.
_LOCK_MANY = f"{_SELECT} WHERE p.psn_no = ANY($1::text[]) ORDER BY p.psn_no FOR UPDATE OF a"
_ACC_READ_MANY = per_key(
    f"psn_no, year, {', '.join(ACCUMULATOR_FIELDS)}",
    "accumulators",
    [("psn_no", "text"), ("year", "int4")],
)
# The person, the balance and one year's accumulators in one round trip (a missing year: NULLs).
_WITH_YEAR_COLUMNS = f"{_PERSON_COLUMNS}, a.balance_fen, y.year AS acc_year, " + ", ".join(
    f"y.{f}" for f in ACCUMULATOR_FIELDS
)
_WITH_YEAR = (
    f"SELECT {_WITH_YEAR_COLUMNS}, $2::int4 AS want_year"
    " FROM persons p JOIN accounts a USING (psn_no)"
    " LEFT JOIN accumulators y ON y.psn_no = p.psn_no AND y.year = $2 WHERE p.psn_no = $1"
)
_WITH_YEAR_MANY = (
    f"SELECT {_WITH_YEAR_COLUMNS}, k.year AS want_year"
    " FROM unnest($1::text[], $2::int4[]) AS k(psn_no, year)"
    " JOIN persons p ON p.psn_no = k.psn_no JOIN accounts a ON a.psn_no = p.psn_no"
    " LEFT JOIN accumulators y ON y.psn_no = p.psn_no AND y.year = k.year"
)
SET_BALANCE = update_statement("accounts", [("psn_no", "text")], [("balance_fen", "int8")])
_ACC_READ = (
    f"SELECT {', '.join(ACCUMULATOR_FIELDS)} FROM accumulators WHERE psn_no = $1 AND year = $2"
)
ACC_UPSERT = insert_statement(
    "accumulators",
    [("psn_no", "text"), ("year", "int4"), *((f, "int8") for f in ACCUMULATOR_FIELDS)],
    suffix=" ON CONFLICT (psn_no, year) DO UPDATE SET "
    + ", ".join(f"{f} = EXCLUDED.{f}" for f in ACCUMULATOR_FIELDS),
    key_columns=2,
)


def _accumulators_of(row: Any) -> Accumulators:
    return Accumulators(**{f: int(row[f]) for f in ACCUMULATOR_FIELDS})


def person_of(row: Any) -> Person:
    """A persons row -> Person."""
    return Person(
        psn_no=row["psn_no"],
        psn_name=row["psn_name"],
        psn_cert_type=row["psn_cert_type"],
        certno=row["certno"],
        gend=row["gend"],
        brdy=row["brdy"],
        insuplc_admdvs=row["insuplc_admdvs"],
        insutype=row["insutype"],
        psn_type=row["psn_type"],
        psn_insu_stas=row["psn_insu_stas"],
        cvlserv_flag=row["cvlserv_flag"],
        maf_class=row["maf_class"],
        chronic_dise_codg=tuple(row["chronic_dise_codg"]),
        mdtrt_cert_no_card=row["mdtrt_cert_no_card"],
    )


async def read(conn: asyncpg.Connection, psn_no: str, *, lock: bool = False) -> tuple[Person, int]:
    """The person and account balance; with lock=True the account row stays locked until commit.

    Locking the account row is what serializes one person's settlements: two transactions for
    the same person queue here, so neither computes against state the other is changing.
    """
    row = await conn.fetchrow(_LOCK if lock else _READ, psn_no)
    if row is None:
        raise unknown(psn_no)
    return person_of(row), int(row["balance_fen"])


async def balance(conn: asyncpg.Connection, psn_no: str) -> int:
    """The account balance, 0 for a psn_no the directory does not hold (an answer that only
    reports the balance, such as a deferred claim's withdrawal, must not fail for it)."""
    found = await conn.fetchval(_BALANCE, psn_no)
    return int(found) if found is not None else 0


def unknown(psn_no: str) -> NotInsured:
    """The refusal of a psn_no the directory does not hold."""
    return NotInsured(f"人员编号{psn_no}不存在，请重新读卡获取人员信息")


async def lock_many(
    conn: asyncpg.Connection, psn_nos: Sequence[str]
) -> dict[str, tuple[Person, int]]:
    """Several persons and balances, each account row locked until commit; unknown ones absent."""
    # One person (the single path) by equality, as the single-person read: cheaper per call.
    rows = await (
        conn.fetch(_LOCK, psn_nos[0])
        if len(psn_nos) == 1
        else conn.fetch(_LOCK_MANY, list(psn_nos))
    )
    return {r["psn_no"]: (person_of(r), int(r["balance_fen"])) for r in rows}


async def accumulators_many(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], Accumulators]:
    """Accumulators for several (psn_no, year); zeros for those without a row yet."""
    if len(keys) == 1:  # one by equality, as above
        ((psn_no, year),) = keys
        row = await conn.fetchrow(_ACC_READ, psn_no, year)
        return {(psn_no, year): Accumulators() if row is None else _accumulators_of(row)}
    rows = await conn.fetch(_ACC_READ_MANY, [k[0] for k in keys], [k[1] for k in keys])
    found = {(r["psn_no"], int(r["year"])): _accumulators_of(r) for r in rows}
    return {k: found.get(k) or Accumulators() for k in keys}


def accumulator_row(psn_no: str, year: int, acc: Accumulators) -> tuple[object, ...]:
    """ACC_UPSERT's arguments."""
    return (psn_no, year, *(getattr(acc, f) for f in ACCUMULATOR_FIELDS))


async def read_with_year_many(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], tuple[Person, int, Accumulators]]:
    """Persons with their balance and one year's accumulators, in one query, for answers that
    change nothing (2101, 2206; the group read's batches). Never with a lock: a locking join
    re-reads only the locked row after a wait. A person not found is absent."""
    if len(keys) == 1:  # one by equality: the plan of the common case stays an index look-up
        ((psn_no, year),) = keys
        rows = [await conn.fetchrow(_WITH_YEAR, psn_no, year)]
    else:
        rows = await conn.fetch(_WITH_YEAR_MANY, [k[0] for k in keys], [k[1] for k in keys])
    return {
        (row["psn_no"], int(row["want_year"])): (
            person_of(row),
            int(row["balance_fen"]),
            Accumulators() if row["acc_year"] is None else _accumulators_of(row),
        )
        for row in rows
        if row is not None
    }


def require_insured(person: Person) -> None:
    """Refuse anyone not in insured status (psn_insu_stas 1)."""
    if person.psn_insu_stas != "1":
        raise NotInsured(
            f"参保人{person.psn_no}参保状态异常（非正常参保），不能享受医保待遇，请按自费处理"
        )


CERT_TYPES = {"01": "电子凭证", "02": "身份证", "03": "社保卡"}


@dataclass(frozen=True, slots=True)
class Certificate:
    """就诊凭证 as read at the counter: mdtrt_cert_type (01, 02 or 03) and mdtrt_cert_no."""

    cert_type: str
    cert_no: str


# What each certificate type is matched against. `find_by_certificate` (1101) looks a person up
# by these columns and `identifies` checks a person against the same ones: the certificate that
# 1101 resolved is the one every later call must present for that person.
_CERT_COLUMNS = {"01": ("psn_no", "certno"), "02": ("certno",), "03": ("mdtrt_cert_no_card",)}


async def find_by_certificate(
    conn: asyncpg.Connection, cert_type: str, cert_no: str
) -> tuple[Person, int] | None:
    """1101: 01 e-voucher (token: psn_no or certno), 02 ID number, 03 social-security card."""
    where = " OR ".join(f"p.{column} = $1" for column in _CERT_COLUMNS[cert_type])
    row = await conn.fetchrow(f"{_SELECT} WHERE ({where}) LIMIT 1", cert_no)
    return None if row is None else (person_of(row), int(row["balance_fen"]))


def identifies(person: Person, cert: Certificate) -> bool:
    """Whether `find_by_certificate` would find this person by the certificate."""
    columns = _CERT_COLUMNS.get(cert.cert_type, ())
    return any(getattr(person, column) == cert.cert_no for column in columns)


def require_certificate(person: Person, cert: Certificate | None) -> None:
    """A visit, admission or sale opens, and an account is debited, only for the person the
    presented certificate identifies: a psn_no alone (sequential, printed on receipts) is not
    proof that the patient is at the counter. None: the request carried no certificate number
    where the interface makes it optional (2206/2207, 2303/2304)."""
    if cert is None or identifies(person, cert):
        return
    raise IdentityRejected(
        f"就诊凭证与参保人员不符：{CERT_TYPES.get(cert.cert_type, '就诊凭证')}"
        f"{_masked(cert.cert_no)}不是人员编号{person.psn_no}的凭证，"
        "请重新读卡或扫码获取人员信息（1101）后再办理"
    )


def _masked(cert_no: str) -> str:
    """The number as a receipt prints it: enough for the clerk to compare, not the whole ID."""
    if len(cert_no) <= 8:
        return cert_no[:2] + "*" * max(0, len(cert_no) - 2)
    return f"{cert_no[:4]}{'*' * (len(cert_no) - 8)}{cert_no[-4:]}"


async def year_accumulators(conn: asyncpg.Connection, psn_no: str, year: int) -> Accumulators:
    """The person's accumulators for a calendar year (zeros when none yet)."""
    row = await conn.fetchrow(_ACC_READ, psn_no, year)
    if row is None:
        return Accumulators()
    return _accumulators_of(row)


async def write_accumulators(
    conn: asyncpg.Connection, psn_no: str, year: int, acc: Accumulators
) -> None:
    """Store the year's accumulators (the caller holds the person's lock)."""
    await conn.execute(ACC_UPSERT, *accumulator_row(psn_no, year, acc))


async def set_balance(conn: asyncpg.Connection, psn_no: str, balance_fen: int) -> None:
    """Store the account balance (the caller holds the person's lock)."""
    await conn.execute(SET_BALANCE, psn_no, balance_fen)
