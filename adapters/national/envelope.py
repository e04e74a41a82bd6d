"""The national interface's request and response envelope (公共输入 / 公共输出).

Real clients differ: `input` arrives as an object or as a JSON string, codes as strings or
numbers, regional extra fields anywhere. Decoding is lenient about those and strict about
what the gateway needs; every failure becomes a clerk-readable BadRequest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
import re
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from adapters.national import lengths
from adapters.national.paths import clerk_path, printable
from adapters.national.repeated_keys import refuse_repeated_keys
from gateway.core.timestamps import second_digits
from gateway.protocol.errors import BadRequest

Code = str | int | None
Amount = Any  # a number, a numeric string, "" or null: parsed by adapters.national.wire.fen

T = TypeVar("T")

ACCEPTED_INFVER = frozenset({"V1.0", "1.0", "1.0.0", "1", "V1"})

# Later revisions of the interface suffix a code when they add fields (protocol.md §1.2); the
# transaction is the same one, and the added fields are tolerated like any regional extra.
# Each comes from a public client: 2203A/2206A/2207A Sichuan (daxiaochengzi/YiBinActive),
# 2304A Sichuan's YinHai call and a Java reversal list that also names 2102A (docs/protocol.md).
REVISIONS = {"2203A": "2203", "2206A": "2206", "2207A": "2207", "2304A": "2304", "2102A": "2102"}


class Envelope(msgspec.Struct, kw_only=True, metaclass=lengths.Bounded):
    """公共输入. Unknown regional fields are ignored, as real centres do; code fields are
    bounded by their names' lengths where they are decoded (adapters.national.lengths)."""

    infno: Code = None
    msgid: Code = None
    mdtrtarea_admvs: Code = None
    insuplc_admdvs: Code = None
    recer_sys_code: Code = None
    dev_no: Code = None
    dev_safe_info: Code = None
    cainfo: Code = None
    signtype: Code = None
    infver: Code | float = None  # 1.0 as a number, as some clients write it
    opter_type: Code = None
    opter: Code = None
    opter_name: Code = None
    inf_time: Code = None
    fixmedins_code: Code = None
    fixmedins_name: Code = None
    sign_no: Code = None
    input: msgspec.Raw = msgspec.Raw(b"")  # decoded later, by the transaction's own type
    # A Go client's struct tag spells the node `Input` (YingmoY/Pharmacy-ERP, docs/protocol.md);
    # the same node, read when `input` is absent. Ignored, it answered "缺少输入节点…".
    input_capitalised: msgspec.Raw = msgspec.field(default=msgspec.Raw(b""), name="Input")


class Request(msgspec.Struct, frozen=True, gc=False):
    """The envelope after validation: the fields every transaction relies on."""

    infno: str
    msgid: str
    fixmedins_code: str
    mdtrtarea_admvs: str
    insuplc_admdvs: str
    opter: str
    opter_name: str
    opter_type: str
    dev_no: str
    sign_no: str
    input: bytes  # the raw JSON of the input node's object


_envelope_decoder = msgspec.json.Decoder(Envelope)
_str_decoder = msgspec.json.Decoder(str)
_MSGID = re.compile(r"^[0-9A-Za-z_\-]{1,40}$")


def msgid_shaped(msgid: str) -> bool:
    """Whether a text has a message id's shape (the envelope's `msgid`, a 2601's `omsgid`)."""
    return _MSGID.match(msgid) is not None


_INFNO = re.compile(r"^[0-9]{4}[A-Z]?$")
# A control character can only be in a valid JSON body raw as DEL (0x7f) or a C1 character
# (0xc2 0x80-0x9f), or escaped (\u0000-\u001f, \b, \f, \u007f-\u009f): so a body without a
# backslash, a 0x7f or a 0xc2 byte holds none. Each is looked for with one memchr.
_CONTROL_LEADS = (b"\\", b"\x7f", b"\xc2")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def fingerprint(req: Request) -> bytes:
    """What a message asks for, for the msgid journal: the transaction, the two areas and the
    `input` node's bytes. Not when it was stamped (`inf_time`), nor the device, operator or
    signature fields: a counter that re-stamps its message when it retries is retrying, and must
    get the stored answer; told "another message" it would send a new msgid and pay twice."""
    h = hashlib.sha256()
    for part in (req.infno, req.mdtrtarea_admvs, req.insuplc_admdvs):
        h.update(part.encode())
        h.update(b"\x00")
    h.update(req.input)
    return h.digest()


def base_infno(infno: str) -> str:
    """The transaction a revision's suffixed code stands for (2207A -> 2207)."""
    return REVISIONS.get(infno, infno)


