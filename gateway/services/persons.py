"""Who is at the counter: 1101 人员信息获取, the person a presented certificate identifies."""

from __future__ import annotations

import asyncpg
import msgspec

from gateway.core.model import Person
from gateway.ledger import persons
from gateway.protocol.errors import IdentityRejected

# Only employee insurance (职工基本医疗保险, 310) has a personal account whose balance is shown.
_ACCOUNT_INSUTYPE = "310"


class PersonAsk(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A 1101: the certificate read at the counter and, if the clerk typed it, the name."""

    cert: persons.Certificate
    psn_name: str  # "" where none was sent


class PersonFound(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The person and the account balance shown to the counter (0 where there is none)."""

    person: Person
    balc: int  # fen


async def identify(conn: asyncpg.Connection, a: PersonAsk) -> PersonFound:
    """1101: the person the certificate identifies, refused where none is or the name differs."""
    found = await persons.find_by_certificate(conn, a.cert.cert_type, a.cert.cert_no)
    if found is None:
        raise IdentityRejected("未查询到该就诊凭证对应的参保人员，请核对证件号码或重新读卡")
    person, balance = found
    if a.psn_name and a.psn_name != person.psn_name:
        raise IdentityRejected("就诊凭证与人员姓名不符，请核对身份")
    return PersonFound(person=person, balc=balance if person.insutype == _ACCOUNT_INSUTYPE else 0)
