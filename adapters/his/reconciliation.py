"""3201 对总账, 3202 对明细账, 9101 文件上传, 9102 文件下载 (protocol.md §2.7), read into the
requests of gateway.services.reconciliation."""

from __future__ import annotations

import re

import asyncpg
import msgspec

from adapters.national.envelope import Amount, Code, clipped, decode_input, text
from adapters.national.wire import Node, day, fen_required, required
from gateway.core.dates import DateRules
from gateway.core.money import shown
from gateway.core.settle import EMPLOYEE, RESIDENT
from gateway.emergency.plan.rules import TxClass
from gateway.protocol.errors import BadRequest
from gateway.protocol.origin import Origin
from gateway.protocol.transaction import Answer, Call, register
from gateway.services import reconciliation


class StmtTotal(Node):
    insutype: Code = None
    clr_type: Code = None
    setl_optins: Code = None
    stmt_begndate: Code = None
    stmt_enddate: Code = None
    medfee_sumamt: Amount = None
    fund_pay_sumamt: Amount = None
    acct_pay: Amount = None
    cash_payamt: Amount = None
    fixmedins_setl_cnt: Amount = None
    refd_setl_flag: Code = None
    file_qury_no: Code = None


class In3201(Node):
    data: StmtTotal | None = None


class UploadIn(Node):
    in_: Code = msgspec.field(default=None, name="in")
    filename: Code = None
    fixmedins_code: Code = None


class In9101(Node):
    fsUploadIn: UploadIn | None = None


class DownloadIn(Node):
    file_qury_no: Code = None
    filename: Code = None
    fixmedins_code: Code = None


class In9102(Node):
    fsDownloadIn: DownloadIn | None = None


_COUNT = re.compile(r"[0-9]+")
_REGION = re.compile(r"[0-9]{6}")  # a 医保区划 (admdvs)
_COUNT_DIGITS = 10  # protocol.md §2.7: fixmedins_setl_cnt 数值 10


def _count(value: Amount, name: str) -> int:
    """A number of settlements: ASCII digits, not negative (found from outside: -1 was taken
    and answered "医药机构上报-1笔"; int() also takes "１２" and "1_0"), at most 10 of them
    (found from outside: 11 digits were told "应为非负整数")."""
    sent = "" if value is None or isinstance(value, bool) else str(value).strip()
    if not _COUNT.fullmatch(sent):
        raise BadRequest(f"字段{name}应为非负整数")
    if len(sent) > _COUNT_DIGITS:
        raise BadRequest(f"字段{name}有{len(sent)}位数字，超过接口规定的{_COUNT_DIGITS}位")
    return int(sent)


def _codes(name: str, sent: str, valid: dict[str, str]) -> None:
    """`sent`, one of the codes the ledger's settlements carry ("" where not sent); another,
    for which the institution declares settlements, is refused naming them: none could count
    under it (found from outside: answered "医药机构多：中心0笔"). A day-end that walks every
    险种 or 清算类别 of its own and declares nothing under one the centre does not settle is
    balanced, as before: refusing it would stop that institution's day-end."""
    if sent and sent not in valid:
        listed = "、".join(f"{code}{words}" for code, words in valid.items())
        raise BadRequest(f"{name}为“{shown(sent)}”，本中心的结算只有{listed}")


def _declared_under_settled_codes(p: reconciliation.StatementPeriod, count: int) -> None:
    if count:
        _codes("险种类型insutype", p.insutype, _INSUTYPES)
        _codes("清算类别clr_type", p.clr_type, _CLR_TYPES)


# What the ledger's settlements carry: the insutypes the rules settle (gateway.core.settle)
# and the clearing types the ledger writes (reconciliation.SETTLED_CLR_TYPES).
_INSUTYPES = {EMPLOYEE: "（职工）", RESIDENT: "（居民）"}
_CLR_NAMES = {"11": "（门诊）", "21": "（住院）", "41": "（药店）"}
_CLR_TYPES = {code: _CLR_NAMES.get(code, "") for code in reconciliation.SETTLED_CLR_TYPES}


