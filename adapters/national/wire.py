"""Input nodes of the HIS transactions, field names verbatim from the national interface.

Codes are `Code` (text or number), amounts `Amount` (number, numeric text, "" or null) and are
turned into integers here, at the edge, with a clerk-readable message naming the field.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import msgspec

from adapters.national import lengths
from adapters.national.envelope import Amount, Code, text
from gateway.core.money import AmountError, from_digits, scaled, shown
from gateway.core.timestamps import as_local
from gateway.ledger.persons import CERT_TYPES, Certificate
from gateway.protocol.errors import BadRequest


class Node(msgspec.Struct, kw_only=True, metaclass=lengths.Bounded):
    """Base of input nodes: unknown regional fields are ignored; code fields are bounded by
    their names' lengths where they are decoded (adapters.national.lengths)."""


def required(value: Code, name: str) -> str:
    """A mandatory code/text field."""
    s = text(value)
    if not s:
        raise BadRequest(f"缺少必填字段{name}")
    return s


def cert_type_text(value: Code) -> str:
    """mdtrt_cert_type as text: a code sent as a number (1, 2, 3) lost its leading zero on the
    way, and is the code it was (found from outside: `"mdtrt_cert_type": 2` was refused,
    where the README takes codes as strings or numbers)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10:
        return f"{value:02d}"
    return text(value)


def certificate(cert_type: Code, cert_no: Code, node: str) -> Certificate:
    """就诊凭证 of a request: mdtrt_cert_type 01/02/03 and mdtrt_cert_no, both required."""
    kind = required(cert_type_text(cert_type), f"{node}.mdtrt_cert_type")
    if kind not in CERT_TYPES:
        raise BadRequest(f"就诊凭证类型{kind}无效，应为01电子凭证、02身份证或03社保卡")
    return Certificate(kind, required(cert_no, f"{node}.mdtrt_cert_no"))


def certificate_if_sent(cert_type: Code, cert_no: Code, node: str) -> Certificate | None:
    """就诊凭证 where the interface lets clients leave the number out (2206/2207, 2303/2304:
    some send only mdtrt_cert_type, some nothing); a number sent is checked like any other."""
    return certificate(cert_type, cert_no, node) if text(cert_no) else None


def flag(value: Code, name: str, default: str = "0") -> str:
    """A 0/1 flag."""
    s = text(value) or default
    if s not in ("0", "1"):
        raise BadRequest(f"字段{name}只能为0或1")
    return s


# One grammar for every number on the wire, judged by its text: ASCII digits, a minus sign only
# where the field may be negative, a decimal point with digits on both sides. Whitespace,
# full-width digits, "+", "1e2" (refused when decoded, see envelope.json_number) and the like are
# refused rather than read into a value the clerk never typed.
_DECIMAL = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)


def _text_of(value: int | str | Decimal) -> str:
    """The text a number was sent as. A JSON number arrives as the Decimal of its text
    (envelope.json_number, which refuses an exponent), and str() writes one with digits past
    the point in exponent form when they are many (0.0000000 as "0E-7"): those are written out
    again. Any other exponent form cannot have come from the wire's text, and stays refused."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < 0:
            return format(value, "f")
    return str(value)


