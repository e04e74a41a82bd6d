"""`python -m gateway demo call|visit|stay|pharmacy`: signed calls with the demo credentials
against a gateway that requires signatures, and what they leave in the ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import sys
from decimal import Decimal
from pathlib import Path

from gateway.app import demo_client
from gateway.app.demo_client import DemoClient, Step
from tests.integration.conftest import Server

ROOT = Path(__file__).resolve().parents[2]


async def _cli(*args: str, tz: str | None = None) -> tuple[int, str, str]:
    """`python -m gateway …` as a newcomer types it (awaited, so the gateway keeps serving)."""
    env = None if tz is None else {**os.environ, "TZ": tz}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _fen(text: str) -> int:
    return int(Decimal(text) * 100)


async def test_stamps_never_repeat_across_commands_run_one_after_another() -> None:
    """Two demo commands in a row are two processes, often within the same second."""
    stamps: list[str] = []
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from gateway.app.demo_client import stamp\nfor _ in range(100): print(stamp())",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        stamps += out.decode().split()
    assert len(stamps) == 200
    assert all(len(s) == 18 and s.isdigit() for s in stamps)
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


async def test_an_unsigned_call_is_refused_and_the_demo_call_is_answered(server: Server) -> None:
    envelope = {"infno": "1101", "msgid": "H4418000000120260101000000001", "input": {}}
    async with server.session.post(server.url + demo_client.CALL_SERVICE, json=envelope) as resp:
        refused = await resp.json()
    assert refused["infcode"] == -1 and "x-tif-paasid" in refused["err_msg"]

    code, out, err = await _cli(
        "demo",
        "call",
        "1101",
        "--input",
        '{"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "441802198203033456"}}',
        "--url",
        server.url,
    )
    assert code == 0, err
    answer = json.loads(out, parse_float=Decimal)
    assert answer["infcode"] == 0
    assert answer["output"]["baseinfo"]["psn_no"] == demo_client.CIVIL_SERVANT
    assert answer["output"]["insuinfo"][0]["balc"] == Decimal("3000.00")


async def test_a_refused_call_prints_the_clerks_message_and_exits_1(server: Server) -> None:
    code, out, _ = await _cli(
        "demo",
        "call",
        "1101",
        "--input",
        '{"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "000000000000000000"}}',
        "--url",
        server.url,
    )
    assert code == 1
    answer = json.loads(out)
    assert answer["infcode"] == -1 and answer["err_msg"]


async def test_no_gateway_and_bad_input_are_explained_not_tracebacks(server: Server) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, out, err = await _cli("demo", "call", "1101", "--input", "{}", "--url", closed)
    assert code == 2 and out == ""
    assert "make run" in err and "Traceback" not in err
    code, out, err = await _cli("demo", "call", "1101", "--input", "{data:", "--url", server.url)
    assert code == 2 and "--input is not JSON" in err and "Traceback" not in err
    # A flow that reached no gateway answered nothing: 2, as `demo call` (README).
    code, _, err = await _cli("demo", "visit", "--url", closed)
    assert code == 2 and "make run" in err and "Traceback" not in err
    # Found from outside: an address without its scheme, or not http, printed a traceback.
    for url in ("localhost:8080", "htp:/x", "http://127.0.0.1:99999"):
        for argv in (("call", "1101", "--input", "{}"), ("pharmacy",)):
            code, out, err = await _cli("demo", *argv, "--url", url)
            assert code == 2 and f"网关地址 {url} 无效" in err and "Traceback" not in err, err


async def test_visit_settles_today_from_the_account(server: Server) -> None:
    his = DemoClient(server.session, server.url, demo_client.HOSPITAL)
    assert len(his.msgid()) == 30 and his.msgid().startswith(demo_client.HOSPITAL)
    shown: list[Step] = []
    steps = await demo_client.visit(his, shown.append)
    assert shown == steps
    assert [s.infno for s in steps] == [
        "1101",
        "9001",
        "2201",
        "2203",
        "2204",
        "2206",
        "2207",
        "5203",
        "9002",
    ]
    settled = steps[6].figures
    row = await server.fetchrow(
        "SELECT status, setl_time, medfee_sumamt, acct_pay, fixmedins_code FROM settlements"
        " WHERE setl_id = $1",
        settled["setl_id"],
    )
    assert row is not None and row["status"] == "settled"
    assert row["setl_time"].date() == dt.date.today()
    assert row["fixmedins_code"] == demo_client.HOSPITAL
    assert row["medfee_sumamt"] == 14000 == _fen(settled["medfee_sumamt"])
    assert row["acct_pay"] == _fen(settled["acct_pay"])
    balance = await server.fetchval(
        "SELECT balance_fen FROM accounts WHERE psn_no = $1", demo_client.CIVIL_SERVANT
    )
    assert balance == _fen(settled["balc"]) == 300000 - row["acct_pay"]
    # Run twice: each run is a new visit (its own msgids and outpatient number).
    again = await demo_client.visit(his, lambda _: None)
    assert again[6].figures["setl_id"] != settled["setl_id"]


async def test_stay_is_admitted_discharged_and_settled(server: Server) -> None:
    his = DemoClient(server.session, server.url, demo_client.HOSPITAL)
    steps = await demo_client.stay(his, lambda _: None)
    assert [s.infno for s in steps] == ["2401", "2301", "2303", "2402", "2304"]
    mdtrt_id = steps[0].figures["mdtrt_id"]
    pre, final = steps[2].figures, steps[4].figures
    assert pre["medfee_sumamt"] == final["medfee_sumamt"] == "1300.00"
    assert pre["fund_pay_sumamt"] == final["fund_pay_sumamt"]
    row = await server.fetchrow(
        "SELECT s.status, s.med_type, s.medfee_sumamt, s.fund_pay_sumamt, s.setl_time,"
        " e.status AS visit FROM settlements s JOIN encounters e USING (mdtrt_id)"
        " WHERE s.setl_id = $1",
        final["setl_id"],
    )
    assert row is not None
    assert row["status"] == "settled" and row["med_type"] == "21"
    assert row["medfee_sumamt"] == 130000 and row["fund_pay_sumamt"] == _fen(
        final["fund_pay_sumamt"]
    )
    assert row["setl_time"].date() == dt.date.today()
    assert (
        await server.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", mdtrt_id) == 1
    )


async def test_pharmacy_sale_and_cancellation_leave_the_balance_as_it_was(
    server: Server,
) -> None:
    before = await server.fetchval(
        "SELECT balance_fen FROM accounts WHERE psn_no = $1", demo_client.EMPLOYEE
    )
    code, out, err = await _cli("demo", "pharmacy", "--url", server.url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"pharmacy: {demo_client.PHARMACY} → {server.url}"
    assert [ln.split()[0] for ln in lines[1:]] == ["2101", "2102", "2103"]
    sold = dict(zip(*[iter(lines[2].split()[2:])] * 2, strict=True))
    cancelled = dict(zip(*[iter(lines[3].split()[2:])] * 2, strict=True))
    assert sold["medfee_sumamt"] == "19.80" and cancelled["medfee_sumamt"] == "-19.80"
    assert _fen(cancelled["acct_pay"]) == -_fen(sold["acct_pay"]) < 0
    assert _fen(sold["balc"]) == before - _fen(sold["acct_pay"])
    assert _fen(cancelled["balc"]) == before
    row = await server.fetchrow(
        "SELECT status, fixmedins_code FROM settlements WHERE setl_id = $1", sold["setl_id"]
    )
    assert row is not None and row["fixmedins_code"] == demo_client.PHARMACY
    assert row["status"] != "settled"
    assert (
        await server.fetchval(
            "SELECT balance_fen FROM accounts WHERE psn_no = $1", demo_client.EMPLOYEE
        )
        == before
    )


async def test_the_demo_dates_its_requests_in_beijing_time_whatever_the_zone() -> None:
    """Found from outside: `make demo` on a machine kept in UTC dated its fees eight hours back
    against `make run`'s Beijing-time gateway, silently; `make demo` runs in Beijing time as
    `make run` does, and the demo run by hand in another zone runs in it too, and says so."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    _, _, err = await _cli("demo", "call", "1101", "--input", "{}", "--url", closed, tz="UTC0")
    assert "UTC+0" in err and "it runs in Beijing time (TZ=CST-8)" in err, err
    _, _, err = await _cli("demo", "call", "1101", "--input", "{}", "--url", closed, tz="CST-8")
    assert "note:" not in err, err
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    flows = [line for line in demo.splitlines() if "gateway demo" in line]
    assert len(flows) == 3 and all('TZ="$${TZ:-CST-8}"' in line for line in flows), flows