def _setl_optins(call: Call, sent: str) -> str:
    """The clearing agency asked for: a settlement's `clr_optins` is its insured region
    (gateway.ledger.settlements), so the institution's own region or another whose insured the
    centre settles (a region with a policy: an institution's patients from 毕节 are cleared by
    520500). Another names no settlement of any institution (found from outside: answered
    "医药机构多：中心0笔"); refused naming the institution's own."""
    own = call.institution.admdvs
    if sent != own and sent not in {p.admdvs for p in call.gw.snapshot.policies}:
        raise BadRequest(
            f"结算经办机构setl_optins“{shown(sent)}”不是本中心的清算经办机构：本机构所在地的"
            f"清算经办机构为{own}（异地参保人的结算按其参保地对账）"
        )
    return sent


def _period(call: Call, d: StmtTotal) -> reconciliation.StatementPeriod:
    setl_optins = _setl_optins(call, required(d.setl_optins, "data.setl_optins"))
    begn = day(d.stmt_begndate, "data.stmt_begndate")
    # A period that has not begun holds nothing to compare: refused as the counter's future
    # dates are (found from outside: answered as a mismatch).
    DateRules.check_day_not_ahead("对账开始日期stmt_begndate", begn, now=call.now)
    end = day(d.stmt_enddate, "data.stmt_enddate")
    if end < begn:
        raise BadRequest("对账结束日期不能早于开始日期")
    if (end - begn).days > 366:
        raise BadRequest("对账期间不能超过一年")
    flag = text(d.refd_setl_flag) or "0"
    if flag not in ("0", "1"):
        raise BadRequest("退费结算标志refd_setl_flag只能为0或1")
    return reconciliation.StatementPeriod(
        setl_optins=setl_optins,
        stmt_begndate=begn,
        stmt_enddate=end,
        insutype=text(d.insutype),
        clr_type=text(d.clr_type),
        refd_setl_flag=flag == "1",
    )


def _others(call: Call, setl_optins: str | None = None) -> list[asyncpg.Pool]:
    """The ledger clusters, besides the main database this call runs in (dispatch keeps
    reconciliations there; none unless the ledger is split by region): an institution's
    settlements of patients insured in a cluster's regions are in that cluster. With the
    period's `setl_optins` (its patients' insured region, each settlement's `clr_optins`), only
    the cluster of that region: found from outside, one region's database down refused every
    3201, of the other regions' patients too."""
    clusters = call.gw.ledgers.clusters
    if setl_optins is not None:
        clusters = tuple(c for c in clusters if setl_optins in c.regions)
    return [p.pool for p in clusters]


@register("3201", "医药机构费用结算对总账", writes=True, klass=TxClass.RECONCILE, input=In3201)
async def statement_total(call: Call) -> Answer:
    d = decode_input(call.req, In3201).data
    if d is None:
        raise BadRequest("缺少输入节点data")
    required(d.insutype, "data.insutype")
    required(d.clr_type, "data.clr_type")
    p = _period(call, d)
    # Totals may be negative: with refd_setl_flag 1 the period's refunds are counted.
    declared = reconciliation.StatementTotals(
        fixmedins_setl_cnt=_count(d.fixmedins_setl_cnt, "data.fixmedins_setl_cnt"),
        medfee_sumamt=fen_required(d.medfee_sumamt, "data.medfee_sumamt", signed=True),
        fund_pay_sumamt=fen_required(d.fund_pay_sumamt, "data.fund_pay_sumamt", signed=True),
        acct_pay=fen_required(d.acct_pay, "data.acct_pay", signed=True),
    )
    _declared_under_settled_codes(p, declared.fixmedins_setl_cnt)
    stmt = await reconciliation.statement_total(
        call.conn, Origin.of(call.req), p, declared, _others(call, p.setl_optins)
    )
    return Answer({"stmtinfo": _statement(p.setl_optins, stmt)}, mismatch=not stmt.balanced)