def _control_path(node: Any, at: str) -> str | None:
    """Where the first string holding a control character is (key or value)."""
    if isinstance(node, str):
        return at if _CONTROL_CHARS.search(node) else None
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{at}.{key}" if at else str(key)
            if _CONTROL_CHARS.search(str(key)):
                return here
            found = _control_path(value, here)
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _control_path(value, f"{at}[{i}]")
            if found:
                return found
    return None


def refuse_control_characters(raw: bytes) -> None:
    """A NUL or another control character in a text field is refused, naming the field.

    Nothing in the interface carries one, and PostgreSQL cannot store a NUL: it would fail the
    write after the checks. The lead-byte scan is the common, cheap path; the walk decides.
    """
    # A pattern over the raw bytes cost ~50 ns a byte on the event loop (0.4 s for an 8 MiB
    # 9101 upload); the lead-byte look-ups cost well under 1 ms, and the decode and walk that
    # follow a hit are a few milliseconds at most.
    if all(raw.find(lead) < 0 for lead in _CONTROL_LEADS):
        return
    try:
        where = _control_path(msgspec.json.decode(raw), "")
    except msgspec.DecodeError:
        where = None
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
    if where is None:
        return  # the match was inside a number or key-less text the walk does not see
    # The path is shown with its control characters written out: found from outside, a NUL in
    # a key's name went back raw, and a till that reads err_msg as a C string showed "字段app".
    shown = printable(clerk_path(where))
    raise BadRequest(f"字段{shown}含有不可见的控制字符（如NUL），请删除后重新发送")


NOT_UTF8 = "报文编码无法识别，不是合法的UTF-8（或GBK）JSON（请以UTF-8编码发送；UTF-16等编码不受理）"


# The charsets a Content-Type may declare for GBK text (GB18030 reads all of them).
GBK_CHARSETS = frozenset({"gbk", "gb2312", "gb18030", "cp936", "x-gbk"})


def as_utf8(body: bytes, charset: str | None = None) -> bytes | None:
    """The body as UTF-8: itself where it is, or a GBK (GB18030) body written out again in
    UTF-8; None for anything else (UTF-16 and other encodings, bytes neither reads).

    Found from outside: newtouch-cloud/openhis (`ClassHelper.YBHttpRequest`) and
    daxiaochengzi/YiBinActive (`Form3.PostWebRequest`) write their envelopes with
    `Encoding.Default.GetBytes`, which on a Chinese Windows .NET Framework is GBK; every such
    request was refused at its first Chinese character. The whole body is decoded before the
    JSON is read (a GBK character's second byte may be a backslash), so the envelope is read as
    its text. A body with a NUL byte is never GBK text (UTF-16 writes one beside every ASCII
    character): refused, as before.

    A body declared GBK (`charset` from its Content-Type) is read as GBK first: some GBK text is
    also valid UTF-8 (鏂囦腑's bytes spell 文中), and found from outside, such a body was read as
    the other text though its client had said which it was."""
    if charset is not None and charset.lower() in GBK_CHARSETS and b"\x00" not in body:
        try:
            return body.decode("gb18030").encode("utf-8")
        except UnicodeDecodeError:
            pass
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return body
    if b"\x00" in body:
        return None
    try:
        return body.decode("gb18030").encode("utf-8")
    except UnicodeDecodeError:
        return None


TOO_DEEP = "报文JSON嵌套层数过多，不是合法的接口报文"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def undecodable(body: bytes, exc: Exception) -> BadRequest:
    """Why a body is not JSON, in the clerk's words: an encoding, nesting, or plain syntax."""
    if isinstance(exc, RecursionError):
        return BadRequest(TOO_DEEP)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest(NOT_UTF8)
    if _SURROGATE_ESCAPE.search(body):
        return BadRequest("报文不是合法的UTF-8 JSON：含有不成对的\\uD800-\\uDFFF代理字符")
    return BadRequest("请求报文不是有效的JSON")


# Invisible characters a code picks up from a spreadsheet or a CSV written with a byte-order
# mark (the first cell of the file): found from outside, "\ufeffT7Y001" was kept as a code of
# its own, so the line matched no mapping and the patient paid what the fund should have.
_INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060"
_INVISIBLE_EDGES = re.compile(f"^[\\s{_INVISIBLE}]+|[\\s{_INVISIBLE}]+$")


def text(value: Code) -> str:
    """A code field as text: numbers become their decimal text, null becomes "", blanks and
    invisible characters around it are dropped."""
    if value is None:
        return ""
    t = str(value).strip()
    # isascii first: it is the common case and costs a third of the two look-ups (every code
    # of every request comes through here).
    if t and not t.isascii() and (t[0] in _INVISIBLE or t[-1] in _INVISIBLE):
        t = _INVISIBLE_EDGES.sub("", t)
    return t


