"""The monthly clearing report as text holds what its JSON holds (found from outside: manual
claims, deferred reimbursements and payouts were in `--json` only, and a month with nothing
printed nothing at all)."""

from __future__ import annotations

import datetime as dt

from gateway.jobs.clearing import (
    REBATCHED,
    InstitutionReport,
    ManualClaims,
    MonthlyReport,
    Payouts,
    Reimbursements,
    to_html,
    to_json,
    to_text,
)

BEGIN, END = dt.date(2026, 12, 1), dt.date(2026, 12, 31)


def test_an_empty_month_says_so() -> None:
    text = to_text(MonthlyReport("2026-05", dt.date(2026, 5, 1), dt.date(2026, 5, 31), []))
    assert text == [
        "费款所属期 2026-05（2026-05-01～2026-05-31）",
        "  本月没有结算、零星报销或目录更正",
    ]


def test_manual_claims_reimbursements_and_payouts_are_printed() -> None:
    hospital = InstitutionReport(
        "H44180000003",
        "演示医院",
        "441800",
        reimbursements=Reimbursements(claims=2, medfee_sumamt=30000, to_patients=12000),
        manual_claims=ManualClaims(claims=1, medfee_sumamt=120000, to_patients=50000),
    )
    payouts = Payouts(batches=2, batched_lines=7, batched=7944002, paid_lines=6, paid=4361794,
                      failed_lines=1, failed=3582208)  # fmt: skip
    text = "\n".join(to_text(MonthlyReport("2026-12", BEGIN, END, [hospital], payouts)))
    assert "H44180000003 演示医院: 0 人次, 申报金额 0.00" in text
    assert "  应急补结算（主动报）: 2 笔, 实际费用 300.00, 应付参保人 120.00" in text
    assert "  零星报销: 1 笔, 实际费用 1200.00, 应付参保人 500.00" in text
    assert (
        "本月拨付（全部支付批次，不分机构）: 2 批, 批入 7 笔 79440.02"
        f"（{REBATCHED}）, 已付 6 笔 43617.94, 失败 1 笔 35822.08" in text
    )


def test_a_month_not_ended_says_its_figures_still_change() -> None:
    """Found from outside: the running month's report printed figures with nothing to say so,
    while recording its clearing amounts is refused until it ends."""
    running = MonthlyReport("2026-12", BEGIN, END, [], ended=False)
    text = to_text(running)
    assert text[1] == "  注意：本月尚未结束，表中数字截至出表时，月末之后请重新出表再申报"
    assert "本月尚未结束" in to_html(running) and to_json(running)["ended"] is False
    ended = MonthlyReport("2026-11", dt.date(2026, 11, 1), dt.date(2026, 11, 30), [])
    assert "本月尚未结束" not in "\n".join(to_text(ended)) + to_html(ended)
