"""The agency's pages and JSON API in the console: manual claims (零星报销) and payouts (拨付).

Clerks register, enter and settle claims, make payout batches, export the bank's payment file
and import its return file; reviewers review claims (明细审核, 结算审核); approvers approve
batches (初审, 一级/二级/三级复核). Every step is one call of gateway.services.manual_claims or
gateway.services.payouts, which check the state, the operators and write the audit row; this
module adds only who may ask (the role) and how the answer is shown. A refusal is the
service's own Chinese message: flashed on the page, `{"error": …}` from the API.

Forms are guarded as the console's others: a session, the console's own origin, the session's
CSRF token. The API routes are guarded by the console's table (`ApiRoute.roles`).
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

import aiohttp
import asyncpg
import msgspec
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from gateway.app.appkeys import GATEWAY
from gateway.core.money import fen_text
from gateway.emergency import operators
from gateway.emergency.console import agency_pages, pages
from gateway.ledger import manual_claims as claim_store
from gateway.ledger import payouts as payout_store
from gateway.ledger.partitions import Partition, Partitions
from gateway.protocol.errors import BadRequest, Conflict, GatewayError, NotFound
from gateway.services import agency_ledgers, claim_form, manual_claims, payouts

CLERK, REVIEWER, APPROVER = "clerk", "reviewer", "approver"
STAFF = (CLERK, REVIEWER, APPROVER)  # who reads the agency's claims and payouts
ROLE_NAMES = pages.ROLE_NAMES
# The bank's return file of a large batch is bigger than a console form (64 KiB): its upload
# is read here, in pieces, up to this.
RETURN_MAX_BYTES = 32 * 1024 * 1024
STATUS_CODES = {BadRequest: 400, NotFound: 404, Conflict: 409}


def refused_role(session: operators.Session) -> str:
    return f"当前账号（{ROLE_NAMES.get(session.role, session.role)}）不能办理此项业务"


def _status_of(exc: GatewayError) -> int:
    for kind, code in STATUS_CODES.items():
        if isinstance(exc, kind):
            return code
    return 400


def _ledgers(request: web.Request) -> Partitions:
    return request.app[GATEWAY].ledgers


async def _on_claim(request: web.Request, claim_no: str) -> Partition:
    return await agency_ledgers.of_claim(_ledgers(request), claim_no)


async def _on_batch(request: web.Request, batch_no: str) -> Partition:
    return await agency_ledgers.of_batch(_ledgers(request), batch_no)


def text_field(values: MultiDictProxy[Any] | dict[str, Any], key: str) -> str:
    """A text field (a JSON number taken as its digits); a list, an object or null is refused
    (found from outside: a list of batch numbers was looked up as its own text)."""
    value = values.get(key, "")
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise BadRequest(f"{key}应为文本")


# What a form's percent-escaped bytes that are not UTF-8 decode to (aiohttp replaces them): found
# from outside, "%FF%FEabc" was stored as an invoice number "��ABC".
UNREADABLE_FORM = "表单含有无法识别的字符（不是UTF-8编码），请检查后重新填写"


def refuse_unreadable(fields: MultiDictProxy[Any] | MultiDict[Any]) -> None:
    """A form whose fields hold what aiohttp made of bytes that are not UTF-8 is refused."""
    if any(isinstance(v, str) and "\ufffd" in v for v in fields.values()):
        raise web.HTTPBadRequest(text=UNREADABLE_FORM)


def _many(values: MultiDictProxy[Any] | dict[str, Any], key: str) -> list[str]:
    """A list field: a JSON list (each element one value, as sent), or text (a form's field, a
    JSON string) separated by commas or spaces. Found from outside: an invoice number "NO 52001"
    in a JSON list was held as two invoices, and refused another claim's "52001"."""
    if isinstance(values, MultiDictProxy):
        got: list[Any] = values.getall(key, [])
        listed = False
    else:
        raw = values.get(key, [])
        listed = isinstance(raw, list)
        got = raw if listed else [raw]
    out: list[str] = []
    for v in got:
        if not isinstance(v, str):
            raise BadRequest(f"{key}应为文本或文本列表")
        if listed:
            if v.strip():
                out.append(v.strip())
        else:
            out += v.replace("，", ",").replace(",", " ").split()
    return out


