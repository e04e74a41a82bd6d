"""The 9101 detail file: each row's fields as the interface defines them, and Base64 as Java's
MIME encoder writes it (found from outside, tester of the day-end file flow)."""

from __future__ import annotations

import base64
import io
import zipfile

import pytest

from gateway.jobs import reconcile
from gateway.protocol.errors import BadRequest

GOOD = "4418002026120600000000000001\t44180020261206000000000001\t441800000000000001\t795.60\t291.23\t0.00\t0"


def _zipped(text: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("scmxdz.txt", text.encode())
    return out.getvalue()


def test_a_good_row_is_read() -> None:
    [row] = reconcile.read_detail_file(_zipped(GOOD + "\n"))
    assert (row.medfee_sumamt, row.fund_pay_sumamt, row.acct_pay) == (79560, 29123, 0)
    assert row.refd_setl_flag == "0"


@pytest.mark.parametrize(
    ("column", "sent", "words"),
    [
        (3, "7.956e2", "medfee_sumamt格式错误"),
        (3, "７９５.６０", "medfee_sumamt格式错误"),
        (4, "", "fund_pay_sumamt未填写"),
        (6, "2", "退费结算标志（refd_setl_flag）为“2”"),
        (0, "", "结算ID（setl_id）为空"),
        (0, "S" * 200, "结算ID（setl_id）超过30位"),
        (3, "-795.60", "正常结算（退费结算标志0），金额不能为负数"),
        # Found from outside: a NUL in a cell was taken, the row a mismatch nobody could see.
        (2, "441800000000000001\x00", "psn_no含有控制字符"),
        (0, "4418002026\x1b[31m", "setl_id含有控制字符"),
    ],
    ids=[
        "exponent",
        "full-width",
        "empty",
        "flag 2",
        "no setl_id",
        "long setl_id",
        "negative",
        "NUL",
        "escape",
    ],
)
def test_a_row_the_interface_does_not_define_is_refused_naming_its_line(
    column: int, sent: str, words: str
) -> None:
    fields = GOOD.split("\t")
    fields[column] = sent
    text = GOOD + "\n" + "\t".join(fields) + "\n"
    with pytest.raises(BadRequest, match="明细文件第2行") as refused:
        reconcile.read_detail_file(_zipped(text))
    assert words in refused.value.err_msg


def test_a_refund_row_may_be_negative() -> None:
    fields = GOOD.split("\t")
    fields[3:7] = ["-795.60", "-291.23", "0.00", "1"]
    [row] = reconcile.read_detail_file(_zipped("\t".join(fields)))
    assert (row.medfee_sumamt, row.refd_setl_flag) == (-79560, "1")


def test_mime_base64_with_line_breaks_is_read() -> None:
    content = _zipped(GOOD + "\n")
    mime = base64.encodebytes(content).decode().replace("\n", "\r\n")
    assert "\r\n" in mime.strip()
    limits = reconcile.FileLimits()
    assert reconcile.read_upload(mime, limits, 8 * 1024 * 1024) == content
    with pytest.raises(BadRequest, match="不是有效的Base64编码"):
        reconcile.read_upload(mime.replace("A", "*", 1) + "!", limits, 8 * 1024 * 1024)


def test_a_zip_of_two_text_files_is_refused_naming_them() -> None:
    """Found from outside: a zip of a.txt and b.txt was taken, only a.txt read, and b.txt's
    settlements reported as missing from the institution's side. A Mac's resource forks beside
    the one text file are not files of the institution's."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", GOOD.encode())
        z.writestr("b.txt", GOOD.replace("0001\t", "0002\t", 1).encode())
    with pytest.raises(BadRequest) as refused:
        reconcile.read_detail_file(out.getvalue())
    assert "压缩包内有2个文件（a.txt、b.txt）" in refused.value.err_msg
    mac = io.BytesIO()
    with zipfile.ZipFile(mac, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("scmxdz.txt", GOOD.encode())
        z.writestr("__MACOSX/._scmxdz.txt", b"\x00\x05\x16\x07")
    [row] = reconcile.read_detail_file(mac.getvalue())
    assert row.acct_pay == 0