def _decimal_text(value: Amount, name: str, places: int, signed: bool, label: str) -> str:
    """The field's decimal text after the grammar; raises BadRequest naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise BadRequest(f"{label}{name}应为数字")
    literal = _text_of(value)
    m = _DECIMAL.fullmatch(literal)
    if m is None:
        raise BadRequest(
            f"{label}{name}格式错误（“{shown(literal)}”），"
            "应为半角阿拉伯数字，如12.30，不含空格和科学计数法"
        )
    if m.group(1) and not signed:
        raise BadRequest(f"{label}{name}不能为负数（{literal}）")
    # More decimals are accepted only as trailing zeros: C# decimal arithmetic keeps the scale
    # (4.52 x 1.0000 serializes as 4.520000), and the value is still exact; or as a double's
    # rounding noise (`without_float_noise`).
    if len((m.group(3) or "").rstrip("0")) > places:
        plain = without_float_noise(m.group(2), m.group(3) or "", places)
        if plain is None:
            raise BadRequest(f"{label}{name}最多{places}位小数")
        return f"{m.group(1)}{plain[0]}.{plain[1]}"
    return literal


# The fewest significant digits a double's shortest text has when it carries rounding noise
# (29.700000000000003 has 17): a number a clerk typed or a system kept in decimal has far fewer.
_NOISE_DIGITS = 15
# The most significant digits a double's shortest text ("%.17g" included) has.
_DOUBLE_DIGITS = 17
# How far from the decimal it stands for, in units in the last place of that decimal as a double:
# the few operations a client sums an order's lines with.
_NOISE_ULPS = 16


def without_float_noise(whole: str, fraction: str, places: int) -> tuple[str, str] | None:
    """(whole, fraction) of the `places`-decimal number a text with more decimals stands for,
    when the text is a double's rounding noise around it; None when it is a number of its own.

    Found from outside: a Go pharmacy ERP (YingmoY/Pharmacy-ERP, `doMedicareSettle`) sums its
    lines' prices as float64 and sends the sum's shortest text: 19.8 + 9.9 is sent as
    29.700000000000003, refused as "at most 2 decimals" (17 of 91 two-item sales of common
    prices could not be made at all). Such a text is read as the decimal it stands for only when
    it has a double's full precision and lies within a few units in the last place of that
    decimal; "29.701" or "29.7000001" stay refused. The value is exact integer arithmetic; the
    double's unit in the last place only sizes the noise."""
    digits = (whole + fraction).lstrip("0")
    if len(digits) < _NOISE_DIGITS:
        return None
    scale = 10 ** len(fraction)
    value = int(whole + fraction)  # the text's value times `scale`
    if (
        len(digits) > _DOUBLE_DIGITS
        and round(Fraction(float(f"{whole}.{fraction}")) * scale) != value
    ):
        # Longer than any double's shortest text: only a double's exact value written out
        # (Java's `new BigDecimal(double)`, C's "%.20f") is one. Found from outside:
        # 19.80000000000000000000000000000000000001 was read as 19.80.
        return None
    step = 10 ** (len(fraction) - places)
    nearest = (2 * value + step) // (2 * step)  # the value rounded to `places`, times 10^places
    noise = abs(value - nearest * step)  # times `scale`
    ulp = math.ulp(nearest / 10**places)  # a power of two: exact as a Fraction
    if Fraction(noise, scale) > _NOISE_ULPS * Fraction(ulp):
        return None
    text = str(nearest).rjust(places + 1, "0")
    return text[:-places] if places else text, text[-places:] if places else "0"


def _number(value: Amount, name: str, places: int, signed: bool, label: str) -> int:
    """The field's number scaled by `places` decimals; raises BadRequest naming the field.

    A text (as nearly every till sends) is matched once, by the grammar, and read from the
    parts the match gives; anything else, or a text the grammar refuses, takes the checks one
    by one for the message that says which rule it broke."""
    try:
        if type(value) is str:
            m = _DECIMAL.fullmatch(value)
            if m is not None and (signed or not m.group(1)):
                sign, whole, fraction = m.groups()
                if fraction is None or len(fraction) <= places:
                    return from_digits(sign, whole, fraction, places, f"{label}{name}")
        literal = _decimal_text(value, name, places, signed, label)
        return scaled(literal, places, f"{label}{name}")
    except AmountError as exc:
        raise BadRequest(str(exc)) from exc


def fen(value: Amount, name: str, *, optional: bool = False, signed: bool = False) -> int | None:
    """An amount (16,2) in fen; more than two decimals is refused, never rounded."""
    if value is None or value == "":
        if optional:
            return None
        raise BadRequest(f"缺少必填金额字段{name}")
    return _number(value, name, 2, signed, "金额字段")


def fen_required(value: Amount, name: str, *, signed: bool = False) -> int:
    """A mandatory amount in fen."""
    amount = fen(value, name, signed=signed)
    assert amount is not None
    return amount


def _present(value: Amount, name: str) -> None:
    """A mandatory number is there, and is not a boolean (found from outside: `"cnt": true`
    was told the field was missing, where it was sent)."""
    if isinstance(value, bool):
        raise BadRequest(f"字段{name}应为数字，实际为布尔值")
    if value is None or value == "":
        raise BadRequest(f"缺少必填字段{name}")


def micro(value: Amount, name: str) -> int:
    """A price (16,6) in micro-yuan; never negative (a refund line negates its quantity)."""
    _present(value, name)
    return _number(value, name, 6, False, "字段")


def quantity(value: Amount, name: str, *, signed: bool = False) -> int:
    """A quantity (16,4) in 1/10000 units; negative only on refund lines (2301)."""
    _present(value, name)
    return _number(value, name, 4, signed, "字段")