def _when(text: str, what: str) -> dt.datetime | None:
    return manual_claims.claim_time(text, what) if text else None


_YES = ("1", "on", "true")
_NO = ("", "0", "off", "false")


def _flag(values: MultiDictProxy[Any] | dict[str, Any], key: str) -> bool:
    """A yes/no field: a form's checkbox ("on", or absent), or the API's true/false, 1/0 or
    their texts. Anything else is refused: found from outside, the number 1 and "yes" were read
    as no, and a claim the clerk asked to pay from the account settled without it."""
    value = values.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if value is None or (isinstance(value, str) and value.strip().lower() in _NO):
        return False
    if isinstance(value, str) and value.strip().lower() in _YES:
        return True
    raise BadRequest(f"{key}应为是或否（true/false、1/0），而不是“{str(value)[:20]}”")


# ------------------------------------------------------------------------------- the steps


class Done(NamedTuple):
    """What a step answers: the page to show next, its message, the API's document; or a file."""

    where: str
    message: str
    doc: Any
    file: tuple[str, bytes] | None = None


Values = MultiDictProxy[Any] | dict[str, Any]
Step = Callable[[web.Request, operators.Session, Values], Awaitable[Done]]


def _claim_done(c: claim_store.Claim, message: str) -> Done:
    return Done(f"/console/claims/{quote(c.claim_no)}", message, manual_claims.view(c))


async def register(request: web.Request, s: operators.Session, v: Values) -> Done:
    begntime = _when(text_field(v, "begntime"), "就诊（入院）时间")
    if begntime is None:
        raise BadRequest("请填写就诊（入院）时间begntime")
    reg = manual_claims.Registration(
        cert_type=text_field(v, "cert_type"),
        cert_no=text_field(v, "cert_no"),
        fixmedins_code=text_field(v, "fixmedins_code"),
        med_type=text_field(v, "med_type"),
        begntime=begntime,
        endtime=_when(text_field(v, "endtime"), "出院时间"),
        dise_codg=text_field(v, "dise_codg"),
        acct_used=_flag(v, "acct_used"),
        invoice_nos=tuple(_many(v, "invoice_nos")),
    )
    gw = request.app[GATEWAY]
    home = await agency_ledgers.of_person(gw.ledgers, "", reg.cert_type, reg.cert_no)
    async with (
        agency_ledgers.invoice_registry(gw.ledgers, home) as invoices_held,
        agency_ledgers.connection(home) as conn,
    ):
        c = await manual_claims.register(
            conn,
            gw.snapshot,
            reg,
            s.login,
            dt.datetime.now(),
            dates=gw.config.dates,
            invoices_held=invoices_held,
        )
    return _claim_done(c, f"零星报销{c.claim_no}已登记")


async def enter_lines(request: web.Request, s: operators.Session, v: Values) -> Done:
    if isinstance(v, dict) and "feedetail" in v:
        lines = manual_claims.lines_from_rows(v["feedetail"])
    else:
        lines = manual_claims.lines_from_text(text_field(v, "lines"))
    gw, claim_no = request.app[GATEWAY], text_field(v, "claim_no")
    async with agency_ledgers.connection(await _on_claim(request, claim_no)) as conn:
        c = await manual_claims.enter_lines(
            conn, gw.snapshot, claim_no, lines, s.login, dates=gw.config.dates
        )
    return _claim_done(c, f"零星报销{c.claim_no}已录入明细{len(lines)}条")


async def review(request: web.Request, s: operators.Session, v: Values) -> Done:
    refuse = text_field(v, "refuse") if "refuse" in v else None
    claim_no = text_field(v, "claim_no")
    async with agency_ledgers.connection(await _on_claim(request, claim_no)) as conn:
        c = await manual_claims.review(conn, claim_no, s.login, refuse=refuse)
    return _claim_done(c, f"零星报销{c.claim_no}{manual_claims.STATUS_NAMES[c.status]}")


async def settle(request: web.Request, s: operators.Session, v: Values) -> Done:
    gw, claim_no = request.app[GATEWAY], text_field(v, "claim_no")
    async with agency_ledgers.connection(await _on_claim(request, claim_no)) as conn:
        c = await manual_claims.settle(conn, gw.snapshot, claim_no, s.login, dt.datetime.now())
    owed = fen_text(c.reimbursement_fen or 0)
    return _claim_done(c, f"零星报销{c.claim_no}已结算，应报销{owed}元")


