"""3301 目录对照上传, 3302 目录对照撤销 (gateway.services.catalog_mappings), and the paged catalog
queries 1312/1317/1318/1319 (gateway.services.catalog_queries: the rows, from the snapshot this
process settles with; the paging is the national shape's)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from adapters.national.envelope import Amount, Code, decode_input, text
from adapters.national.output import ratio
from adapters.national.wire import Node, as_list, day, required
from gateway.core.money import micro_text
from gateway.emergency.plan.rules import TxClass
from gateway.protocol.errors import BadRequest
from gateway.protocol.transaction import Answer, Call, register
from gateway.services import catalog_mappings, catalog_queries

MAX_ROWS = 1000
MAX_PAGE = 1000
# A 3301 row without enddate is in force until revoked or superseded (Guangzhou's client, IBORN
# `RequestGzsiModel3301`, leaves it unset); the catalog marks open-ended rows with this date.
OPEN_END = catalog_mappings.OPEN_END
T = TypeVar("T")


class MappingRow(Node):
    fixmedins_hilist_id: Code = None
    fixmedins_hilist_name: Code = None
    list_type: Code = None
    med_list_codg: Code = None
    begndate: Code = None
    enddate: Code = None
    aprvno: Code = None
    dosform: Code = None
    exct_cont: Code = None
    item_cont: Code = None
    prcunt: Code = None
    spec: Code = None
    pacspec: Code = None
    memo: Code = None
    fixmedins_code: Code = None


class In3301(Node):
    data: list[MappingRow] | MappingRow | None = None
    catalogcompin: list[MappingRow] | MappingRow | None = None


class RevokeRow(Node):
    fixmedins_code: Code = None
    fixmedins_hilist_id: Code = None
    list_type: Code = None
    med_list_codg: Code = None


class In3302(Node):
    data: list[RevokeRow] | RevokeRow | None = None
    # Hunan's client (fengzaiqishi11/hsa-his `InsureUnifiedPayRestBOImpl.UP_3302`) names the
    # rows purcinfo and reads back sucessData.
    purcinfo: list[RevokeRow] | RevokeRow | None = None


class Query(Node):
    query_date: Code = None
    begndate: Code = None
    hilist_code: Code = None
    hilist_name: Code = None
    insu_admdvs: Code = None
    fixmedins_code: Code = None
    medins_list_codg: Code = None
    medins_list_name: Code = None
    med_list_codg: Code = None
    list_type: Code = None
    chrgitm_lv: Code = None
    med_chrgitm_type: Code = None
    lmt_used_flag: Code = None
    vali_flag: Code = None
    updt_time: Code = None
    page_num: Amount = None
    page_size: Amount = None


class In13xx(Node):
    data: Query | None = None


@register("3301", "目录对照上传", writes=True, klass=TxClass.CATALOG, input=In3301)
async def upload(call: Call) -> Answer:
    node = decode_input(call.req, In3301)
    rows = as_list(node.catalogcompin) or as_list(node.data)
    if not rows:
        raise BadRequest("缺少目录对照数据（data或catalogcompin）")
    if len(rows) > MAX_ROWS:
        raise BadRequest(f"单次上传目录对照不能超过{MAX_ROWS}条，请分批上传")
    decoded = []
    # An item mapped twice from one day in one upload: which applies would be the row order's,
    # silently (found from outside: two national codes from the same begndate, the last one won
    # and the first stayed to come back on a revoke). The same row sent twice is written once
    # (else the second replaced the first from its first day, and 1317 listed the one row as
    # both valid and replaced).
    first_of: dict[tuple[str, dt.date], tuple[int, str]] = {}
    written: set[catalog_mappings.MappingRow] = set()
    for i, row in enumerate(rows, start=1):
        at = f"第{i}条"
        owner = text(row.fixmedins_code)
        if owner and owner != call.req.fixmedins_code:
            raise BadRequest(f"{at}：机构编号与报文机构编号不一致")
        begn = day(row.begndate, f"{at}begndate")
        end = day(row.enddate, f"{at}enddate") if text(row.enddate) else OPEN_END
        if end < begn:
            raise BadRequest(f"{at}：结束日期早于开始日期")
        mapping = catalog_mappings.MappingRow(
            fixmedins_hilist_id=required(row.fixmedins_hilist_id, f"{at}fixmedins_hilist_id"),
            fixmedins_hilist_name=required(row.fixmedins_hilist_name, f"{at}fixmedins_hilist_name"),
            list_type=required(row.list_type, f"{at}list_type"),
            med_list_codg=required(row.med_list_codg, f"{at}med_list_codg"),
            begndate=begn,
            enddate=end,
        )
        earlier = first_of.setdefault(
            (mapping.fixmedins_hilist_id, begn), (i, mapping.med_list_codg)
        )
        if earlier[1] != mapping.med_list_codg:
            raise BadRequest(
                f"{at}与第{earlier[0]}条对照同一项目{mapping.fixmedins_hilist_id}、同一开始日期"
                f"{begn:%Y-%m-%d}，医保目录编码却不同（{earlier[1]}、"
                f"{mapping.med_list_codg}），请只上传正确的一条"
            )
        if mapping not in written:
            written.add(mapping)
            decoded.append(mapping)
    count = await catalog_mappings.upload(call.conn, call.req.fixmedins_code, decoded)
    return Answer(
        {"result": {"count": count}},
        warn_msg=_unused_words(decoded, catalog_mappings.never_in_force(decoded)),
        catalog_changed=True,
    )


def _unused_words(rows: Sequence[catalog_mappings.MappingRow], unused: list[int]) -> str | None:
    """Names the rows a later row of this upload supersedes on all their days (found from
    outside: sent newest first, an item's history left its latest row never used, silently)."""
    if not unused:
        return None
    named = "、".join(
        f"{r.fixmedins_hilist_id}→{r.med_list_codg}"
        f"（{catalog_mappings.period_words((r.begndate, r.enddate))}）"
        for r in (rows[i] for i in unused[:3])
    )
    more = f"等{len(unused)}条" if len(unused) > 3 else ""
    return (
        f"已上传，但对照{named}{more}的全部有效期都被本次上传中排在其后的对照取代，不会被使用"
        "（同一项目以后上传的为准）；如非本意，请按开始日期从早到晚排列后重新上传"
    )


def _revocation(fixmedins_code: str, row: RevokeRow) -> catalog_mappings.Revocation:
    owner = text(row.fixmedins_code)
    if owner and owner != fixmedins_code:
        raise BadRequest("只能撤销本机构的目录对照")
    return catalog_mappings.Revocation(
        fixmedins_hilist_id=required(row.fixmedins_hilist_id, "data.fixmedins_hilist_id"),
        med_list_codg=required(row.med_list_codg, "data.med_list_codg"),
        list_type=text(row.list_type),
    )


@register("3302", "目录对照撤销", writes=True, klass=TxClass.CATALOG, input=In3302)
async def revoke(call: Call) -> Answer:
    node = decode_input(call.req, In3302)
    rows = as_list(node.data) or as_list(node.purcinfo)
    if not rows:
        raise BadRequest("缺少输入节点data")
    code = call.req.fixmedins_code
    # Each row read when the revocation reaches it: the first fault in row order is named.
    revoked = await catalog_mappings.revoke(
        call.conn, code, (_revocation(code, row) for row in rows)
    )
    left = await catalog_mappings.left_words(call.conn, code, revoked)
    return Answer(
        {
            "sucessData": [
                {
                    "fixmedins_code": code,
                    "fixmedins_hilist_id": r.fixmedins_hilist_id,
                    "list_type": r.list_type,
                    "med_list_codg": r.med_list_codg,
                }
                for r in revoked.rows
            ]
        },
        warn_msg=left,
        catalog_changed=True,
    )


_PAGE_NUMBER = re.compile(r"0*[1-9][0-9]{0,9}")


def _page(q: Query) -> tuple[int, int]:
    def number(value: Amount, name: str, default: int) -> int:
        if value is None or value == "":
            return default
        # ASCII digits, at most ten (a Java client asks for every row with Integer.MAX_VALUE).
        # Found from outside: a page number of 21 digits was answered with an endRow past any
        # 64-bit integer a client parses it into.
        sent = "" if isinstance(value, bool) else str(value).strip()
        if not _PAGE_NUMBER.fullmatch(sent):
            raise BadRequest(f"字段{name}应为正整数（至多10位）")
        return int(sent)

    return number(q.page_num, "page_num", 1), min(number(q.page_size, "page_size", 100), MAX_PAGE)


def _paged(q: Query, rows: Sequence[T], row_out: Callable[[T], dict[str, Any]]) -> Answer:
    """The paged answer shape real centres use (firstPage … data[])."""
    page_num, page_size = _page(q)
    total = len(rows)
    pages = (total + page_size - 1) // page_size
    start = (page_num - 1) * page_size
    chunk = rows[start : start + page_size]
    return Answer(
        {
            "firstPage": page_num == 1,
            "lastPage": page_num >= pages,
            "size": len(chunk),
            "startRow": start + 1 if chunk else 0,
            "endRow": start + len(chunk) if chunk else 0,
            "pageSize": page_size,
            "pageNum": page_num,
            "recordCounts": total,
            "pages": pages,
            "data": [row_out(r) for r in chunk],
        }
    )


def _day_time(on: dt.date) -> str:
    """A row's date as the centres answer it (`2000-01-01 00:00:00` in Chongqing's captured 1316
    row); Hunan's client parses it with yyyy-MM-dd HH:mm:ss and fails on a bare date."""
    return f"{on.isoformat()} 00:00:00"


def _query(call: Call) -> tuple[Query, catalog_queries.CatalogQuery]:
    """The node as sent (its paging read after the rows are chosen) and its filters."""
    q = decode_input(call.req, In13xx).data
    if q is None:
        raise BadRequest("缺少输入节点data")
    return q, catalog_queries.CatalogQuery(
        query_date=_iso_day(q.query_date, "data.query_date"),
        begndate=_iso_day(q.begndate, "data.begndate"),
        hilist_code=text(q.hilist_code),
        hilist_name=text(q.hilist_name),
        insu_admdvs=text(q.insu_admdvs),
        fixmedins_code=text(q.fixmedins_code),
        medins_list_codg=text(q.medins_list_codg),
        medins_list_name=text(q.medins_list_name),
        med_list_codg=text(q.med_list_codg),
        list_type=text(q.list_type),
        chrgitm_lv=text(q.chrgitm_lv),
        med_chrgitm_type=text(q.med_chrgitm_type),
        lmt_used_flag=text(q.lmt_used_flag),
        vali_flag=_vali_flag(q.vali_flag),
    )


def _iso_day(value: Code, name: str) -> str:
    """A date filter as `yyyy-MM-dd` ("" when not sent), read as every date field is (found from
    outside: "2025-2-15" was refused though a 3301 takes it, and a time with an offset was cut to
    its first ten characters)."""
    return day(value, name).isoformat() if text(value) else ""


def _vali_flag(value: Code) -> str:
    """ "0" asks for invalid rows only; any other value (clients send "1", "", null) for every
    row held, which are all valid."""
    return "0" if text(value) == "0" else ""


@register("1312", "医保目录信息查询", writes=False, klass=TxClass.CATALOG, input=In13xx)
async def query_catalog(call: Call) -> Answer:
    q, filters = _query(call)
    return _paged(
        q,
        catalog_queries.catalog(call.gw.snapshot, filters),
        lambda e: {
            "hilist_code": e.med_list_codg,
            "hilist_name": e.med_list_name,
            # The national catalog applies in every region: the asking institution's is named.
            "insu_admdvs": call.institution.admdvs,
            "list_type": e.list_type,
            "med_chrgitm_type": e.med_chrgitm_type,
            "chrgitm_lv": e.chrgitm_lv,
            "lmt_used_flag": e.lmt_used_flag,
            "begndate": _day_time(e.begndate),
            "enddate": _day_time(e.enddate),
            "vali_flag": "1",
        },
    )


@register("1317", "医药机构目录匹配信息查询", writes=False, klass=TxClass.CATALOG, input=In13xx)
async def query_mappings(call: Call) -> Answer:
    q, filters = _query(call)
    return _paged(
        q,
        catalog_queries.mappings(call.gw.snapshot, call.req.fixmedins_code, filters),
        lambda row: {
            "fixmedins_code": row[0].fixmedins_code,
            "medins_list_codg": row[0].medins_list_codg,
            "medins_list_name": row[0].fixmedins_hilist_name,
            "insu_admdvs": call.institution.admdvs,
            "list_type": row[0].list_type,
            "med_list_codg": row[0].med_list_codg,
            "begndate": _day_time(row[1]),  # the first day of the period a settlement uses it
            "enddate": _day_time(row[2]),  # and the last
            "vali_flag": filters.vali_flag or "1",  # "0": superseded, never used
        },
    )


@register("1318", "医保目录限价信息查询", writes=False, klass=TxClass.CATALOG, input=In13xx)
async def query_caps(call: Call) -> Answer:
    q, filters = _query(call)
    return _paged(
        q,
        catalog_queries.caps(call.gw.snapshot, filters),
        lambda c: {
            "hilist_code": c.med_list_codg,
            "insu_admdvs": c.insu_admdvs,
            # A JSON number: Dongguan's DLL reads a double, Hunan's client a BigDecimal.
            "hilist_pric_uplmt_amt": msgspec.Raw(micro_text(c.cap_micro).encode()),
            "begndate": _day_time(c.begndate),
            "enddate": _day_time(c.enddate),
            "vali_flag": "1",
        },
    )


@register("1319", "医保目录先自付比例信息查询", writes=False, klass=TxClass.CATALOG, input=In13xx)
async def query_ratios(call: Call) -> Answer:
    q, filters = _query(call)
    return _paged(
        q,
        catalog_queries.ratios(call.gw.snapshot, filters),
        lambda r: {
            "hilist_code": r.med_list_codg,
            "insu_admdvs": r.insu_admdvs,
            "selfpay_prop": ratio(r.selfpay_bp),
            "begndate": _day_time(r.begndate),
            "enddate": _day_time(r.enddate),
            "vali_flag": "1",
        },
    )
