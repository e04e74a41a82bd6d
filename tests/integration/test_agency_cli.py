"""`python -m gateway claims …` and `payouts …` through `main`: a claim from registration to
its payment, refusals as Chinese messages and exit 2, account numbers masked."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app.cli import main
from gateway.app.server import Settings, prepare_database
from gateway.services import claim_form, manual_claims
from tests.integration.agency_helpers import HOSPITAL, agency_ledger, bank_answers, settled_claim
from tests.integration.emergency_helpers import BIG_LINES

ACCOUNT = "6222020200000000011"


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_claim_to_payment_through_the_cli(
    new_database: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = await new_database("agencycli")
    await prepare_database(Settings(dsn))
    db = ("--database-url", dsn)

    async def ok(*argv: str) -> Any:
        code, out, err = await _cli(capsys, *argv, *db, "--json")
        assert code == 0, err
        return json.loads(out)

    claim = await ok(
        "claims", "register", "--cert-type", "02", "--cert-no", "441802199001011234",
        "--institution", HOSPITAL, "--med-type", "11", "--begntime", "2026-06-03 08:30:00",
        "--invoice", "FP-CLI-1", "--operator", "clerk1",
    )  # fmt: skip
    claim_no = claim["claim_no"]
    assert claim["status"] == "registered" and claim["psn_no"] == "441800000000000001"
    # A stay's times with offsets, as a clerk may paste them (found from outside: a
    # traceback): taken as the local times they stand for.
    stay = await ok(
        "claims", "register", "--cert-type", "02", "--cert-no", "441802199001011234",
        "--institution", HOSPITAL, "--med-type", "21", "--begntime", "2026-06-10T09:00:00+08:00",
        "--endtime", "2026-06-12T01:00:00Z", "--invoice", "FP-CLI-TZ", "--operator", "clerk1",
    )  # fmt: skip
    assert stay["status"] == "registered"
    code, _, err = await _cli(
        capsys, "claims", "register", "--cert-type", "02", "--cert-no", "441802199001011234",
        "--institution", HOSPITAL, "--med-type", "11", "--begntime", "2026-06-10 25:00",
        "--invoice", "FP-CLI-BAD", "--operator", "clerk1", *db,
    )  # fmt: skip
    assert code == 2 and "不是有效的时间" in err and "Traceback" not in err
    await ok("claims", "withdraw", stay["claim_no"], "--reason", "演练", "--operator", "clerk1")
    rows = [
        {**ln, "fee_ocur_time": "2026-06-03 08:40:00", "pric": ln["pric"], "cnt": ln["cnt"]}
        for ln in BIG_LINES
    ]
    # A file that is not there, or not UTF-8 (a GBK export), in words: found from outside, the
    # first was "无法连接数据库", the second a traceback.
    code, _, err = await _cli(
        capsys, "claims", "lines", claim_no, "--file", str(tmp_path / "none.json"),
        "--operator", "clerk1", *db,
    )  # fmt: skip
    assert code == 2 and f"文件{tmp_path / 'none.json'}无法读写" in err
    gbk = tmp_path / "gbk.txt"
    await asyncio.to_thread(
        gbk.write_bytes, "1|ZL0001|25|1|25.00|2026-06-03 08:40:00 诊查费".encode("gbk")
    )
    code, _, err = await _cli(
        capsys, "claims", "lines", claim_no, "--file", str(gbk), "--operator", "clerk1", *db
    )
    assert code == 2 and "不是UTF-8编码" in err and "Traceback" not in err
    code, _, err = await _cli(
        capsys, "clearing", "monthly", "--month", "2026-06", "--csv",
        str(tmp_path / "no-such-dir" / "x.csv"), *db,
    )  # fmt: skip
    assert code == 2 and "无法读写" in err
    lines_file = tmp_path / "lines.json"
    await asyncio.to_thread(lines_file.write_text, json.dumps(rows), encoding="utf-8")
    await ok("claims", "lines", claim_no, "--file", str(lines_file), "--operator", "clerk1")
    code, _, err = await _cli(capsys, "claims", "review", claim_no, "--operator", "clerk1", *db)
    assert code == 2 and "不能审核本人经办的报销" in err
    await ok("claims", "review", claim_no, "--operator", "reviewer1")
    settled = await ok("claims", "settle", claim_no, "--operator", "clerk2")
    assert settled["status"] == "settled" and settled["setl_id"]
    [reviewed] = await ok("claims", "batch-review", claim_no, "--operator", "reviewer2")
    owed = reviewed["reimbursement"]
    assert owed != "0.00"
    listed = await ok("claims", "list", "--status", "batch_reviewed")
    assert [c["claim_no"] for c in listed] == [claim_no]

    code, _, err = await _cli(capsys, "payouts", "batch", "--operator", "maker", *db)
    assert code == 2 and "未登记收款账户" in err
    shown = await ok(
        "payouts", "account", "441800000000000001", "--bank-code", "102100000001",
        "--bank-name", "工商银行", "--account-no", ACCOUNT, "--holder", "演示职工甲",
        "--reason", "参保人申请", "--operator", "clerk1",
    )  # fmt: skip
    assert shown["account_no"] == "6222***********0011"
    assert [o["amount"] for o in await ok("payouts", "owed")] == [owed]
    batch = await ok("payouts", "batch", "--operator", "maker")
    batch_no = batch["batch_no"]
    assert (batch["count"], batch["total"]) == (1, owed)
    code, _, err = await _cli(
        capsys, "payouts", "approve", batch_no, "--level", "1", "--operator", "maker", *db
    )
    assert code == 2 and "不能审批本人制作的支付批次" in err
    code, _, err = await _cli(
        capsys, "payouts", "approve", batch_no, "--level", "3", "--operator", "a3", *db
    )
    assert code == 2 and "须先完成初审" in err
    for level in range(1, 5):
        view = await ok(
            "payouts", "approve", batch_no, "--level", str(level), "--operator", f"a{level}"
        )
    assert view["status"] == "approved" and len(view["approvals"]) == 4
    out = await ok("payouts", "export", batch_no, "--out", str(tmp_path), "--operator", "maker")
    payment = await asyncio.to_thread(Path(out["file"]).read_bytes)
    assert ACCOUNT.encode() in payment
    answer = tmp_path / "return.txt"
    await asyncio.to_thread(answer.write_bytes, bank_answers(payment, {}))
    done = await ok("payouts", "import-return", str(answer), "--operator", "cashier")
    assert (done["paid_count"], done["paid"], done["failed_count"]) == (1, owed, 0)
    again = await ok("payouts", "import-return", str(answer), "--operator", "cashier")
    assert again["again"] is True
    await asyncio.to_thread(answer.write_bytes, bank_answers(payment, {}).replace(b"|S|", b"|F|"))
    code, _, err = await _cli(capsys, "payouts", "import-return", str(answer), *db)
    assert code == 2 and "整批拒绝导入" in err
    code, text, _ = await _cli(capsys, "payouts", "show", batch_no, *db)
    assert code == 0 and "已回盘" in text and ACCOUNT not in text and "6222***********0011" in text
    assert [o["status"] for o in await ok("payouts", "owed")] == ["paid"]


async def test_the_claim_form_printed_to_pdf(
    new_database: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """单据打印: `claims print ID --pdf FILE` writes the settled claim's form; a claim not yet
    settled has none to print."""
    async with agency_ledger(new_database) as ledger:
        claim = await settled_claim(ledger, "441800000000000001", "2026-06-03", BIG_LINES, "FP-P1")
        async with ledger.pool.acquire() as conn:
            registered = await manual_claims.register(
                conn,
                ledger.snapshot,
                manual_claims.Registration(
                    cert_type="01",
                    cert_no="441800000000000002",
                    fixmedins_code=HOSPITAL,
                    med_type="11",
                    begntime=dt.datetime(2026, 6, 4, 9),
                    invoice_nos=("FP-P2",),
                ),
                "clerk1",
                dt.datetime.now(),
            )
        db = ("--database-url", ledger.dsn)
        html, pdf = tmp_path / "form.html", tmp_path / "form.pdf"
        code, _, err = await _cli(
            capsys, "claims", "print", claim.claim_no, "--html", str(html), *db
        )
        assert code == 0, err
        page = html.read_text(encoding="utf-8")
        assert claim.reimbursement_fen
        owed = f"{claim.reimbursement_fen // 100}.{claim.reimbursement_fen % 100:02d}"
        assert "医疗费用零星报销结算单" in page and f"报销金额）：{owed} 元" in page
        assert "演示职工甲" in page and "FP-P1" in page and "1600.00" in page
        code, _, err = await _cli(capsys, "claims", "print", "LX0000", "--html", str(html), *db)
        assert code == 2 and "不存在" in err
        code, _, err = await _cli(
            capsys, "claims", "print", registered.claim_no, "--pdf", str(pdf), *db
        )
        assert code == 2 and "结算后才能打印结算单" in err and not pdf.exists()
        if claim_form.chromium() is None:
            pytest.skip("chromium not installed (make system-deps installs it)")
        code, _out, err = await _cli(
            capsys, "claims", "print", claim.claim_no, "--pdf", str(pdf), *db
        )
        assert code == 0, err
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