async def batch_review(request: web.Request, s: operators.Session, v: Values) -> Done:
    done = await agency_ledgers.batch_review(_ledgers(request), _many(v, "claim_nos"), s.login)
    where = f"/console/claims/{quote(done[0].claim_no)}" if len(done) == 1 else "/console/claims"
    return Done(
        where,
        f"结算审核通过{len(done)}笔：{'、'.join(c.claim_no for c in done)}",
        [manual_claims.view(c) for c in done],
    )


async def withdraw(request: web.Request, s: operators.Session, v: Values) -> Done:
    claim_no = text_field(v, "claim_no")
    async with agency_ledgers.connection(await _on_claim(request, claim_no)) as conn:
        c = await manual_claims.withdraw(conn, claim_no, s.login, text_field(v, "reason"))
    return _claim_done(c, f"零星报销{c.claim_no}已撤回")


async def set_account(request: web.Request, s: operators.Session, v: Values) -> Done:
    """A person's payout account, or (given fixmedins_code) an institution's clearing one."""
    institution = text_field(v, "fixmedins_code")
    psn_no = institution or text_field(v, "psn_no")
    setter = payouts.set_institution_account if institution else payouts.set_account
    ledgers = _ledgers(request)
    # An institution's account beside its clearing amounts (main); a person's beside their money.
    where = ledgers.main if institution else await agency_ledgers.of_person(ledgers, psn_no)
    async with agency_ledgers.connection(where) as conn:
        shown = await setter(
            conn,
            psn_no,
            bank_code=text_field(v, "bank_code"),
            bank_name=text_field(v, "bank_name"),
            account_no=text_field(v, "account_no"),
            holder=text_field(v, "holder"),
            operator=s.login,
            reason=text_field(v, "reason"),
        )
    assert shown is not None
    return Done("/console/payouts", f"{psn_no}的收款账户已登记为{shown['account_no']}", shown)


async def make_batch(request: web.Request, s: operators.Session, v: Values) -> Done:
    limit_text, source = text_field(v, "limit"), text_field(v, "source") or None
    if limit_text and not limit_text.isdigit():
        raise BadRequest("每批笔数须为正整数")
    made = await agency_ledgers.make_batches(
        _ledgers(request),
        s.login,
        dt.datetime.now(),
        int(limit_text) if limit_text else None,
        source,
    )
    b, view = made.batches[0]
    said = "；".join(
        f"支付批次{m.batch_no}已制单：{m.line_count}笔，{fen_text(m.total_fen)}元"
        for m, _ in made.batches
    )
    one = len(made.batches) == 1
    where = f"/console/payouts/{quote(b.batch_no)}" if one else "/console/payouts"
    # One shape whatever the split: the first batch, and every batch made (one per database
    # owing something payable) under `batches`.
    doc = {**view, "batches": [v for _, v in made.batches]}
    return Done(where, said + made.note(), doc)


async def approve(request: web.Request, s: operators.Session, v: Values) -> Done:
    batch_no, level_text = text_field(v, "batch_no"), text_field(v, "level")
    if not level_text.isdigit():
        raise BadRequest("审批级别只能为1（初审）、2（一级复核）、3（二级复核）、4（三级复核）")
    level = int(level_text)
    async with agency_ledgers.connection(await _on_batch(request, batch_no)) as conn:
        if "reject" in v:
            b = await payouts.reject(conn, batch_no, level, s.login, text_field(v, "reject"))
            message = f"支付批次{batch_no}已在{payouts.LEVELS[level]}退回，款项已释放"
        else:
            b = await payouts.approve(conn, batch_no, level, s.login)
            message = f"支付批次{batch_no}{payouts.LEVELS[level]}通过"
        view = await payouts.batch_view(conn, b.batch_no)
    return Done(f"/console/payouts/{quote(batch_no)}", message, view)


async def export(request: web.Request, s: operators.Session, v: Values) -> Done:
    batch_no = text_field(v, "batch_no")
    async with agency_ledgers.connection(await _on_batch(request, batch_no)) as conn:
        name, body = await payouts.export(conn, batch_no, s.login)
    return Done(f"/console/payouts/{quote(batch_no)}", f"报盘文件{name}", None, (name, body))


