"""A counter's first steps against a running gateway: signed calls with the demo credentials.

`python -m gateway demo call` sends one transaction; `demo visit`, `demo stay` and `demo pharmacy`
walk an outpatient visit, an inpatient stay and a pharmacy sale with its cancellation through
the gateway (`make run`'s address by default), as a HIS or POS would, dated today, and show
each call by its infno with the answer's key figures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from gateway.pipeline.auth import load_credentials, sign_headers

DEFAULT_URL = "http://127.0.0.1:8080"  # `make run`
CALL_SERVICE = "/fsi/api/rsfComIfsService/callService"
DEMO_CREDENTIALS = Path(__file__).resolve().parents[2] / "config" / "demo" / "credentials.toml"
HOSPITAL = "H44180000001"  # 清远演示三级医院
PHARMACY = "P44180000001"  # 清远演示大药房
PHARMACY_INFNOS = frozenset({"2101", "2102", "2103"})
REGION = "441800"
CIVIL_SERVANT = "441800000000000003"  # 演示公务员丙: outpatient visit
RETIREE = "441800000000000002"  # 演示退休乙: inpatient stay
EMPLOYEE = "441800000000000001"  # 演示职工甲: pharmacy sale
# What each step shows of its answer: the national field names, where they are in `output`.
SETTLEMENT_FIGURES = (
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "psn_cash_pay",
    "balc",
)

# Amounts keep their exact decimal text both ways: 19.80 goes out and comes back as 19.80.
_answers = msgspec.json.Decoder(float_hook=Decimal)
_requests = msgspec.json.Encoder(decimal_format="number")
_last_stamp = ("", -1)  # the last (second, tenth of a millisecond) this process handed out


class DemoError(Exception):
    """The gateway refused a step, or could not be reached; the message says which."""


class NotAnswered(DemoError):
    """Nothing was answered: the gateway could not be reached, or `--url` names no gateway."""


def default_institution(infno: str) -> str:
    """The pharmacy for pharmacy transactions, the hospital otherwise."""
    return PHARMACY if infno in PHARMACY_INFNOS else HOSPITAL


def _now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def stamp() -> str:
    """yyyyMMddHHmmss and four digits of the second's tenths of a millisecond, never the same
    twice and never ahead of the clock, so that the next demo command, a process started later,
    cannot hand out one of the last command's (a counter restarting in each process would, within
    the same second, and the gateway refuses a used msgid with a different body)."""
    global _last_stamp
    while True:
        now = dt.datetime.now()
        current = (now.strftime("%Y%m%d%H%M%S"), now.microsecond // 100)
        # A clock set back by a second or more starts afresh rather than waiting it out.
        if current > _last_stamp or current[0] < _last_stamp[0]:
            _last_stamp = current
            return f"{current[0]}{current[1]:04d}"
        time.sleep(0.0001)  # within the last stamp's tenth of a millisecond


def _text(value: Any) -> str:
    """A figure as the answer wrote it (a Decimal keeps its digits: 19.80 stays 19.80)."""
    return "" if value is None else str(value)


@dataclass
class Step:
    """One call of a flow as shown: its infno, what it is, and the answer's key figures."""

    infno: str
    name: str
    figures: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        shown = "  ".join(f"{k} {v}" for k, v in self.figures.items())
        return f"{self.infno} {self.name}" + (f"  {shown}" if shown else "")