def decode_request(body: bytes, path_infno: str | None = None) -> Request:
    """Validate the envelope; raises BadRequest with a message for the counter."""
    if not body.strip():
        raise BadRequest("请求报文为空")
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]  # a UTF-8 byte-order mark, as some Windows clients write one
    refuse_repeated_keys(body)
    try:
        env = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise lengths.refusal(exc, body) or BadRequest(
            f"公共输入参数格式错误：{describe(exc)}"
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise undecodable(body, exc) from exc
    refuse_control_characters(body)
    lengths.check(env)
    infno = text(env.infno) or (path_infno or "")
    # A revision's code and its base are one transaction, whichever of the two names it
    # (found from outside: the body's 2102A under the path's 2102 was taken, the reverse not).
    if path_infno and text(env.infno) and base_infno(text(env.infno)) != base_infno(path_infno):
        raise BadRequest(f"交易编号不一致：地址为{path_infno}，报文为{text(env.infno)}")
    if not infno:
        raise BadRequest("缺少交易编号infno")
    if not _INFNO.match(infno):
        raise BadRequest(f"交易编号{infno}格式错误")
    infno = base_infno(infno)
    msgid = text(env.msgid)
    if not msgid:
        raise BadRequest("缺少发送方报文ID msgid")
    if not _MSGID.match(msgid):
        raise BadRequest("发送方报文ID msgid格式错误（最长40位字母数字）")
    fixmedins_code = text(env.fixmedins_code)
    if not fixmedins_code:
        raise BadRequest("缺少定点医药机构编号fixmedins_code")
    infver = str(env.infver) if isinstance(env.infver, float) else text(env.infver)
    if infver and infver not in ACCEPTED_INFVER:
        raise BadRequest(f"不支持的接口版本号{infver}")
    raw = bytes(env.input)
    capitalised = bytes(env.input_capitalised).strip()
    if capitalised not in (b"", b"null"):
        if raw and raw != capitalised:
            raise BadRequest("报文同时含有input和Input两个交易输入节点且内容不同，请只发送input")
        raw = capitalised
    stripped = raw.lstrip()
    if stripped.startswith(b'"'):
        # A few older clients send `input` as a JSON string holding the object.
        try:
            raw = _str_decoder.decode(raw).encode()
        except msgspec.DecodeError as exc:
            raise BadRequest("交易输入input格式错误") from exc
        refuse_control_characters(raw)
        refuse_repeated_keys(raw)
        # Read whole here, as an object-form input is with the envelope: found from outside,
        # a string-form input that was not JSON was refused later, inside the transaction, and
        # the refusal kept its msgid, where the same fault in an object kept nothing.
        try:
            msgspec.json.decode(raw, type=msgspec.Raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BadRequest("交易输入input不是有效的JSON") from exc
        stripped = raw.lstrip()
    if stripped in (b"", b"null"):
        raw = b"{}"
    elif not stripped.startswith(b"{"):
        raise BadRequest("交易输入input必须是JSON对象")
    return Request(
        infno=infno,
        msgid=msgid,
        fixmedins_code=fixmedins_code,
        mdtrtarea_admvs=text(env.mdtrtarea_admvs),
        insuplc_admdvs=text(env.insuplc_admdvs),
        opter=text(env.opter),
        opter_name=text(env.opter_name),
        opter_type=text(env.opter_type),
        dev_no=text(env.dev_no),
        sign_no=text(env.sign_no),
        input=raw,
    )


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def json_number(literal: str) -> Decimal:
    """A JSON number with a fraction or exponent, kept exact as the Decimal of its text.

    An exponent is refused here, where its text is still seen: `1e2` is not how a till writes
    100.00, and once it is a Decimal it reads as an amount. msgspec reports the field's path.
    """
    if "e" in literal or "E" in literal:
        raise ValueError(f"数值{literal}使用了科学计数法，金额和数量应写为如12.30的十进制数")
    return Decimal(literal)


def decode_input(request: Request, kind: type[T]) -> T:
    """Decode the input node into the transaction's input type."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind, float_hook=json_number)
    try:
        result: T = decoder.decode(request.input)
    except msgspec.ValidationError as exc:
        raise lengths.refusal(exc, request.input) or BadRequest(
            f"交易输入参数错误：{describe(exc)}"
        ) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest("交易输入input不是有效的JSON") from exc
    except (UnicodeDecodeError, RecursionError) as exc:
        raise undecodable(request.input, exc) from exc
    lengths.check(result)
    return result


_TYPE_NAMES = {
    "str": "字符串",
    "int": "整数",
    "object": "对象",
    "array": "数组",
    "null": "空值",
    "bool": "布尔值",
    "float": "数字",
    "decimal": "数字",
}
# Without a place when the whole body is the wrong type (found from outside: `[]` was answered
# in msgspec's English).
_EXPECTED = re.compile(
    r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`(?: - at `\$\.?(?P<at>[^`]*)`)?"
)
_MISSING = re.compile(
    r"Object missing required field `(?P<field>[^`]+)`(?: - at `\$\.?(?P<at>[^`]*)`)?"
)
_AT = re.compile(r"^(?P<what>.*) - at `\$\.?(?P<at>[^`]*)`$", re.DOTALL)


def _cn_type(spec: str) -> str:
    parts = [p.strip() for p in spec.split("|")]
    return "或".join(_TYPE_NAMES.get(p, p) for p in parts if p != "null") or spec


def describe(exc: msgspec.ValidationError) -> str:
    """Translate msgspec's validation message into a clerk-readable Chinese phrase."""
    msg = str(exc)
    m = _EXPECTED.search(msg)
    if m:
        where = clerk_path(m.group("at") or "")
        subject = f"字段{where}" if where else "报文"
        return f"{subject}应为{_cn_type(m.group('want'))}，实际为{_cn_type(m.group('got'))}"
    m = _MISSING.search(msg)
    if m:
        where = clerk_path(m.group("at") or "")
        field = f"{where}.{m.group('field')}" if where else m.group("field")
        return f"缺少必填字段{field}"
    m = _AT.match(msg)
    if m:  # a refusal raised while decoding a value (json_number), or msgspec's own words
        what = m.group("what")
        return f"字段{clerk_path(m.group('at')) or '报文'}：{_MSGSPEC_WORDS.get(what, what)}"
    # A refusal of the whole body names no place (found from outside: a body of 1e400 was told
    # "Number out of range", in English).
    return _MSGSPEC_WORDS.get(msg, msg)


# msgspec's refusals of a value it cannot hold, in the clerk's words.
_OUT_OF_RANGE = "数值超出范围（接口的数值最多16位数字）"
_MSGSPEC_WORDS = {"Integer value out of range": _OUT_OF_RANGE, "Number out of range": _OUT_OF_RANGE}


# --------------------------------------------------------------------------- response


class Response(msgspec.Struct, omit_defaults=False):
    """公共输出, in the baseline form."""

    infcode: int
    inf_refmsgid: str
    refmsg_time: str
    respond_time: str
    err_msg: str | None
    output: Any
    warn_msg: str | None = None


_encoder = msgspec.json.Encoder(decimal_format="number")
_sequence = itertools.count(1)
_PROCESS_TAG = os.getpid() % 1000


def ref_msgid(region: str, now: dt.datetime) -> str:
    """接收方报文ID: receiver region (6) + yyyyMMddHHmmss (14) + 10-digit serial."""
    serial = (_PROCESS_TAG * 10_000_000 + next(_sequence) % 10_000_000) % 10**10
    return f"{(region or '000000')[:6]:0<6}{second_digits(now)}{serial:010d}"


def stamp(now: dt.datetime) -> str:
    """yyyyMMddHHmmssSSS."""
    return f"{second_digits(now)}{now.microsecond // 1000:03d}"


ERR_MSG_LENGTH = 200  # protocol.md §1.3: a HIS keeps err_msg in a column of this width


def clipped(err_msg: str | None) -> str | None:
    """A refusal's words within err_msg's length. Cut in the middle, where the value it quotes
    is (人员编号…不存在): the head names the field, the tail says what to do. Found from outside:
    a quoted 1,000-digit value made err_msg over 4,000 characters."""
    if err_msg is None:
        return None
    # A value it quotes from the request may hold a control character: written out, whatever
    # check quoted it (the gateway's own words hold none).
    err_msg = printable(err_msg)
    if len(err_msg) <= ERR_MSG_LENGTH:
        return err_msg
    head = ERR_MSG_LENGTH // 2
    return f"{err_msg[:head]}…{err_msg[len(err_msg) - (ERR_MSG_LENGTH - head - 1) :]}"


def encode_response(
    *,
    region: str,
    received: dt.datetime,
    output: Any,
    err_msg: str | None = None,
    warn_msg: str | None = None,
    now: dt.datetime | None = None,
) -> bytes:
    """Encode one answer; infcode follows from err_msg."""
    answered = now or dt.datetime.now()
    failed = err_msg is not None
    return _encoder.encode(
        Response(
            infcode=-1 if failed else 0,
            inf_refmsgid=ref_msgid(region, received),
            refmsg_time=stamp(received),
            respond_time=stamp(answered),
            # null on success, as the centres' captured answers have it (openhis's Hebei and
            # Shanghai logs): found from outside, the Hubei clients (yinhai yh_hb_call's
            # callers) show any non-empty err_msg as an error and stop, and took "成功" for one.
            err_msg=clipped(err_msg) if failed else None,
            output={} if output is None or failed else output,
            warn_msg=warn_msg,
        )
    )