def when(value: Code, name: str, *, optional: bool = False) -> dt.datetime | None:
    """`yyyy-MM-dd HH:mm:ss` (a bare date is accepted as midnight)."""
    s = text(value)
    if not s:
        if optional:
            return None
        raise BadRequest(f"缺少必填字段{name}")
    if len(s) == 19 and s[10] == " " and s[4] == "-":
        # The usual shape, parsed in C: strptime was a twentieth of a settlement's CPU.
        try:
            return dt.datetime.fromisoformat(s)
        except ValueError:
            pass
    # strptime takes any Unicode digit and any run of blanks (found from outside: "２０２６-12-01"
    # and "2026-12-01  10:00:00" opened visits); a date decides the policy year, so only the
    # shapes themselves, in ASCII digits, are parsed.
    if _TIME_SHAPES.fullmatch(s):
        # `yyyyMMdd`: nhis-web's registration-fee line sends fee_ocur_time so (found from
        # outside: refused); a bare date is midnight, as `yyyy-MM-dd` is.
        for fmt in (
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%d",
            "%Y%m%d%H%M%S",
            "%Y-%m-%dT%H:%M:%S",
            "%Y%m%d",
        ):
            try:
                return dt.datetime.strptime(s, fmt)
            except ValueError:
                continue
    if stamped := _STAMPED.fullmatch(s):
        # A .NET or Java client's serialized time (found from outside: a HIS whose 1101 sends
        # DateTime.Now as "2026-12-05T23:49:23.1083330+08:00" could read no person). The
        # fraction is dropped (never rounded up past the second the clerk saw); an offset is
        # converted to the gateway's local time, which is Beijing time.
        try:
            seconds = dt.datetime.strptime(stamped["time"].replace(" ", "T"), "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            pass
        else:
            zone = stamped["zone"]
            if not zone:
                return seconds
            if zone == "Z":
                return as_local(seconds.replace(tzinfo=dt.UTC))
            sign = -1 if zone[0] == "-" else 1
            hours, minutes = int(zone[1:3]), int(zone[-2:]) if len(zone) > 3 else 0
            if hours <= 14 and minutes < 60:
                offset = dt.timedelta(hours=hours, minutes=minutes) * sign
                return as_local(seconds.replace(tzinfo=dt.timezone(offset)))
    raise BadRequest(f"字段{name}时间格式错误，应为yyyy-MM-dd HH:mm:ss")


# ISO 8601 as serializers write it: a fraction of up to nine digits, a zone offset (hours, or
# hours and minutes), or both; the date and time apart by a T or, as Java's Timestamp.toString
# and Python's str(datetime) write them, a space (found from outside: "2026-12-05
# 23:49:23.108" was refused).
_STAMPED = re.compile(
    r"(?P<time>[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.[0-9]{1,9})?(?P<zone>Z|[+-][0-9]{2}(?::?[0-9]{2})?)?"
)


_TIME_SHAPES = re.compile(
    r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[ T][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2})?|[0-9]{14}|[0-9]{8}"
)


def day(value: Code, name: str) -> dt.date:
    """A mandatory `yyyy-MM-dd`; a date-time in any shape `when` reads is its day in Beijing
    time. Found from outside: a date cut to its first ten characters kept the written day of
    "2026-11-30T16:00:00.000+0000" (a Java client's UTC midnight of 1 December), so a 3301
    mapping took effect a day early and a 3201 counted the day before the one meant, where the
    same text as a `begntime` was 1 December; and "2026-11-30xyz" was 30 November."""
    s = required(value, name)
    wrong = f"字段{name}日期格式错误，应为yyyy-MM-dd"
    if len(s) == 10:
        try:
            return dt.date.fromisoformat(s)
        except ValueError as exc:
            raise BadRequest(wrong) from exc
    try:
        moment = when(s, name)
    except BadRequest as exc:
        raise BadRequest(wrong) from exc
    assert moment is not None
    return moment.date()


def when_required(value: Code, name: str) -> dt.datetime:
    """A mandatory date-time."""
    moment = when(value, name)
    assert moment is not None
    return moment


# --------------------------------------------------------------------------- 9001 / 9002


class SignIn(Node):
    opter_no: Code = None
    mac: Code = None
    ip: Code = None


class In9001(Node):
    signIn: SignIn | None = None


class SignOut(Node):
    sign_no: Code = None
    opter_no: Code = None


class In9002(Node):
    signOut: SignOut | None = None


# --------------------------------------------------------------------------- 1101


