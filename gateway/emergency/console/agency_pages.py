"""The agency's console pages: claims, a claim, payout batches, a batch. Server-rendered, no
scripts, every value escaped; each page offers only the steps its viewer's role may take in the
state the claim or batch is in (the services check again whatever is posted)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote

from gateway.emergency.console import pages

CLAIM_STATES = {
    "registered": "已登记",
    "lines_entered": "明细已录入",
    "reviewed": "明细已审核",
    "settled": "已结算",
    "batch_reviewed": "结算已审核",
    "refused": "已拒付",
    "withdrawn": "已撤回",
}
OWED_STATES = {
    "owed": "待支付",
    "batched": "已制单",
    "paid": "已支付",
    "failed": "支付失败（累计）",
    "withdrawn": "已撤回（结算已撤销）",
}
SPLIT_NAMES = {
    "medfee_sumamt": "医疗费总额",
    "fulamt_ownpay_amt": "全自费金额",
    "overlmt_selfpay": "超限价自费",
    "preselfpay_amt": "先行自付金额",
    "inscp_scp_amt": "符合政策范围金额",
    "act_pay_dedc": "实际支付起付线",
    "hifp_pay": "统筹基金支出",
    "cvlserv_pay": "公务员医疗补助",
    "hifes_pay": "补充医疗保险",
    "hifmi_pay": "大病保险",
    "hifob_pay": "大额医疗补助",
    "maf_pay": "医疗救助",
    "oth_pay": "其他支出",
    "fund_pay_sumamt": "基金支付总额",
    "acct_pay": "个人账户支出",
    "psn_cash_pay": "个人现金支付",
}


@dataclass(frozen=True, slots=True)
class Chrome:
    """What every page shows around its content: who, the nav, the flash, the form token."""

    login: str
    role: str
    role_name: str
    csrf: str
    message: str
    error: str
    back: str  # this page's path: a refused form comes back here


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _form(c: Chrome, action: str, inner: str, ident: str, *, upload: bool = False) -> str:
    enctype = ' enctype="multipart/form-data"' if upload else ""
    return (
        f'<form method="post" action="{action}" id="{ident}"{enctype}>'
        f'<input type="hidden" name="csrf" value="{_e(c.csrf)}">'
        f'<input type="hidden" name="back" value="{_e(c.back)}">{inner}</form>'
    )


def _reject_form(c: Chrome, batch_and_level: str) -> str:
    """A batch's return at one level, with its reason."""
    return _form(
        c,
        "/console/payouts/approve",
        batch_and_level
        + '<input type="text" name="reject" id="reject-reason" placeholder="退回原因（必填）"> '
        '<button type="submit" id="reject">退回</button>',
        "reject-form",
    )


def _frame(c: Chrome, title: str, body: str) -> str:
    head = (
        '<form class="inline who" method="post" action="/console/logout">'
        f'<input type="hidden" name="csrf" value="{_e(c.csrf)}">'
        f"{_e(c.login)}（{_e(c.role_name)}） "
        '<button type="submit" id="logout">退出</button></form>'
        '<p id="nav"><a href="/console">应急控制台</a> · <a href="/console/claims">零星报销</a>'
        ' · <a href="/console/payouts">拨付</a></p>'
        f"<h1>{_e(title)}</h1>"
    )
    if c.message:
        head += f'<p class="flash ok" id="message">{_e(c.message)}</p>'
    if c.error:
        head += f'<p class="flash err" id="error">{_e(c.error)}</p>'
    return pages._page(title, head + body)


def _table(ident: str, headers: list[str], rows: list[str], empty: str = "无") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}">{_e(empty)}</td></tr>'
    return f'<table id="{ident}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------- claims