class DemoClient:
    """One institution's counter: envelopes as a HIS fills them, signed with x-tif headers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str = DEFAULT_URL,
        institution: str = HOSPITAL,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.institution = institution
        self.credentials = (
            dict(credentials) if credentials is not None else load_credentials(DEMO_CREDENTIALS)
        )
        if institution not in self.credentials:
            raise DemoError(f"no demo secret for institution {institution} in {DEMO_CREDENTIALS}")

    def msgid(self) -> str:
        """定点医药机构编号 + yyyyMMddHHmmss + four digits, as the national interface has it."""
        return f"{self.institution}{stamp()}"

    def envelope(self, infno: str, input_: Any) -> dict[str, Any]:
        """公共输入 around `input`."""
        return {
            "infno": infno,
            "msgid": self.msgid(),
            "mdtrtarea_admvs": REGION,
            "insuplc_admdvs": REGION,
            "recer_sys_code": "YBXT",
            "dev_no": "DEMO-01",
            "dev_safe_info": "",
            "cainfo": "",
            "signtype": "",
            "infver": "V1.0",
            "opter_type": "1",
            "opter": "DEMO",
            "opter_name": "演示收费员",
            "inf_time": _now(),
            "fixmedins_code": self.institution,
            "fixmedins_name": "",
            "sign_no": "",
            "input": input_,
        }

    def headers(self) -> dict[str, str]:
        """x-tif headers with a fresh nonce (the gateway accepts each nonce once)."""
        return {
            "Content-Type": "application/json",
            **sign_headers(self.institution, self.credentials[self.institution], uuid.uuid4().hex),
        }

    async def post(self, infno: str, input_: Any) -> bytes:
        """Send one transaction; the answer exactly as the gateway wrote it."""
        body = _requests.encode(self.envelope(infno, input_))
        try:
            async with self.session.post(
                self.url + CALL_SERVICE, data=body, headers=self.headers()
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            # Found from outside: `--url localhost:8080` (no scheme) printed a traceback.
            raise NotAnswered(
                f"网关地址 {self.url} 无效：应写作 http://主机:端口，如 {DEFAULT_URL}"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise NotAnswered(
                f"无法连接网关 {self.url}（{exc.__class__.__name__}）：请先在另一个终端运行 make run"
            ) from exc
        if status != 200:
            raise DemoError(f"网关 {self.url} 答复 HTTP {status}：{_head(raw)}")
        return raw

    async def call(self, infno: str, input_: Any) -> dict[str, Any]:
        """Send one transaction; the whole answer (amounts as Decimal)."""
        return decode_answer(await self.post(infno, input_))

    async def ok(self, infno: str, input_: Any) -> dict[str, Any]:
        """Send and require infcode 0; the `output` node."""
        answer = await self.call(infno, input_)
        if answer.get("infcode") != 0:
            raise DemoError(f"{infno} 被拒绝：{answer.get('err_msg')}")
        output = answer.get("output")
        return output if isinstance(output, dict) else {}


def _head(raw: bytes) -> str:
    return raw[:200].decode(errors="replace")


def decode_answer(raw: bytes) -> dict[str, Any]:
    """An answer's JSON object; DemoError when it is not one."""
    try:
        answer = _answers.decode(raw)
    except msgspec.DecodeError as exc:
        raise DemoError(f"网关答复不是JSON：{_head(raw)}") from exc
    if not isinstance(answer, dict):
        raise DemoError(f"网关答复不是JSON对象：{_head(raw)}")
    return answer


