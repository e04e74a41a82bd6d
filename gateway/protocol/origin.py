"""Who asks: what a settlement records of the envelope that carried it."""

from __future__ import annotations

import msgspec

from adapters.national.envelope import Request


class Origin(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The envelope's part the ledger keeps with a settlement (its request, device, operator)."""

    fixmedins_code: str
    infno: str
    msgid: str
    dev_no: str = ""
    opter: str = ""
    mdtrtarea_admvs: str = ""

    @classmethod
    def of(cls, req: Request) -> Origin:
        return cls(
            fixmedins_code=req.fixmedins_code,
            infno=req.infno,
            msgid=req.msgid,
            dev_no=req.dev_no,
            opter=req.opter,
            mdtrtarea_admvs=req.mdtrtarea_admvs,
        )
