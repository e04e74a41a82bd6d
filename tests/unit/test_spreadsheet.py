"""The agency's CSV reports, opened in a spreadsheet: a text that would start a formula is
shown as text, and an amount stays a number the sheet can sum."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from gateway.jobs import clearing
from gateway.ops import spreadsheet


@pytest.mark.parametrize(
    "text",
    [
        '=HYPERLINK("http://x","点此")',
        "+SUM(1,1)",
        "-2+3",
        "@SUM(A1)",
        "\t=1+1",
        "\r=1+1",
        "=cmd|' /C calc'!A0",
    ],
)
def test_a_text_that_would_start_a_formula_is_written_as_text(text: str) -> None:
    buf = io.StringIO()
    spreadsheet.Writer(buf).writerow(["A", text])
    [row] = list(csv.reader(io.StringIO(buf.getvalue())))
    assert row == ["A", "'" + text]


@pytest.mark.parametrize("value", ["-12.50", "0.00", "+3", "1000", "YP0003", "清远市人民医院", ""])
def test_numbers_and_plain_texts_are_left_as_they_are(value: str) -> None:
    assert spreadsheet.cell(value) == value


def test_a_value_that_is_not_text_is_left_to_the_writer() -> None:
    assert spreadsheet.cell(7) == 7
    assert spreadsheet.cell(None) is None


def test_the_monthly_clearing_sheet_keeps_a_formula_out_and_negative_amounts_in() -> None:
    """An institution's name as the agency's reference data holds it goes into the sheet; a
    month of refunds (a negative total) must still be summed by it."""
    line = clearing.Line("11", "普通门诊", visits=2, medfee_sumamt=-1250, hifp_pay=-700)
    report = clearing.MonthlyReport(
        month="2026-06",
        begndate=dt.date(2026, 6, 1),
        enddate=dt.date(2026, 6, 30),
        institutions=[
            clearing.InstitutionReport(
                "H44180000001", '=HYPERLINK("http://x")', "441802", lines=[line], total=line
            )
        ],
    )
    rows = list(csv.DictReader(io.StringIO(clearing.to_csv(report))))
    assert [r["机构名称"] for r in rows] == ['\'=HYPERLINK("http://x")'] * 2
    assert [(r["实际费用总额"], r["统筹基金"]) for r in rows] == [("-12.50", "-7.00")] * 2


def test_a_line_break_inside_a_text_stays_inside_its_cell() -> None:
    """A carriage return or a line feed in a HIS's text is quoted, not a new row."""
    buf = io.StringIO()
    w = spreadsheet.Writer(buf)
    w.writerow(["YP0001\r整行", "1.00"])
    w.writerow(["YP0002\n整行", "2.00"])
    w.writerow(["YP0003", "3.00"])
    rows = list(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert rows == [["YP0001\r整行", "1.00"], ["YP0002\n整行", "2.00"], ["YP0003", "3.00"]]