def claims(c: Chrome, found: list[dict[str, Any]], status: str | None) -> str:
    filters = " · ".join(
        ['<a href="/console/claims">全部</a>']
        + [
            f'<a href="/console/claims?status={s}">{_e(n)}</a>'
            if s != status
            else f"<b>{_e(n)}</b>"
            for s, n in CLAIM_STATES.items()
        ]
    )
    rows = [
        f'<tr class="claim" data-claim="{_e(v["claim_no"])}" data-status="{_e(v["status"])}">'
        f'<td><a href="/console/claims/{quote(v["claim_no"])}">{_e(v["claim_no"])}</a></td>'
        f"<td>{_e(v['psn_no'])}</td><td>{_e(v['fixmedins_code'])}</td><td>{_e(v['med_type'])}</td>"
        f"<td>{_e(pages.local_time(v['begntime']))}</td><td>{_e(v['status_name'])}</td>"
        f"<td>{_e(v['medfee_sumamt'] or '')}</td><td>{_e(v['reimbursement'] or '')}</td></tr>"
        for v in found
    ]
    parts = [
        f"<p>状态：{filters}</p>",
        _table(
            "claims",
            [
                "受理号",
                "人员编号",
                "就诊机构",
                "医疗类别",
                "就诊时间",
                "状态",
                "医疗费总额",
                "应报销",
            ],
            rows,
            "没有零星报销",
        ),
    ]
    if c.role == "clerk":
        parts.append(
            "<h2>零星报销登记</h2>"
            + _form(
                c,
                "/console/claims/register",
                '<p>证件类型 <select name="cert_type" id="cert_type">'
                '<option value="01">01 医保电子凭证</option><option value="02">02 居民身份证</option>'
                '<option value="03">03 社会保障卡</option></select> '
                '证件号码 <input type="text" name="cert_no" id="cert_no"> '
                '就诊机构编号 <input type="text" name="fixmedins_code" id="fixmedins_code"></p>'
                '<p>医疗类别 <input type="text" name="med_type" id="med_type" placeholder="11 普通门诊 / 21 普通住院"> '
                '就诊（入院）时间 <input type="text" name="begntime" id="begntime" placeholder="2026-06-01 08:30:00"> '
                '出院时间 <input type="text" name="endtime" id="endtime" placeholder="住院必填"></p>'
                '<p>病种编码 <input type="text" name="dise_codg" id="dise_codg"> '
                '发票号 <input type="text" name="invoice_nos" id="invoice_nos" placeholder="多张以逗号分隔"> '
                '<label><input type="checkbox" name="acct_used" value="1" id="acct_used"> 使用个人账户</label> '
                '<button type="submit" id="register">登记</button></p>',
                "register-form",
            )
        )
    settled = [v for v in found if v["status"] == "settled"]
    if c.role == "reviewer" and settled:
        boxes = "".join(
            f'<label class="pick"><input type="checkbox" name="claim_nos" value="{_e(v["claim_no"])}">'
            f" {_e(v['claim_no'])} 应报销{_e(v['reimbursement'])}元</label><br>"
            for v in settled
        )
        parts.append(
            "<h2>结算审核（批量）</h2>"
            + _form(
                c,
                "/console/claims/batch-review",
                boxes + '<button type="submit" id="batch-review-many">结算审核通过</button>',
                "batch-review-form",
            )
        )
    return _frame(c, "零星报销", "".join(parts))


