"""A request wrong in more than one way is refused for its first fault, in the order the
national input is read: field by field, and row by row where each row is applied as it is read
(2302, 3302), or where the ledger is read before the rest of the input (3202). HIS clients show
the first fault to the clerk, who corrects it and sends again."""

from __future__ import annotations

from tests.integration.conftest import Server
from tests.integration.his_client import refusal_words

HOSPITAL = "H44180000001"
RETIREE = "441800000000000002"
FUTURE = "2099-06-05 10:00:00"


async def test_a_registration_dated_in_the_future_is_refused_for_its_date_first(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    # The date is read before the visit number, which is missing too.
    message = refusal_words(
        await his.call(
            "2201",
            {
                "data": {
                    "psn_no": RETIREE,
                    "insutype": "310",
                    "begntime": FUTURE,
                    "mdtrt_cert_type": "01",
                    "mdtrt_cert_no": RETIREE,
                }
            },
        )
    )
    assert message.startswith("挂号时间begntime"), message
    assert "ipt_otp_no" not in message


async def test_an_admission_dated_in_the_future_is_refused_for_its_date_first(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    message = refusal_words(
        await his.call(
            "2401",
            {
                "mdtrtinfo": {
                    "psn_no": RETIREE,
                    "insutype": "310",
                    "begntime": FUTURE,
                    "mdtrt_cert_type": "01",
                    "mdtrt_cert_no": RETIREE,
                    "med_type": "11",  # not an inpatient med_type either
                }
            },
        )
    )
    assert message.startswith("入院时间begntime"), message


async def test_a_line_withdrawal_names_the_first_row_that_fails(server: Server) -> None:
    his = server.client(HOSPITAL)
    admitted = await his.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": RETIREE,
                "insutype": "310",
                "begntime": "2026-04-01 10:00:00",
                "mdtrt_cert_type": "01",
                "mdtrt_cert_no": RETIREE,
                "med_type": "21",
                "ipt_no": "ZY-ORDER-1",
            },
            "diseinfo": [],
        },
    )
    stay = admitted["result"]["mdtrt_id"]
    # Row 1 names no uploaded line; row 2 lacks psn_no. Row 1 is applied before row 2 is read.
    rows = [
        {"mdtrt_id": stay, "feedetl_sn": "NOPE", "psn_no": RETIREE},
        {"mdtrt_id": stay, "feedetl_sn": "2"},
    ]
    message = refusal_words(await his.call("2302", {"data": rows}))
    assert "费用明细流水号NOPE不存在或已结算，不能撤销" in message, message
    # The other way round, the unreadable row is named.
    message = refusal_words(await his.call("2302", {"data": rows[::-1]}))
    assert "psn_no" in message and "NOPE" not in message, message


async def test_a_mapping_revocation_names_the_first_row_that_fails(server: Server) -> None:
    his = server.client(HOSPITAL)
    rows = [
        {"fixmedins_hilist_id": "NOSUCH", "med_list_codg": "XX0001"},
        {"fixmedins_hilist_id": "NOSUCH2"},  # no med_list_codg
    ]
    message = refusal_words(await his.call("3302", {"data": rows}))
    assert "本机构目录NOSUCH与医保目录XX0001的有效对照不存在" in message, message
    message = refusal_words(await his.call("3302", {"data": rows[::-1]}))
    assert "med_list_codg" in message and "NOSUCH2" not in message, message


async def test_a_detail_reconciliation_names_a_missing_file_before_its_totals(
    server: Server,
) -> None:
    his = server.client(HOSPITAL)
    data = {
        "setl_optins": "441800",
        "stmt_begndate": "2026-03-01",
        "stmt_enddate": "2026-03-31",
        "file_qury_no": "NO-SUCH-FILE",
        # fixmedins_setl_cnt, medfee_sumamt, fund_pay_sumamt and cash_payamt missing
    }
    message = refusal_words(await his.call("3202", {"data": data}))
    assert "文件查询号NO-SUCH-FILE不存在或不属于本机构" in message, message