async def import_return(request: web.Request, s: operators.Session, v: Values) -> Done:
    body = v.get("file", b"")
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes) or not body:
        raise BadRequest("请选择银行回盘文件")
    returned = await payouts.read_return(body)
    meant = text_field(v, "batch_no")  # the batch page's own, when the file came from there
    if meant and meant != returned.batch_no:
        raise BadRequest(
            f"回盘文件属于支付批次{returned.batch_no}，不是支付批次{meant}，请核对后再导入"
        )
    async with agency_ledgers.connection(await _on_batch(request, returned.batch_no)) as conn:
        summary = await payouts.apply_return(conn, returned, s.login)
    doc = msgspec.to_builtins(summary)
    doc["paid"] = fen_text(doc.pop("paid_fen"))
    doc["failed"] = fen_text(doc.pop("failed_fen"))
    again = "（同一回盘文件已导入，未作变更）" if summary.again else ""
    return Done(
        f"/console/payouts/{quote(summary.batch_no)}",
        f"支付批次{summary.batch_no}回盘：成功{summary.paid_count}笔{doc['paid']}元，"
        f"失败{summary.failed_count}笔{doc['failed']}元{again}",
        doc,
    )


class Action(NamedTuple):
    """One step as a form's target and an API route: its name in both paths, who may ask."""

    name: str  # /console/<group>/<name> and /api/console/<group>/<name>
    group: str  # claims | payouts
    step: Step
    roles: tuple[str, ...]


ACTIONS = (
    Action("register", "claims", register, (CLERK,)),
    Action("lines", "claims", enter_lines, (CLERK,)),
    Action("review", "claims", review, (REVIEWER,)),
    Action("settle", "claims", settle, (CLERK,)),
    Action("batch-review", "claims", batch_review, (REVIEWER,)),
    Action("withdraw", "claims", withdraw, (CLERK,)),
    Action("account", "payouts", set_account, (CLERK,)),
    Action("batch", "payouts", make_batch, (CLERK,)),
    Action("approve", "payouts", approve, (APPROVER,)),
    Action("export", "payouts", export, (CLERK,)),
    Action("return", "payouts", import_return, (CLERK,)),
)