def claim(c: Chrome, v: dict[str, Any]) -> str:
    no = v["claim_no"]
    status = v["status"]
    facts = [
        ("受理号", no),
        ("状态", v["status_name"]),
        ("姓名", v["psn_name"]),
        ("人员编号", v["psn_no"]),
        ("证件号码", v["certno"]),
        ("就诊机构", f"{v['fixmedins_name']}（{v['fixmedins_code']}）"),
        ("医疗类别", v["med_type"]),
        ("就诊（入院）时间", str(v["begntime"]).replace("T", " ")),
        ("出院时间", str(v["endtime"] or "").replace("T", " ")),
        ("发票号", "、".join(v["invoice_nos"])),
        ("使用个人账户", "是" if v["acct_used"] else "否"),
        (
            "登记 / 录入 / 审核",
            f"{v['registered_by']} / {v['entered_by'] or ''} / {v['reviewed_by'] or ''}",
        ),
        ("结算 / 结算审核", f"{v['settled_by'] or ''} / {v['batch_reviewed_by'] or ''}"),
        ("结算ID", v["setl_id"] or ""),
        ("医疗费总额", v["medfee_sumamt"] or ""),
        ("应报销", v["reimbursement"] or ""),
        ("拒付 / 撤回原因", v["closed_reason"] or ""),
    ]
    parts = [
        '<table id="claim"><tbody>'
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(val)}</td></tr>" for k, val in facts)
        + "</tbody></table>",
        "<h2>费用明细</h2>",
        _table(
            "lines",
            ["流水号", "目录编码", "单价", "数量", "金额", "发生时间"],
            [
                f'<tr class="line"><td>{_e(ln["feedetl_sn"])}</td><td>{_e(ln["medins_list_codg"])}</td>'
                f"<td>{_e(ln['pric'])}</td><td>{_e(ln['cnt'])}</td>"
                f"<td>{_e(ln['det_item_fee_sumamt'])}</td><td>{_e(ln['fee_ocur_time'])}</td></tr>"
                for ln in v["lines"]
            ],
            "未录入明细",
        ),
    ]
    if v["split"]:
        parts.append("<h2>结算分割</h2>")
        parts.append(
            _table(
                "split",
                ["项目", "金额（元）"],
                [
                    f'<tr data-field="{_e(k)}"><td>{_e(SPLIT_NAMES.get(k, k))}</td><td>{_e(a)}</td></tr>'
                    for k, a in v["split"].items()
                ],
            )
        )
    if v["payout"]:
        p = v["payout"]
        parts.append(
            f'<p id="payout">支付状态：{_e(OWED_STATES.get(p["status"], p["status"]))}'
            + (f"，支付批次 {_e(p['batch_no'])}" if p.get("batch_no") else "")
            + (f"（银行：{_e(p['bank_reason'])}）" if p.get("bank_reason") else "")
            + "</p>"
        )
    hidden = f'<input type="hidden" name="claim_no" value="{_e(no)}">'
    actions = []
    if c.role == "clerk" and status in ("registered", "lines_entered"):
        actions.append(
            "<h2>明细录入</h2><p>每行一条：流水号|目录编码|单价|数量|金额|发生时间</p>"
            + _form(
                c,
                "/console/claims/lines",
                hidden + '<textarea name="lines" id="lines-text" rows="6" cols="90"></textarea><br>'
                '<button type="submit" id="enter-lines">保存明细</button>',
                "lines-form",
            )
        )
    if c.role == "reviewer" and status == "lines_entered":
        actions.append(
            "<h2>明细审核</h2>"
            + _form(
                c,
                "/console/claims/review",
                hidden + '<button type="submit" id="review">审核通过</button>',
                "review-form",
            )
            + _form(
                c,
                "/console/claims/review",
                hidden
                + '<input type="text" name="refuse" id="refuse-reason" placeholder="拒付原因（必填）"> '
                '<button type="submit" id="refuse">拒付</button>',
                "refuse-form",
            )
        )
    if c.role == "clerk" and status == "reviewed":
        actions.append(
            "<h2>结算</h2>"
            + _form(
                c,
                "/console/claims/settle",
                hidden + '<button type="submit" id="settle">结算</button>',
                "settle-form",
            )
        )
    if c.role == "reviewer" and status == "settled":
        actions.append(
            "<h2>结算审核</h2>"
            + _form(
                c,
                "/console/claims/batch-review",
                f'<input type="hidden" name="claim_nos" value="{_e(no)}">'
                '<button type="submit" id="batch-review">结算审核通过</button>',
                "batch-review-form",
            )
        )
    if c.role == "clerk" and status in ("registered", "lines_entered", "reviewed"):
        actions.append(
            "<h2>撤回</h2>"
            + _form(
                c,
                "/console/claims/withdraw",
                hidden
                + '<input type="text" name="reason" id="withdraw-reason" placeholder="撤回原因（必填）"> '
                '<button type="submit" id="withdraw">撤回</button>',
                "withdraw-form",
            )
        )
    if status in ("settled", "batch_reviewed"):
        actions.append(
            f'<p><a id="print" href="/console/claims/{quote(no)}/form">打印零星报销结算单</a></p>'
        )
    return _frame(c, f"零星报销 {no}", "".join(parts + actions))


# --------------------------------------------------------------------------------- payouts


def payouts(c: Chrome, overview: Mapping[str, Any]) -> str:
    totals = overview["totals"]
    parts = [
        "<h2>应付款项</h2>",
        _table(
            "owed-totals",
            ["状态", "笔数", "金额（元）"],
            [
                f'<tr data-state="{_e(s)}"><td>{_e(OWED_STATES.get(s, s))}</td>'
                f"<td>{int(t['count'])}</td><td>{_e(t['amount'])}</td></tr>"
                for s, t in totals.items()
            ],
        ),
    ]
    if overview["without_account"]:
        parts.append(
            '<p id="without-account">待支付但未登记收款账户或需更正收款账户：'
            + _e("、".join(overview["without_account"]))
            + "</p>"
        )
    if c.role == "clerk":
        parts.append(
            "<h2>收款账户登记</h2>"
            + _form(
                c,
                "/console/payouts/account",
                '人员编号 <input type="text" name="psn_no" id="psn_no"> '
                '开户行行号 <input type="text" name="bank_code" id="bank_code"> '
                '开户行 <input type="text" name="bank_name" id="bank_name"><br>'
                '账号 <input type="text" name="account_no" id="account_no"> '
                '户名 <input type="text" name="holder" id="holder"> '
                '原因 <input type="text" name="reason" id="account-reason" placeholder="必填"> '
                '<button type="submit" id="set-account">保存</button>',
                "account-form",
            )
            + "<h2>银行报盘制单</h2>"
            + _form(
                c,
                "/console/payouts/batch",
                '每批笔数 <input type="text" name="limit" id="limit" placeholder="不填为全部"> '
                '来源 <select name="source" id="source"><option value="">全部</option>'
                '<option value="manual">零星报销</option><option value="deferred">主动报</option>'
                '<option value="clearing">定点机构月结算（单独制单）</option></select> <button type="submit" id="make-batch">制单</button>',
                "batch-form",
            )
        )
    parts.append("<h2>支付批次</h2>")
    parts.append(
        _table(
            "batches",
            ["支付批次号", "状态", "笔数", "金额（元）", "制单人", "制单时间"],
            [
                f'<tr class="batch" data-batch="{_e(b["batch_no"])}" data-status="{_e(b["status"])}">'
                f'<td><a href="/console/payouts/{quote(b["batch_no"])}">{_e(b["batch_no"])}</a></td>'
                f"<td>{_e(b['status_name'])}</td><td>{int(b['count'])}</td><td>{_e(b['total'])}</td>"
                f"<td>{_e(b['created_by'])}</td><td>{_e(pages.local_time(b['created_at']))}</td></tr>"
                for b in overview["batches"]
            ],
            "没有支付批次",
        )
    )
    return _frame(c, "拨付", "".join(parts))


