"""3201 对总账, 3202 对明细账, 9101 文件上传, 9102 文件下载 (protocol.md §2.7)."""

from __future__ import annotations

import msgspec

from adapters.national.envelope import Amount, Code, decode_input, text
from adapters.national.wire import Node, day, fen_required, required
from gateway.emergency.plan.rules import TxClass
from gateway.jobs import reconcile
from gateway.ledger import exchange_files, reconciliations
from gateway.protocol.errors import BadRequest, NotFound
from gateway.protocol.transaction import Answer, Call, register

MAX_FILE_BYTES = 20 * 1024 * 1024


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


def _count(value: Amount, name: str) -> int:
    if isinstance(value, bool):
        raise BadRequest(f"字段{name}应为整数")
    try:
        return int(str(value).strip())
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"字段{name}应为整数") from exc


def _period(call: Call, d: StmtTotal) -> reconciliations.Period:
    begn = day(d.stmt_begndate, "data.stmt_begndate")
    end = day(d.stmt_enddate, "data.stmt_enddate")
    if end < begn:
        raise BadRequest("对账结束日期不能早于开始日期")
    if (end - begn).days > 366:
        raise BadRequest("对账期间不能超过一年")
    flag = text(d.refd_setl_flag) or "0"
    if flag not in ("0", "1"):
        raise BadRequest("退费结算标志refd_setl_flag只能为0或1")
    return reconciliations.Period(
        fixmedins_code=call.req.fixmedins_code,
        setl_optins=required(d.setl_optins, "data.setl_optins"),
        begndate=begn,
        enddate=end,
        insutype=text(d.insutype),
        clr_type=text(d.clr_type),
        include_refunded=flag == "1",
    )


@register("3201", "医药机构费用结算对总账", writes=True, klass=TxClass.RECONCILE, input=In3201)
async def statement_total(call: Call) -> Answer:
    d = decode_input(call.req, In3201).data
    if d is None:
        raise BadRequest("缺少输入节点data")
    required(d.insutype, "data.insutype")
    required(d.clr_type, "data.clr_type")
    p = _period(call, d)
    # Totals may be negative: with refd_setl_flag 1 the period's refunds are counted.
    declared = reconciliations.Totals(
        count=_count(d.fixmedins_setl_cnt, "data.fixmedins_setl_cnt"),
        medfee_sumamt=fen_required(d.medfee_sumamt, "data.medfee_sumamt", signed=True),
        fund_pay_sumamt=fen_required(d.fund_pay_sumamt, "data.fund_pay_sumamt", signed=True),
        acct_pay=fen_required(d.acct_pay, "data.acct_pay", signed=True),
        cash_payamt=0,
    )
    centre = await reconciliations.centre_totals(call.conn, p)
    rslt, dscr = reconcile.compare_totals(declared, centre)
    await reconciliations.record(call.conn, p, call.req.infno, rslt, dscr, declared, centre)
    return Answer(
        {
            "stmtinfo": {
                "setl_optins": p.setl_optins,
                "stmt_rslt": rslt,
                "stmt_rslt_dscr": dscr[:200],
            }
        },
        mismatch=rslt != reconcile.BALANCED,
    )


@register("9101", "文件上传", writes=True, klass=TxClass.RECONCILE, input=In9101)
async def upload_file(call: Call) -> Answer:
    node = decode_input(call.req, In9101).fsUploadIn
    if node is None:
        raise BadRequest("缺少输入节点fsUploadIn")
    filename = required(node.filename, "fsUploadIn.filename")
    owner = text(node.fixmedins_code)
    if owner and owner != call.req.fixmedins_code:
        raise BadRequest("文件所属机构与报文机构编号不一致")
    encoded = required(node.in_, "fsUploadIn.in")
    # Decoded and read through in a reader process, bounded (gateway.jobs.reconcile.FileLimits): a file
    # that cannot be read is refused now, not at 3202, and never at the event loop's expense.
    limits = call.gw.config.reconcile_files
    content = await reconcile.off_process(
        limits, reconcile.read_upload, encoded, limits, MAX_FILE_BYTES
    )
    file_no, deadline = await exchange_files.store_file(
        call.conn,
        fixmedins_code=call.req.fixmedins_code,
        filename=filename,
        kind="upload",
        content=content,
        now=call.now,
    )
    return Answer(
        {
            "file_qury_no": file_no,
            "filename": filename,
            "dld_endtime": deadline.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )


@register("3202", "医药机构费用结算对明细账", writes=True, klass=TxClass.RECONCILE, input=In3201)
async def statement_detail(call: Call) -> Answer:
    d = decode_input(call.req, In3201).data
    if d is None:
        raise BadRequest("缺少输入节点data")
    p = _period(call, d)
    file_no = required(d.file_qury_no, "data.file_qury_no")
    found = await exchange_files.load_file(call.conn, call.req.fixmedins_code, file_no)
    if found is None:
        raise NotFound(f"文件查询号{file_no}不存在或不属于本机构，请先上传明细文件（9101）")
    centre_rows = await reconciliations.centre_rows(call.conn, p)
    filename = f"{call.req.fixmedins_code}_{p.begndate:%Y%m%d}_{p.enddate:%Y%m%d}_result.zip"
    # Files stored before uploads were bounded are read under the same bounds, off the loop.
    limits = call.gw.config.reconcile_files
    rows, result = await reconcile.off_loop(
        limits, reconcile.detail_result, found[1], centre_rows, filename, limits
    )
    declared = reconciliations.Totals(
        count=_count(d.fixmedins_setl_cnt, "data.fixmedins_setl_cnt"),
        medfee_sumamt=fen_required(d.medfee_sumamt, "data.medfee_sumamt", signed=True),
        fund_pay_sumamt=fen_required(d.fund_pay_sumamt, "data.fund_pay_sumamt", signed=True),
        acct_pay=0,
        cash_payamt=fen_required(d.cash_payamt, "data.cash_payamt", signed=True),
    )
    centre = await reconciliations.centre_totals(call.conn, p)
    mismatched = [r for r in rows if r.stmt_rslt != reconcile.BALANCED]
    rslt, dscr = reconcile.compare_totals(declared, centre, with_cash=True)
    if rslt == reconcile.BALANCED and mismatched:
        rslt, dscr = reconcile.INCONSISTENT, f"总额一致但有{len(mismatched)}笔明细不一致"
    await reconciliations.record(call.conn, p, call.req.infno, rslt, dscr, declared, centre)
    result_no, deadline = await exchange_files.store_file(
        call.conn,
        fixmedins_code=call.req.fixmedins_code,
        filename=filename,
        kind="result",
        content=result,
        now=call.now,
    )
    return Answer(
        {
            "fileinfo": {
                "file_qury_no": result_no,
                "filename": filename,
                "dld_endtime": deadline.strftime("%Y-%m-%d %H:%M:%S"),
            }
        },
        mismatch=rslt != reconcile.BALANCED,
    )


@register("9102", "文件下载", writes=False, klass=TxClass.RECONCILE, input=In9102)
async def download_file(call: Call) -> Answer:
    node = decode_input(call.req, In9102).fsDownloadIn
    if node is None:
        raise BadRequest("缺少输入节点fsDownloadIn")
    file_no = required(node.file_qury_no, "fsDownloadIn.file_qury_no")
    found = await exchange_files.load_file(call.conn, call.req.fixmedins_code, file_no)
    if found is None:
        raise NotFound(f"文件查询号{file_no}不存在或不属于本机构")
    return Answer(None, raw=found[1])