def _download(name: str, body: bytes) -> web.Response:
    return web.Response(
        body=body,
        content_type="text/plain",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# ------------------------------------------------------------------------------- the forms


_PAGE_PATH = re.compile(r"/console/[A-Za-z0-9/_-]*")


def _page_path(back: str | None, default: str) -> str:
    """A form's `back`: a console page's path alone. Its query and fragment are dropped (found
    from outside: `…?x=1#…` put the step's refusal after the fragment, where it was never
    shown); anything but a console path is the default."""
    path = (back or "").split("#", 1)[0].split("?", 1)[0]
    return path if _PAGE_PATH.fullmatch(path) else default


def _flash_to(session: operators.Session, where: str, kind: str, text: str) -> web.HTTPSeeOther:
    from gateway.emergency import console  # the package imports this module

    query = urlencode({kind: text, "sig": console.flash_signature(session, kind, text)})
    return web.HTTPSeeOther(f"{where}?{query}")


async def _read_form(request: web.Request, session: operators.Session) -> MultiDictProxy[Any]:
    """A form's fields once it is known to come from the console's own page: url-encoded, or
    multipart with the return file (its bytes under `file`, read up to RETURN_MAX_BYTES)."""
    from gateway.emergency import console

    if not console.same_origin(request):
        raise web.HTTPForbidden(text="拒绝来自其他站点的请求")
    fields: MultiDict[Any] = MultiDict()
    try:
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
                    continue
                data = bytearray()
                while chunk := await part.read_chunk(65536):
                    data += chunk
                    if len(data) > RETURN_MAX_BYTES:
                        raise web.HTTPRequestEntityTooLarge(
                            max_size=RETURN_MAX_BYTES, actual_size=len(data)
                        )
                fields.add(part.name, bytes(data) if part.filename else data.decode())
        else:
            for k, val in (await request.post()).items():
                fields.add(k, str(val))
    except (ValueError, UnicodeDecodeError, AssertionError):
        raise web.HTTPBadRequest(text="表单无法识别") from None
    refuse_unreadable(fields)
    if not hmac.compare_digest(
        str(fields.get("csrf", "")).encode(), operators.csrf_token(session).encode()
    ):
        raise web.HTTPForbidden(text="表单已失效，请刷新页面后重试")
    if console.has_nul({k: v for k, v in fields.items() if isinstance(v, str)}):
        raise web.HTTPBadRequest(text=console.CONTROL)
    return MultiDictProxy(fields)


def form_handler(action: Action) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The step as a form's target: the answer is the next page with the step's message, or
    the page it came from with the refusal; an export answers its file."""

    async def handle(request: web.Request) -> web.StreamResponse:
        from gateway.emergency import console

        session = await console.session_of(request)
        if session is None:
            raise web.HTTPSeeOther("/console/login")
        values = await _read_form(request, session)
        back = _page_path(text_field(values, "back"), f"/console/{action.group}")
        if session.role not in action.roles:
            # Someone outside the agency's staff cannot read its pages either: told on the
            # console's own page (found from outside: a viewer was sent to a page answering 403).
            where = back if session.role in STAFF else "/console"
            raise _flash_to(session, where, "err", refused_role(session))
        try:
            done = await action.step(request, session, values)
        except GatewayError as exc:
            raise _flash_to(session, back, "err", exc.err_msg) from None
        if done.file is not None:
            return _download(*done.file)
        raise _flash_to(session, done.where, "msg", done.message)

    return handle


# --------------------------------------------------------------------------------- the API


def api_handler(
    action: Action,
) -> Callable[[web.Request, operators.Session], Awaitable[web.Response]]:
    """The step behind the console's API guard (its role checked there): a JSON body in, the
    step's document (or its file) out; a refusal is `{"error": …}`."""

    async def handle(request: web.Request, session: operators.Session) -> web.Response:
        from gateway.emergency import console

        try:
            if action.step is import_return:
                doc = await _big_json(request)
            else:
                doc = await console.json_body(request)
        except console.Refused as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        try:
            done = await action.step(request, session, doc)
        except GatewayError as exc:
            return web.json_response({"error": exc.err_msg}, status=_status_of(exc))
        if done.file is not None:
            return _download(*done.file)
        return web.json_response(done.doc)

    return handle


async def _big_json(request: web.Request) -> dict[str, Any]:
    """The return file's JSON body (`{"file": "<the file's text>"}`), read up to its limit."""
    from gateway.emergency import console

    data = bytearray()
    while chunk := await request.content.read(65536):
        data += chunk
        if len(data) > RETURN_MAX_BYTES:
            raise console.Refused(413, "回盘文件过大")
    doc = console._decode_json(bytes(data))
    if not isinstance(doc, dict):
        raise console.Refused(400, "请求体应为JSON对象")
    return doc


async def api_claims(request: web.Request, session: operators.Session) -> web.Response:
    status = request.query.get("status") or None
    if status not in (None, *manual_claims.STATUS_NAMES):
        known = "、".join(manual_claims.STATUS_NAMES)
        return web.json_response({"error": f"状态只能为{known}"}, status=400)
    try:
        found = await agency_ledgers.claims(_ledgers(request), status)
    except GatewayError as exc:
        return web.json_response({"error": exc.err_msg}, status=_status_of(exc))
    return web.json_response([manual_claims.view(c) for c in found])


async def api_claim(request: web.Request, session: operators.Session) -> web.Response:
    try:
        form = await _claim_form(request)
    except GatewayError as exc:
        return web.json_response({"error": exc.err_msg}, status=_status_of(exc))
    return web.json_response(claim_form.as_json(form))


async def _claim_form(request: web.Request) -> claim_form.ClaimForm:
    claim_no = request.match_info["claim_no"]
    async with agency_ledgers.connection(await _on_claim(request, claim_no)) as conn:
        return await claim_form.gather(conn, request.app[GATEWAY].snapshot, claim_no)


async def _payouts_overview(ledgers: Partitions) -> dict[str, Any]:
    """What is owed, without an account and batched, over every database."""

    async def each(conn: asyncpg.Connection) -> tuple[Any, ...]:
        await payouts.gather(conn)
        return await payout_store.totals(conn), await payout_store.owed_without_account(conn)

    found = await agency_ledgers.across(ledgers, each)
    totals = payouts.summed(part for part, _ in found)
    without = sorted({p for _, part in found for p in part})
    return {
        "totals": {
            state: {"count": n, "amount": fen_text(fen)} for state, (n, fen) in totals.items()
        },
        "without_account": without,
        "batches": [
            {
                "batch_no": b.batch_no,
                "status": b.status,
                "status_name": payouts.STATUS_NAMES[b.status],
                "count": b.line_count,
                "total": fen_text(b.total_fen),
                "created_by": b.created_by,
                "created_at": b.created_at.astimezone().isoformat(),
            }
            for b in await agency_ledgers.batches(ledgers)
        ],
    }


async def api_payouts(request: web.Request, session: operators.Session) -> web.Response:
    try:
        return web.json_response(await _payouts_overview(_ledgers(request)))
    except GatewayError as exc:
        return web.json_response({"error": exc.err_msg}, status=_status_of(exc))


async def api_batch(request: web.Request, session: operators.Session) -> web.Response:
    try:
        view = await _batch_view(request)
    except GatewayError as exc:
        return web.json_response({"error": exc.err_msg}, status=_status_of(exc))
    return web.json_response(view)


async def _batch_view(request: web.Request) -> dict[str, Any]:
    batch_no = request.match_info["batch_no"]
    async with agency_ledgers.connection(await _on_batch(request, batch_no)) as conn:
        return await payouts.batch_view(conn, batch_no)


# ------------------------------------------------------------------------------- the pages


async def _page_session(request: web.Request) -> operators.Session:
    from gateway.emergency import console

    session = await console.session_of(request)
    if session is None:
        raise web.HTTPSeeOther("/console/login")
    if session.role not in STAFF:
        raise web.HTTPForbidden(text=refused_role(session))
    return session


def _chrome(request: web.Request, session: operators.Session) -> agency_pages.Chrome:
    from gateway.emergency import console

    return agency_pages.Chrome(
        login=session.login,
        role=session.role,
        role_name=ROLE_NAMES.get(session.role, session.role),
        csrf=operators.csrf_token(session),
        message=console.shown(request, session, "msg"),
        error=console.shown(request, session, "err"),
        back=request.path,
    )


async def claims_page(request: web.Request) -> web.Response:
    session = await _page_session(request)
    status = request.query.get("status") or None
    if status not in (None, *manual_claims.STATUS_NAMES):
        status = None
    found = await agency_ledgers.claims(_ledgers(request), status)
    html = agency_pages.claims(
        _chrome(request, session), [manual_claims.view(c) for c in found], status
    )
    return web.Response(text=html, content_type="text/html")


async def claim_page(request: web.Request) -> web.Response:
    session = await _page_session(request)
    try:
        form = await _claim_form(request)
    except NotFound as exc:
        raise web.HTTPNotFound(text=exc.err_msg) from None
    html = agency_pages.claim(_chrome(request, session), claim_form.as_json(form))
    return web.Response(text=html, content_type="text/html")


async def claim_print(request: web.Request) -> web.Response:
    """The printable claim form (零星报销结算单) of a settled claim."""
    await _page_session(request)
    try:
        html = claim_form.to_html(await _claim_form(request))
    except NotFound as exc:
        raise web.HTTPNotFound(text=exc.err_msg) from None
    except GatewayError as exc:
        raise web.HTTPConflict(text=exc.err_msg) from None
    return web.Response(text=html, content_type="text/html")


async def payouts_page(request: web.Request) -> web.Response:
    session = await _page_session(request)
    overview = await _payouts_overview(_ledgers(request))
    html = agency_pages.payouts(_chrome(request, session), overview)
    return web.Response(text=html, content_type="text/html")


async def batch_page(request: web.Request) -> web.Response:
    session = await _page_session(request)
    try:
        view = await _batch_view(request)
    except NotFound as exc:
        raise web.HTTPNotFound(text=exc.err_msg) from None
    html = agency_pages.batch(_chrome(request, session), view, payouts.LEVELS)
    return web.Response(text=html, content_type="text/html")