class PsnQuery(Node):
    mdtrt_cert_type: Code = None
    mdtrt_cert_no: Code = None
    card_sn: Code = None
    begntime: Code = None
    psn_cert_type: Code = None
    certno: Code = None
    psn_name: Code = None


class In1101(Node):
    data: PsnQuery | None = None


# --------------------------------------------------------------------------- outpatient


class Registration(Node):
    psn_no: Code = None
    insutype: Code = None
    begntime: Code = None
    mdtrt_cert_type: Code = None
    mdtrt_cert_no: Code = None
    ipt_otp_no: Code = None
    atddr_no: Code = None
    dr_name: Code = None
    dept_code: Code = None
    dept_name: Code = None
    caty: Code = None


class In2201(Node):
    data: Registration | None = None


class VisitRef(Node):
    """2202, 2404, 2405 and the cancellations' data node."""

    psn_no: Code = None
    mdtrt_id: Code = None
    ipt_otp_no: Code = None
    setl_id: Code = None


class In2202(Node):
    data: VisitRef | None = None


class MdtrtInfo(Node):
    mdtrt_id: Code = None
    psn_no: Code = None
    med_type: Code = None
    begntime: Code = None
    main_cond_dscr: Code = None
    dise_codg: Code = None
    dise_name: Code = None


class DiseInfo(Node):
    diag_type: Code = None
    # A serial number, but C# clients model it as `decimal` and Newtonsoft writes 1m as 1.0
    # (TeaHZ/185 T2402/T2403; Java BigDecimal DTOs alike): found from outside, every such
    # discharge was refused. Read by nothing; any number is taken.
    diag_srt_no: Amount = None
    diag_code: Code = None
    diag_name: Code = None
    diag_dept: Code = None
    dise_dor_no: Code = None
    dise_dor_name: Code = None
    diag_time: Code = None
    vali_flag: Code = None
    maindiag_flag: Code = None


class In2203(Node):
    mdtrtinfo: MdtrtInfo | None = None
    # null where a client has no diagnosis to send (found from outside: Newtonsoft writes an
    # unset list as null, nhis-web passes its map's missing key as null): as none sent. One
    # diagnosis as an object, not an array, as Shenyang's 2401 sends it: read as a list of one
    # (`as_list`), as feedetail is.
    diseinfo: list[DiseInfo] | DiseInfo | None = None


class FeeDetail(Node):
    """2204 / 2301 feedetail[] rows."""

    feedetl_sn: Code = None
    init_feedetl_sn: Code = None
    mdtrt_id: Code = None
    psn_no: Code = None
    chrg_bchno: Code = None
    dise_codg: Code = None
    med_type: Code = None
    fee_ocur_time: Code = None
    med_list_codg: Code = None
    medins_list_codg: Code = None
    det_item_fee_sumamt: Amount = None
    cnt: Amount = None
    pric: Amount = None
    hosp_appr_flag: Code = None
    rx_circ_flag: Code = None
    bilg_dept_codg: Code = None
    bilg_dr_codg: Code = None


class In2204(Node):
    feedetail: list[FeeDetail] | FeeDetail | None = None


class BatchRef(Node):
    mdtrt_id: Code = None
    chrg_bchno: Code = None
    psn_no: Code = None


class In2205(Node):
    data: BatchRef | None = None


class SettleData(Node):
    """2206/2207 and 2303/2304 data node."""

    psn_no: Code = None
    mdtrt_cert_type: Code = None
    mdtrt_cert_no: Code = None
    med_type: Code = None
    medfee_sumamt: Amount = None
    psn_setlway: Code = None
    mdtrt_id: Code = None
    chrg_bchno: Code = None
    acct_used_flag: Code = None
    insutype: Code = None
    invono: Code = None
    mid_setl_flag: Code = None
    fulamt_ownpay_amt: Amount = None
    overlmt_selfpay: Amount = None
    preselfpay_amt: Amount = None
    inscp_scp_amt: Amount = None


class In2206(Node):
    data: SettleData | None = None


class In2208(Node):
    data: VisitRef | None = None


# --------------------------------------------------------------------------- inpatient


class Admission(Node):
    """2401's `mdtrtinfo` and 2403's `adminfo` (which names its stay by mdtrt_id)."""

    mdtrt_id: Code = None
    psn_no: Code = None
    insutype: Code = None
    coner_name: Code = None
    tel: Code = None
    begntime: Code = None
    mdtrt_cert_type: Code = None
    mdtrt_cert_no: Code = None
    med_type: Code = None
    ipt_no: Code = None
    medrcdno: Code = None
    atddr_no: Code = None
    chfpdr_name: Code = None
    adm_diag_dscr: Code = None
    adm_dept_codg: Code = None
    adm_dept_name: Code = None
    adm_bed: Code = None
    dscg_maindiag_code: Code = None
    dscg_maindiag_name: Code = None
    dise_codg: Code = None
    dise_name: Code = None


