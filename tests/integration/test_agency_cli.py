"""`python -m gateway claims …` and `payouts …` through `main`: a claim from registration to
its payment, refusals as Chinese messages and exit 2, account numbers masked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app.cli import main
from gateway.app.server import Settings, prepare_database
from tests.integration.agency_helpers import HOSPITAL, bank_answers
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
    rows = [
        {**ln, "fee_ocur_time": "2026-06-03 08:40:00", "pric": ln["pric"], "cnt": ln["cnt"]}
        for ln in BIG_LINES
    ]
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