def _figures(node: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    return {name: _text(node[name]) for name in names if name in node}


def _settled(setlinfo: Mapping[str, Any]) -> dict[str, str]:
    return _figures(setlinfo, ("setl_id", *SETTLEMENT_FIGURES))


Show = Callable[[Step], None]

# Lines the demo institutions map (config/demo/mappings.csv); amounts are decimal text as a HIS
# sends them.
VISIT_LINES = (
    ("ZL0001", "25", "1", "25.00"),
    ("YP0003", "40", "2", "80.00"),
    ("YP0010", "35", "1", "35.00"),
)
STAY_LINES = (
    ("ZL0003", "60", "10", "600.00"),
    ("ZL0008", "20", "20", "400.00"),
    ("ZL0004", "30", "10", "300.00"),
)
SALE_LINES = (("YP0007", "9.9", "2", "19.80"),)


def _total(lines: tuple[tuple[str, str, str, str], ...]) -> str:
    return f"{sum(Decimal(line[3]) for line in lines):.2f}"


def _fee_rows(
    mdtrt_id: str, psn_no: str, lines: tuple[tuple[str, str, str, str], ...], chrg_bchno: str
) -> list[dict[str, Any]]:
    now = _now()
    return [
        {
            "feedetl_sn": str(n),
            "mdtrt_id": mdtrt_id,
            "psn_no": psn_no,
            "chrg_bchno": chrg_bchno,
            "rx_circ_flag": "0",
            "fee_ocur_time": now,
            "med_list_codg": "",
            "medins_list_codg": code,
            "det_item_fee_sumamt": amount,
            "cnt": cnt,
            "pric": pric,
            "bilg_dept_codg": "K01",
            "bilg_dept_name": "内科",
            "bilg_dr_codg": "D001",
            "bilg_dr_name": "演示医生",
            "hosp_appr_flag": "1",
        }
        for n, (code, pric, cnt, amount) in enumerate(lines, start=1)
    ]


def _run_no(prefix: str) -> str:
    """A visit or admission number of the counter's own, new on every run."""
    return f"{prefix}{stamp()}"


async def visit(client: DemoClient, show: Show) -> list[Step]:
    """An outpatient visit: person, sign-in, registration, diagnosis, fees, pre-settlement,
    settlement, the settlement looked up again, sign-out."""
    steps: list[Step] = []

    def done(step: Step) -> None:
        steps.append(step)
        show(step)

    psn_no = CIVIL_SERVANT
    person = await client.ok(
        "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "441802198203033456"}}
    )
    base = person.get("baseinfo", {})
    insu = (person.get("insuinfo") or [{}])[0]
    done(
        Step(
            "1101",
            "人员信息获取",
            {"psn_no": base.get("psn_no", ""), "psn_name": base.get("psn_name", "")}
            | _figures(insu, ("insutype", "balc")),
        )
    )
    signed = await client.ok("9001", {"signIn": {"opter_no": "DEMO", "mac": "", "ip": ""}})
    sign_no = str(signed.get("signinoutb", {}).get("sign_no", ""))
    done(Step("9001", "签到", {"sign_no": sign_no}))
    begntime = _now()
    registered = await client.ok(
        "2201",
        {
            "data": {
                "psn_no": psn_no,
                "insutype": "310",
                "begntime": begntime,
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": "441802198203033456",
                "ipt_otp_no": _run_no("MZ"),
                "atddr_no": "D001",
                "dr_name": "演示医生",
                "dept_code": "K01",
                "dept_name": "内科",
                "caty": "A03",
            }
        },
    )
    mdtrt_id = str(registered.get("data", {}).get("mdtrt_id", ""))
    done(Step("2201", "门诊挂号", {"mdtrt_id": mdtrt_id}))
    await client.ok(
        "2203",
        {
            "mdtrtinfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": psn_no,
                "med_type": "11",
                "begntime": begntime,
                "dise_codg": "",
                "dise_name": "",
            },
            "diseinfo": [
                {
                    "diag_type": "1",
                    "diag_srt_no": 1,
                    "diag_code": "J06.900",
                    "diag_name": "上呼吸道感染",
                    "diag_dept": "内科",
                    "dise_dor_no": "D001",
                    "dise_dor_name": "演示医生",
                    "diag_time": begntime,
                    "vali_flag": "1",
                }
            ],
        },
    )
    done(Step("2203", "门诊就诊信息上传", {"med_type": "11", "diag_code": "J06.900"}))
    total = _total(VISIT_LINES)
    uploaded = await client.ok(
        "2204", {"feedetail": _fee_rows(mdtrt_id, psn_no, VISIT_LINES, "B1")}
    )
    done(
        Step(
            "2204",
            "门诊费用明细上传",
            {"lines": str(len(uploaded.get("result", []))), "total": total},
        )
    )
    settle = {
        "data": {
            "psn_no": psn_no,
            "mdtrt_cert_type": "02",
            "mdtrt_cert_no": "441802198203033456",
            "med_type": "11",
            "medfee_sumamt": total,
            "psn_setlway": "01",
            "mdtrt_id": mdtrt_id,
            "chrg_bchno": "B1",
            "acct_used_flag": "1",
            "insutype": "310",
            "invono": "",
        }
    }
    pre = await client.ok("2206", settle)
    done(Step("2206", "门诊预结算", _figures(pre.get("setlinfo", {}), SETTLEMENT_FIGURES)))
    settled = (await client.ok("2207", settle)).get("setlinfo", {})
    done(Step("2207", "门诊结算", _settled(settled)))
    found = await client.ok(
        "5203", {"data": {"psn_no": psn_no, "setl_id": settled.get("setl_id", "")}}
    )
    done(
        Step(
            "5203",
            "结算信息查询",
            _figures(found.get("setlinfo", {}), ("setl_id", "medfee_sumamt")),
        )
    )
    await client.ok("9002", {"signOut": {"sign_no": sign_no, "opter_no": "DEMO"}})
    done(Step("9002", "签退", {"sign_no": sign_no}))
    return steps