class In2401(Node):
    mdtrtinfo: Admission | None = None
    # null where a client has no diagnosis to send (found from outside: Newtonsoft writes an
    # unset list as null, nhis-web passes its map's missing key as null): as none sent. One
    # diagnosis as an object, not an array, as Shenyang's 2401 sends it: read as a list of one
    # (`as_list`), as feedetail is.
    diseinfo: list[DiseInfo] | DiseInfo | None = None


class In2403(Node):
    adminfo: Admission | None = None
    # null where a client has no diagnosis to send (found from outside: Newtonsoft writes an
    # unset list as null, nhis-web passes its map's missing key as null): as none sent. One
    # diagnosis as an object, not an array, as Shenyang's 2401 sends it: read as a list of one
    # (`as_list`), as feedetail is.
    diseinfo: list[DiseInfo] | DiseInfo | None = None


class Discharge(Node):
    mdtrt_id: Code = None
    psn_no: Code = None
    insutype: Code = None
    endtime: Code = None
    dise_codg: Code = None
    dise_name: Code = None
    dscg_dept_codg: Code = None
    dscg_dept_name: Code = None
    dscg_way: Code = None


class In2402(Node):
    dscginfo: Discharge | None = None
    # null where a client has no diagnosis to send (found from outside: Newtonsoft writes an
    # unset list as null, nhis-web passes its map's missing key as null): as none sent. One
    # diagnosis as an object, not an array, as Shenyang's 2401 sends it: read as a list of one
    # (`as_list`), as feedetail is.
    diseinfo: list[DiseInfo] | DiseInfo | None = None


class FeeLineRef(Node):
    feedetl_sn: Code = None
    mdtrt_id: Code = None
    psn_no: Code = None


class In2302(Node):
    # Chongqing clients send the data node as an array.
    data: list[FeeLineRef] | FeeLineRef | None = None


class SettlementQuery(Node):
    psn_no: Code = None
    setl_id: Code = None
    mdtrt_id: Code = None


class In5203(Node):
    data: SettlementQuery | None = None


class DictionaryQuery(Node):
    """1901 字典表下载, in both spellings public clients send (binzhe `In1901`: parentValue,
    valiFlag; openhis `Input_1901`: vali_Flag)."""

    type: Code = None
    parentValue: Code = None
    parent_value: Code = None
    admdvs: Code = None
    date: Code = None
    valiFlag: Code = None
    vali_Flag: Code = None
    vali_flag: Code = None


class In1901(Node):
    data: DictionaryQuery | None = None


class TreatmentCheck(Node):
    """2001 人员待遇享受检查."""

    psn_no: Code = None
    insutype: Code = None
    fixmedins_code: Code = None
    med_type: Code = None
    begntime: Code = None
    endtime: Code = None
    dise_codg: Code = None
    dise_name: Code = None
    oprn_oprt_code: Code = None
    oprn_oprt_name: Code = None
    matn_type: Code = None
    birctrl_type: Code = None


class In2001(Node):
    data: TreatmentCheck | None = None


class VisitQuery(Node):
    """5201 就诊信息查询: a person's visits at the institution over a time range."""

    psn_no: Code = None
    begntime: Code = None
    endtime: Code = None
    med_type: Code = None
    mdtrt_id: Code = None


class In5201(Node):
    data: VisitQuery | None = None


class DiagnosisQuery(Node):
    """5202 诊断信息查询: one visit's diagnoses."""

    psn_no: Code = None
    mdtrt_id: Code = None


class In5202(Node):
    data: DiagnosisQuery | None = None


def as_list(value: Any) -> list[Any]:
    """A node that some clients send as an object and others as an array."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def diagnoses(value: list[DiseInfo] | DiseInfo | None) -> list[DiseInfo]:
    """A `diseinfo` node's diagnoses, leaving out those with neither a code nor a name: a
    client's empty template of the node (every field "") is no diagnosis, and kept as sent it
    replaced the visit's real one (found from outside: 5202 then answered only blanks)."""
    return [d for d in as_list(value) if text(d.diag_code) or text(d.diag_name)]