@register("9101", "文件上传", writes=True, klass=TxClass.RECONCILE, input=In9101)
async def upload_file(call: Call) -> Answer:
    node = decode_input(call.req, In9101).fsUploadIn
    if node is None:
        raise BadRequest("缺少输入节点fsUploadIn")
    filename = required(node.filename, "fsUploadIn.filename")
    owner = text(node.fixmedins_code)
    # Refused where it names another institution or another region's agency: openhis fills it
    # with its 清算经办机构 (its region's code) in one version and with the 3202's clr_type
    # ("11") in another, neither a claim on anyone else's file (found from outside, twice: its
    # uploads were refused).
    if owner not in ("", call.req.fixmedins_code, call.institution.admdvs) and (
        call.gw.snapshot.institution(owner) is not None or _REGION.fullmatch(owner)
    ):
        raise BadRequest(f"文件所属机构{owner}与报文机构编号{call.req.fixmedins_code}不一致")
    stored = await reconciliation.upload_file(
        call.conn,
        call.req.fixmedins_code,
        call.gw.config.reconcile_files,
        call.now,
        filename,
        required(node.in_, "fsUploadIn.in"),
    )
    return Answer(_stored(stored))


def _stored(f: reconciliation.StoredFile) -> dict[str, str]:
    return {
        "file_qury_no": f.file_qury_no,
        "filename": f.filename,
        "dld_endtime": f.dld_endtime.strftime("%Y-%m-%d %H:%M:%S"),
    }


@register("3202", "医药机构费用结算对明细账", writes=True, klass=TxClass.RECONCILE, input=In3201)
async def statement_detail(call: Call) -> Answer:
    d = decode_input(call.req, In3201).data
    if d is None:
        raise BadRequest("缺少输入节点data")
    p = _period(call, d)
    file_no = required(d.file_qury_no, "data.file_qury_no")
    compared = await reconciliation.compare_detail(
        call.conn,
        call.req.fixmedins_code,
        call.gw.config.reconcile_files,
        p,
        file_no,
        _others(call),
    )
    # The totals are read once the file is compared: a request wrong in both names the file.
    declared = reconciliation.StatementTotals(
        fixmedins_setl_cnt=_count(d.fixmedins_setl_cnt, "data.fixmedins_setl_cnt"),
        medfee_sumamt=fen_required(d.medfee_sumamt, "data.medfee_sumamt", signed=True),
        fund_pay_sumamt=fen_required(d.fund_pay_sumamt, "data.fund_pay_sumamt", signed=True),
        cash_payamt=fen_required(d.cash_payamt, "data.cash_payamt", signed=True),
    )
    _declared_under_settled_codes(p, declared.fixmedins_setl_cnt)
    stmt, result = await reconciliation.conclude_detail(
        call.conn, Origin.of(call.req), call.now, compared, declared, _others(call)
    )
    # The whole comparison's result beside the file, in 3201's words (found from outside: the
    # declared totals' mismatch was recorded where the institution could not see it, and the
    # answer said only 成功). Clients that read only fileinfo are unaffected.
    return Answer(
        {"fileinfo": _stored(result), "stmtinfo": _statement(p.setl_optins, stmt)},
        mismatch=not stmt.balanced,
    )


def _statement(setl_optins: str, stmt: reconciliation.Statement) -> dict[str, str]:
    """The stmtinfo node of 3201, and of 3202 beside its file."""
    return {
        "setl_optins": setl_optins,
        "stmt_rslt": stmt.stmt_rslt,
        # Cut as err_msg is, in the middle: the head says what differs, the tail what to do
        # (found from outside: cut at its end, the instruction was lost).
        "stmt_rslt_dscr": clipped(stmt.stmt_rslt_dscr) or "",
    }


@register("9102", "文件下载", writes=False, klass=TxClass.RECONCILE, input=In9102)
async def download_file(call: Call) -> Answer:
    node = decode_input(call.req, In9102).fsDownloadIn
    if node is None:
        raise BadRequest("缺少输入节点fsDownloadIn")
    file_no = required(node.file_qury_no, "fsDownloadIn.file_qury_no")
    content = await reconciliation.download_file(call.conn, call.req.fixmedins_code, file_no)
    return Answer(None, raw=content)
