"""Reconciliation (3202) without a gateway: a detail row's refund flag against the centre's
state, the whole comparison's words, and the 9101 file's refusals (found from outside, tester
of the day-end file flow)."""

from __future__ import annotations

import base64

import pytest

from gateway.jobs import reconcile
from gateway.jobs.reconcile import DetailRow
from gateway.ledger.reconciliations import CentreRow, Totals
from gateway.protocol.errors import BadRequest

AMOUNTS = (79560, 29123, 1000)


def _centre(setl_id: str, *, refunded: bool) -> CentreRow:
    return CentreRow(setl_id, "MZ1", "441800000000000001", "MSG1", *AMOUNTS, refunded)


def _row(setl_id: str, flag: str, sign: int = 1) -> DetailRow:
    medfee, fund, acct = (sign * a for a in AMOUNTS)
    return DetailRow(setl_id, "MZ1", "441800000000000001", medfee, fund, acct, flag)


def _compared(row: DetailRow, *, refunded: bool) -> reconcile.ResultRow:
    [out] = reconcile.compare_details([row], [_centre(row.setl_id, refunded=refunded)])
    return out


def test_a_cancelled_settlement_listed_as_in_force_is_inconsistent() -> None:
    """Found from outside: with the request's flag 1, the centre's cancelled settlements listed
    as normal ones (flag 0, their amounts) read 对平 with an empty memo."""
    out = _compared(_row("S1", "0"), refunded=True)
    assert (out.stmt_rslt, out.refd_setl_flag) == (reconcile.INCONSISTENT, "1"), out
    assert "中心此结算已撤销" in out.memo and "正常结算" in out.memo, out.memo
    assert "登记退费" in out.memo, out.memo
    assert "金额不一致" not in out.memo, out.memo


def test_a_settlement_in_force_listed_as_refunded_is_inconsistent() -> None:
    out = _compared(_row("S1", "1"), refunded=False)
    assert (out.stmt_rslt, out.refd_setl_flag) == (reconcile.INCONSISTENT, "0"), out
    assert "中心此结算为正常结算" in out.memo and "退费" in out.memo, out.memo


def test_rows_that_agree_on_the_flag_balance() -> None:
    for flag, refunded in (("0", False), ("1", True)):
        out = _compared(_row("S1", flag), refunded=refunded)
        assert (out.stmt_rslt, out.memo) == (reconcile.BALANCED, ""), out


def test_a_refund_booked_negative_says_both_what_it_should_write_and_the_flag() -> None:
    """The sign convention is the same whichever the centre's state: a row flagged 1 is counted
    by its original (positive) amounts; one for a settlement in force is told that too."""
    refunded = _compared(_row("S1", "1", -1), refunded=True)
    assert refunded.stmt_rslt == reconcile.INCONSISTENT
    assert "退费标志为1的行请填写原结算的正数金额" in refunded.memo
    assert "中心此结算" not in refunded.memo, refunded.memo
    in_force = _compared(_row("S1", "1", -1), refunded=False)
    assert in_force.stmt_rslt == reconcile.INCONSISTENT
    assert "退费标志为1的行请填写原结算的正数金额" in in_force.memo, in_force.memo
    assert "中心此结算为正常结算" in in_force.memo, in_force.memo


def test_equal_totals_with_differing_rows_are_worded_as_the_rest() -> None:
    """Found from outside: "总额一致但有8笔明细不一致" alone, without the totals or a word of the
    result file (9102) that names them."""
    totals = Totals(6, 50000, 30000, 0, 20000)
    rslt, words = reconcile.compare_totals(totals, totals, with_cash=True, mismatched=8)
    assert rslt == reconcile.INCONSISTENT
    assert words.startswith("数据不一致："), words
    assert "6笔" in words and "500.00" in words and "现金支付200.00" in words, words
    assert "8笔明细不一致" in words and "9102" in words, words
    assert reconcile.compare_totals(totals, totals, with_cash=True)[0] == reconcile.BALANCED


def test_a_mismatch_names_the_figures_that_differ_and_by_how_much() -> None:
    """Found from outside: both sides' totals were given, and a fen's difference in one of
    them had to be found by eye."""
    centre = Totals(3, 140800, 35367, 105433, 0)
    rslt, words = reconcile.compare_totals(Totals(3, 140800, 35368, 105433, 0), centre)
    assert rslt == reconcile.INCONSISTENT
    assert words.endswith("差异：基金支付医药机构多0.01。请下载明细对账（3202）核对"), words
    _, words = reconcile.compare_totals(Totals(2, 130000, 35367, 94633, 0), centre)
    assert "差异：笔数医药机构少1笔，医疗费总额医药机构少108.00，个人账户医药机构少108.00" in words
    _, words = reconcile.compare_totals(
        Totals(3, 140800, 35367, 0, 100), Totals(3, 140800, 35367, 0, 0), with_cash=True
    )
    assert "差异：现金支付医药机构多1.00" in words and "9102" in words, words


def test_an_upload_that_is_not_a_zip_is_told_so() -> None:
    """Found from outside: the Base64 of "hello" was refused "第1行字段数不足，应为7列"."""
    with pytest.raises(BadRequest) as refused:
        reconcile.read_upload(base64.b64encode(b"hello").decode(), reconcile.FileLimits(), 1 << 20)
    assert "不是zip压缩包" in refused.value.err_msg, refused.value.err_msg


def test_a_short_line_names_the_columns_and_the_optional_flag() -> None:
    """Six columns are read (the flag came with later revisions); fewer are refused, the words
    saying the seventh may be left out."""
    six = "S1\tMZ1\t441800000000000001\t795.60\t291.23\t10.00\n"
    [row] = reconcile.read_detail_file(six.encode())
    assert row.refd_setl_flag == "0"
    with pytest.raises(BadRequest) as refused:
        reconcile.read_detail_file((six + "S2\tMZ2\n").encode())
    words = refused.value.err_msg
    assert "第2行" in words and "有2列" in words and "可省略" in words, words