async def stay(client: DemoClient, show: Show) -> list[Step]:
    """An inpatient stay: admission, fee lines, pre-settlement, discharge, final settlement."""
    steps: list[Step] = []

    def done(step: Step) -> None:
        steps.append(step)
        show(step)

    psn_no = RETIREE
    admitted = await client.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": psn_no,
                "insutype": "310",
                "begntime": _now(),
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": "441802195505052345",
                "med_type": "21",
                "ipt_no": _run_no("ZY"),
                "atddr_no": "D001",
                "chfpdr_name": "演示医生",
                "adm_diag_dscr": "肺炎",
                "adm_dept_codg": "K01",
                "adm_dept_name": "内科",
                "adm_bed": "3",
                "dscg_maindiag_code": "J18.900",
                "dscg_maindiag_name": "肺炎",
            },
            "diseinfo": [],
        },
    )
    mdtrt_id = str(admitted.get("result", {}).get("mdtrt_id", ""))
    done(Step("2401", "入院办理", {"mdtrt_id": mdtrt_id}))
    total = _total(STAY_LINES)
    uploaded = await client.ok("2301", {"feedetail": _fee_rows(mdtrt_id, psn_no, STAY_LINES, "")})
    done(
        Step(
            "2301",
            "住院费用明细上传",
            {"lines": str(len(uploaded.get("result", []))), "total": total},
        )
    )
    # The national 2303/2304 carry no med_type: the admission (2401) already said 21.
    settle = {
        "data": {
            "psn_no": psn_no,
            "mdtrt_cert_type": "02",
            "mdtrt_cert_no": "441802195505052345",
            "medfee_sumamt": total,
            "psn_setlway": "01",
            "mdtrt_id": mdtrt_id,
            "insutype": "310",
            "acct_used_flag": "0",
            "mid_setl_flag": "0",
            "invono": "",
        }
    }
    pre = await client.ok("2303", settle)
    done(Step("2303", "住院预结算", _figures(pre.get("setlinfo", {}), SETTLEMENT_FIGURES)))
    await client.ok(
        "2402",
        {
            "dscginfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": psn_no,
                "insutype": "310",
                "endtime": _now(),
                "dscg_dept_codg": "K01",
                "dscg_dept_name": "内科",
                "dscg_way": "1",
            },
            "diseinfo": [],
        },
    )
    done(Step("2402", "出院办理", {"mdtrt_id": mdtrt_id}))
    settled = (await client.ok("2304", settle)).get("setlinfo", {})
    done(Step("2304", "住院结算", _settled(settled) | _figures(settled, ("act_pay_dedc",))))
    return steps


