"""The claim form (零星报销结算单): a manual claim with everything the agency prints for it.

The Guizhou guide's last step, 单据打印: the person, the institution where the patient was
treated, the dates and invoices, the bill's lines, the settlement's split (what each fund paid,
the personal account, the cash part) and what the agency owes back. The same gathering feeds the
console's claim page, its JSON and the printable page (`to_html`), which
`python -m gateway claims print ID --pdf FILE` prints with headless Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import asyncpg

from gateway.core.catalog import Snapshot
from gateway.core.money import cnt_text, fen_text, micro_text
from gateway.ledger import manual_claims as store
from gateway.ledger import persons, settlements
from gateway.ledger.manual_claims import Claim, Line
from gateway.protocol.errors import Conflict, Unavailable
from gateway.services.manual_claims import STATUS_NAMES, view

CERT_NAMES = {"01": "医保电子凭证", "02": "居民身份证", "03": "社会保障卡"}
KIND_NAMES = {"outpatient": "门诊", "inpatient": "住院"}
# The settlement's split as the form lists it: (field, name).
SPLIT = (
    ("medfee_sumamt", "医疗费总额"),
    ("fulamt_ownpay_amt", "全自费金额"),
    ("overlmt_selfpay", "超限价自费"),
    ("preselfpay_amt", "先行自付金额"),
    ("inscp_scp_amt", "符合政策范围金额"),
    ("act_pay_dedc", "实际支付起付线"),
    ("hifp_pay", "基本医疗保险统筹基金支出"),
    ("cvlserv_pay", "公务员医疗补助"),
    ("hifes_pay", "补充医疗保险"),
    ("hifmi_pay", "大病保险"),
    ("hifob_pay", "大额医疗补助"),
    ("maf_pay", "医疗救助"),
    ("oth_pay", "其他支出"),
    ("fund_pay_sumamt", "基金支付总额"),
    ("acct_pay", "个人账户支出"),
    ("psn_cash_pay", "个人现金支付"),
)
PRINTABLE = ("settled", "batch_reviewed")


@dataclass(slots=True)
class ClaimForm:
    claim: Claim
    psn_name: str
    certno: str  # masked
    fixmedins_name: str
    lines: list[Line]
    amounts: dict[str, int] = field(default_factory=dict)  # the settlement's, when settled
    funds: list[tuple[str, int]] = field(default_factory=list)  # (fund name, fen)
    payout: dict[str, Any] | None = None  # the owed line: state, batch


def _masked(certno: str) -> str:
    return certno if len(certno) <= 8 else f"{certno[:4]}{'*' * (len(certno) - 8)}{certno[-4:]}"


async def gather(conn: asyncpg.Connection, snapshot: Snapshot, claim_no: str) -> ClaimForm:
    """The claim, its person, institution (named from the reference `snapshot`: a split
    ledger's claim lives apart from the institutions), lines and, once settled, its settlement
    and payout."""
    claim = await store.get(conn, claim_no)
    institution = snapshot.institution(claim.fixmedins_code)
    person, _ = await persons.read(conn, claim.psn_no)
    form = ClaimForm(
        claim=claim,
        psn_name=person.psn_name,
        certno=_masked(person.certno),
        fixmedins_name=claim.fixmedins_code if institution is None else institution.fixmedins_name,
        lines=await store.lines(conn, claim_no),
    )
    if claim.setl_id is not None:
        [rec] = await settlements.find(conn, claim.fixmedins_code, setl_id=claim.setl_id)
        form.amounts = rec.amounts
        form.funds = [(f.fund_pay_type_name, f.fund_payamt) for f in rec.funds]
        form.payout = await store.payout_of(conn, claim_no)
    return form


def as_json(form: ClaimForm) -> dict[str, Any]:
    """The form as the console's API answers it: amounts as decimal text."""
    return {
        **view(form.claim),
        "psn_name": form.psn_name,
        "certno": form.certno,
        "fixmedins_name": form.fixmedins_name,
        "lines": [
            {
                "feedetl_sn": ln.feedetl_sn,
                "medins_list_codg": ln.medins_list_codg,
                "pric": micro_text(ln.pric_micro),
                "cnt": cnt_text(ln.cnt),
                "det_item_fee_sumamt": fen_text(ln.amount_fen),
                "fee_ocur_time": ln.fee_ocur_time.isoformat(sep=" "),
            }
            for ln in form.lines
        ],
        "split": {k: fen_text(form.amounts[k]) for k, _ in SPLIT if k in form.amounts},
        "funds": [{"name": n, "amount": fen_text(fen)} for n, fen in form.funds],
        "payout": form.payout,
    }


_CSS = """
body { font-family: "Noto Sans CJK SC", "Noto Sans SC", sans-serif; margin: 24px; color: #000; }
h1 { font-size: 20px; text-align: center; margin: 0 0 4px; }
.sub { text-align: center; font-size: 12px; margin: 0 0 12px; }
h2 { font-size: 14px; margin: 14px 0 4px; }
table { border-collapse: collapse; width: 100%; font-size: 12px; }
th, td { border: 1px solid #000; padding: 3px 5px; text-align: left; }
td.n, th.n { text-align: right; } th { background: #eee; }
.owed { font-size: 15px; font-weight: bold; margin: 12px 0; }
.sign { margin-top: 28px; font-size: 12px; display: flex; justify-content: space-between; }
@media print { body { margin: 0; } @page { size: A4; margin: 15mm; } }
"""
# The console serves the printable page under its Content-Security-Policy: this style's hash.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()


def to_html(form: ClaimForm) -> str:
    """The printable 零星报销结算单 of a settled claim."""
    c = form.claim
    if c.status not in PRINTABLE:
        raise Conflict(
            f"零星报销{c.claim_no}当前状态为{STATUS_NAMES.get(c.status, c.status)}，结算后才能打印结算单"
        )
    e = escape
    when = f"{c.begntime:%Y-%m-%d %H:%M}" + (f" 至 {c.endtime:%Y-%m-%d %H:%M}" if c.endtime else "")
    head = [
        ("受理号", c.claim_no),
        ("结算ID", c.setl_id or ""),
        ("姓名", form.psn_name),
        ("人员编号", c.psn_no),
        ("证件号码", form.certno),
        ("就诊机构", f"{form.fixmedins_name}（{c.fixmedins_code}）"),
        ("类别", f"{KIND_NAMES.get(c.kind, c.kind)} · 医疗类别{c.med_type}"),
        ("就诊（住院）时间", when),
        ("发票号", "、".join(c.invoice_nos)),
        ("使用个人账户", "是" if c.acct_used else "否"),
    ]
    rows = "".join(
        f"<tr><th>{e(head[i][0])}</th><td>{e(head[i][1])}</td>"
        f"<th>{e(head[i + 1][0])}</th><td>{e(head[i + 1][1])}</td></tr>"
        for i in range(0, len(head), 2)
    )
    lines = "".join(
        f"<tr><td>{e(ln.feedetl_sn)}</td><td>{e(ln.medins_list_codg)}</td>"
        f'<td class="n">{micro_text(ln.pric_micro)}</td><td class="n">{cnt_text(ln.cnt)}</td>'
        f'<td class="n">{fen_text(ln.amount_fen)}</td><td>{ln.fee_ocur_time:%Y-%m-%d %H:%M}</td></tr>'
        for ln in form.lines
    )
    split = "".join(
        f'<tr><td>{e(name)}</td><td class="n">{fen_text(form.amounts[k])}</td></tr>'
        for k, name in SPLIT
        if k in form.amounts
    )
    funds = "".join(
        f'<tr><td>{e(name)}</td><td class="n">{fen_text(fen)}</td></tr>' for name, fen in form.funds
    )
    owed = c.reimbursement_fen or 0
    signers = [
        ("登记", c.registered_by),
        ("录入", c.entered_by),
        ("审核", c.reviewed_by),
        ("结算", c.settled_by),
        ("结算审核", c.batch_reviewed_by),
    ]
    sign = "".join(f"<span>{e(k)}：{e(v or '')}</span>" for k, v in signers)
    body = (
        "<h1>医疗费用零星报销结算单</h1>"
        f'<p class="sub">受理号 {e(c.claim_no)} · 状态 {e(STATUS_NAMES.get(c.status, c.status))}</p>'
        f'<table id="who">{rows}</table>'
        "<h2>费用明细</h2>"
        '<table id="lines"><thead><tr><th>流水号</th><th>目录编码</th><th class="n">单价</th>'
        '<th class="n">数量</th><th class="n">金额</th><th>发生时间</th></tr></thead>'
        f"<tbody>{lines}</tbody></table>"
        '<h2>结算分割</h2><table id="split"><tbody>'
        f"{split}</tbody></table>"
        '<h2>基金支付明细</h2><table id="funds"><tbody>'
        f"{funds or '<tr><td colspan=2>无</td></tr>'}</tbody></table>"
        f'<p class="owed" id="owed">应支付参保人（报销金额）：{fen_text(owed)} 元'
        f"（医疗费总额 {fen_text(c.medfee_sumamt or 0)} 元 − 个人现金支付"
        f" {fen_text(form.amounts.get('psn_cash_pay', 0))} 元）</p>"
        f'<div class="sign">{sign}</div>'
    )
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        f"<title>零星报销结算单 {e(c.claim_no)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )


def chromium() -> str | None:
    """The headless browser that prints the form, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def print_pdf(html: str, pdf: Path, *, timeout_s: float = 60.0) -> None:
    """The page printed to PDF by headless Chromium (its own throw-away profile). Blocking: the
    CLI calls it outside its event loop."""
    browser = chromium()
    if browser is None:
        raise Unavailable("未安装Chromium，无法打印PDF（make system-deps安装）")
    with tempfile.TemporaryDirectory(prefix="claim-form-") as work:
        page = Path(work) / "form.html"
        page.write_text(html, encoding="utf-8")
        try:
            done = subprocess.run(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-pdf-header-footer",
                    f"--user-data-dir={Path(work) / 'profile'}",
                    f"--print-to-pdf={pdf.resolve()}",
                    page.as_uri(),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise Unavailable("Chromium打印PDF超时") from None
        if done.returncode != 0 or not pdf.exists():
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise Unavailable(f"Chromium打印PDF失败：{tail[0]}")