def batch(c: Chrome, v: Mapping[str, Any], levels: Mapping[int, str]) -> str:
    no, status = v["batch_no"], v["status"]
    parts = [
        f'<p id="batch" data-status="{_e(status)}">支付批次 {_e(no)}：{_e(v["status_name"])}，'
        f"{int(v['count'])}笔，{_e(v['total'])}元；制单 {_e(v['created_by'])}"
        f" {_e(pages.local_time(v['created_at']))}</p>",
        "<h2>审批</h2>",
        _table(
            "approvals",
            ["级别", "审批人", "结果", "原因", "时间"],
            [
                f'<tr class="approval"><td>{_e(a["name"])}</td><td>{_e(a["operator"])}</td>'
                f"<td>{'通过' if a['decision'] == 'approved' else '退回'}</td>"
                f"<td>{_e(a['reason'])}</td><td>{_e(pages.local_time(a['at']))}</td></tr>"
                for a in v["approvals"]
            ],
            "尚未审批",
        ),
    ]
    hidden = f'<input type="hidden" name="batch_no" value="{_e(no)}">'
    done = len(v["approvals"])
    if c.role == "approver" and status == "pending" and done < len(levels):
        level = done + 1
        step = f'<input type="hidden" name="level" value="{level}">'
        parts.append(
            f"<h2>{_e(levels[level])}</h2>"
            + _form(
                c,
                "/console/payouts/approve",
                hidden
                + step
                + f'<button type="submit" id="approve">{_e(levels[level])}通过</button>',
                "approve-form",
            )
            + _reject_form(c, hidden + step)
        )
    mine = [a for a in v["approvals"] if a["operator"] == c.login]
    if c.role == "approver" and status == "approved" and mine:
        # Approved and not yet sent to the bank: its approvers may still return it.
        step = f'<input type="hidden" name="level" value="{mine[0]["level"]}">'
        parts.append("<h2>撤回审批并退回（尚未报盘）</h2>" + _reject_form(c, hidden + step))
    if c.role == "clerk" and status in ("approved", "exported", "returned"):
        label = "报盘（下载银行支付文件）" if status == "approved" else "再次下载银行支付文件"
        parts.append(
            "<h2>银行报盘</h2>"
            + _form(
                c,
                "/console/payouts/export",
                hidden + f'<button type="submit" id="export">{_e(label)}</button>',
                "export-form",
            )
        )
    if c.role == "clerk" and status == "exported":
        parts.append(
            "<h2>银行回盘处理</h2>"
            + _form(
                c,
                "/console/payouts/return",
                hidden + '<input type="file" name="file" id="return-file"> '
                '<button type="submit" id="import-return">导入回盘文件</button>',
                "return-form",
                upload=True,
            )
        )
    parts.append("<h2>明细</h2>")
    parts.append(
        _table(
            "items",
            ["序号", "人员编号", "户名", "开户行行号", "账号", "金额（元）", "状态", "银行说明"],
            [
                f'<tr class="item" data-status="{_e(i["status"])}"><td>{int(i["seq"])}</td>'
                f"<td>{_e(i['psn_no'])}</td><td>{_e(i['holder'])}</td><td>{_e(i['bank_code'])}</td>"
                f"<td>{_e(i['account_no'])}</td><td>{_e(i['amount'])}</td>"
                f"<td>{_e(ITEM_STATES.get(i['status'], i['status']))}</td><td>{_e(i['bank_reason'])}</td></tr>"
                for i in v["items"][:SHOWN_ITEMS]
            ],
        )
    )
    if len(v["items"]) > SHOWN_ITEMS:
        parts.append(
            f"<p>仅显示前{SHOWN_ITEMS}笔，共{len(v['items'])}笔（完整明细见报盘文件）。</p>"
        )
    return _frame(c, f"支付批次 {no}", "".join(parts))


SHOWN_ITEMS = 1000  # a batch's page lists this many items; the bank file has them all
ITEM_STATES = {"pending": "待支付", "paid": "已支付", "failed": "支付失败", "released": "已释放"}