async def pharmacy(client: DemoClient, show: Show) -> list[Step]:
    """A pharmacy sale paid from the personal account, then cancelled: the money goes back."""
    steps: list[Step] = []

    def done(step: Step) -> None:
        steps.append(step)
        show(step)

    psn_no = EMPLOYEE
    now = _now()
    total = _total(SALE_LINES)
    sale = {
        "druginfo": {
            "psn_no": psn_no,
            "mdtrt_cert_type": "02",
            "mdtrt_cert_no": "441802199001011234",
            "begntime": now,
            "medfee_sumamt": total,
            "insutype": "310",
            "dise_codg": "",
            "dise_name": "",
            "acct_used_flag": "1",
            "med_type": "41",
        },
        "drugdetail": [
            {
                "feedetl_sn": str(n),
                "rxno": "",
                "rx_circ_flag": "0",
                "fee_ocur_time": now,
                "med_list_codg": "",
                "medins_list_codg": code,
                "det_item_fee_sumamt": amount,
                "cnt": cnt,
                "pric": pric,
                "bilg_dr_codg": "D001",
                "bilg_dr_name": "演示医生",
            }
            for n, (code, pric, cnt, amount) in enumerate(SALE_LINES, start=1)
        ],
    }
    pre = await client.ok("2101", sale)
    done(Step("2101", "药店预结算", _figures(pre.get("setlinfo", {}), SETTLEMENT_FIGURES)))
    settled = (await client.ok("2102", sale)).get("setlinfo", {})
    done(Step("2102", "药店结算", _settled(settled)))
    cancelled = await client.ok(
        "2103",
        {
            "data": {
                "setl_id": settled.get("setl_id", ""),
                "mdtrt_id": settled.get("mdtrt_id", ""),
                "psn_no": psn_no,
            }
        },
    )
    # Pharmacy clients read a cancellation's cash as cash_payamt; the amounts come negated.
    figures = ("setl_id", "medfee_sumamt", "fund_pay_sumamt", "acct_pay", "cash_payamt", "balc")
    done(Step("2103", "药店结算撤销", _figures(cancelled.get("setlinfo", {}), figures)))
    return steps


FLOWS: dict[str, Callable[[DemoClient, Show], Any]] = {
    "visit": visit,
    "stay": stay,
    "pharmacy": pharmacy,
}
FLOW_INSTITUTIONS = {"visit": HOSPITAL, "stay": HOSPITAL, "pharmacy": PHARMACY}


async def run_flow(name: str, url: str, show: Show) -> list[Step]:
    """One of FLOWS against the gateway at `url`."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        client = DemoClient(session, url, FLOW_INSTITUTIONS[name])
        steps: list[Step] = await FLOWS[name](client, show)
        return steps


async def call_once(infno: str, input_: Any, institution: str, url: str) -> bytes:
    """One transaction, signed as `institution`; the answer as the gateway wrote it."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        return await DemoClient(session, url, institution).post(infno, input_)


def read_input(text: str) -> Any:
    """`--input`: JSON text, or @path to a file of it; numbers keep their decimal text."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise DemoError(f"cannot read {text[1:]}: {exc.strerror}") from exc
    try:
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise DemoError(f"--input is not JSON ({exc.msg} at character {exc.pos})") from exc


def call_command(infno: str, input_text: str, institution: str | None, url: str) -> int:
    """`demo call`: print the answer; 0 when it is infcode 0, 1 when refused, 2 when not sent."""
    try:
        input_ = read_input(input_text)
        raw = asyncio.run(call_once(infno, input_, institution or default_institution(infno), url))
        answer = decode_answer(raw)
    except DemoError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(msgspec.json.format(raw, indent=2).decode())
    return 0 if answer.get("infcode") == 0 else 1


def flow_command(name: str, url: str) -> int:
    """`demo visit|stay|pharmacy`: one line per call; 1 at the first refusal."""
    institution = FLOW_INSTITUTIONS[name]
    print(f"{name}: {institution} → {url}", flush=True)
    try:
        asyncio.run(run_flow(name, url, lambda step: print(step.line(), flush=True)))
    except DemoError as exc:
        print(exc, file=sys.stderr)
        return 2 if isinstance(exc, NotAnswered) else 1
    return 0
