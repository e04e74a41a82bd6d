"""A test HIS/POS client: builds envelopes the way real clients do and posts them over HTTP."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from gateway.pipeline.auth import load_credentials, sign_headers

CALL_SERVICE = "/fsi/api/rsfComIfsService/callService"
_seq = itertools.count(1)
CREDENTIALS = load_credentials(
    Path(__file__).resolve().parents[2] / "config" / "demo" / "credentials.toml"
)
_answers = msgspec.json.Decoder(float_hook=Decimal)


def decode(body: bytes) -> dict[str, Any]:
    """Decode an answer keeping every number's exact text as a Decimal."""
    value = _answers.decode(body)
    assert isinstance(value, dict)
    return value


def certificate(psn_no: str) -> dict[str, str]:
    """就诊凭证 fields that identify psn_no: its e-voucher (01), whose token the demo ledger
    resolves to the person as 1101 does. The gateway refuses a certificate of anyone else."""
    return {"mdtrt_cert_type": "01", "mdtrt_cert_no": psn_no}


def amount_text(value: Any) -> str:
    """An answered amount as two-decimal text (answers carry exact decimals)."""
    return f"{Decimal(value):.2f}" if value is not None else "None"


def refusal_words(answer: dict[str, Any]) -> str:
    """A refused answer's err_msg (asserting the refusal)."""
    assert answer["infcode"] == -1, answer
    message = answer["err_msg"]
    assert isinstance(message, str)
    return message


class HisClient:
    """One institution's HIS (or pharmacy POS) talking to the gateway."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        fixmedins_code: str,
        region: str = "441800",
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.fixmedins_code = fixmedins_code
        self.region = region

    def msgid(self) -> str:
        """定点医药机构编号 + yyyyMMddHHmmss + a 4-digit sequence, unique within the run."""
        n = next(_seq)
        return f"{self.fixmedins_code}{dt.datetime.now():%Y%m%d%H%M%S}{n % 10000:04d}{n // 10000}"

    def envelope(
        self, infno: str, input_: Any, *, msgid: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """公共输入 as a HIS fills it."""
        env: dict[str, Any] = {
            "infno": infno,
            "msgid": msgid or self.msgid(),
            "mdtrtarea_admvs": self.region,
            "insuplc_admdvs": self.region,
            "recer_sys_code": "YBXT",
            "dev_no": "DEV-01",
            "dev_safe_info": "",
            "cainfo": "",
            "signtype": "",
            "infver": "V1.0",
            "opter_type": "1",
            "opter": "OP001",
            "opter_name": "收费员",
            "inf_time": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
            "fixmedins_code": self.fixmedins_code,
            "fixmedins_name": "演示机构",
            "sign_no": "",
            "input": input_,
        }
        env.update(extra)
        return env

    def headers(self) -> dict[str, str]:
        """Signed x-tif headers for this institution (a fresh nonce each time)."""
        return {
            "Content-Type": "application/json",
            **sign_headers(self.fixmedins_code, CREDENTIALS[self.fixmedins_code], uuid.uuid4().hex),
        }

    async def post_raw(self, body: bytes, path: str = CALL_SERVICE) -> tuple[int, bytes]:
        """POST bytes, signed; returns the HTTP status and the answer bytes."""
        async with self.session.post(
            self.base_url + path, data=body, headers=self.headers()
        ) as resp:
            return resp.status, await resp.read()

    async def call(self, infno: str, input_: Any, **kw: Any) -> dict[str, Any]:
        """Send one transaction; returns the decoded answer (asserting HTTP 200)."""
        body = msgspec.json.encode(self.envelope(infno, input_, **kw))
        status, raw = await self.post_raw(body)
        assert status == 200, raw
        return decode(raw)

    async def ok(self, infno: str, input_: Any, **kw: Any) -> dict[str, Any]:
        """Send and require success; returns the output node."""
        answer = await self.call(infno, input_, **kw)
        assert answer["infcode"] == 0, answer["err_msg"]
        output = answer["output"]
        assert isinstance(output, dict)
        return output

    # ----------------------------------------------------------------- flows

    async def register(self, psn_no: str, insutype: str, begntime: str, ipt_otp_no: str) -> str:
        """2201 → mdtrt_id."""
        out = await self.ok(
            "2201",
            {
                "data": {
                    "psn_no": psn_no,
                    "insutype": insutype,
                    "begntime": begntime,
                    **certificate(psn_no),
                    "ipt_otp_no": ipt_otp_no,
                    "atddr_no": "D001",
                    "dr_name": "医生",
                    "dept_code": "K01",
                    "dept_name": "内科",
                    "caty": "A03",
                }
            },
        )
        mdtrt_id = out["data"]["mdtrt_id"]
        assert isinstance(mdtrt_id, str)
        return mdtrt_id

    async def visit_info(
        self, mdtrt_id: str, psn_no: str, med_type: str, begntime: str, dise_codg: str = ""
    ) -> None:
        """2203."""
        await self.ok(
            "2203", self.visit_info_input(mdtrt_id, psn_no, med_type, begntime, dise_codg)
        )

    @staticmethod
    def visit_info_input(
        mdtrt_id: str, psn_no: str, med_type: str, begntime: str, dise_codg: str = ""
    ) -> dict[str, Any]:
        """2203's input node."""
        return {
            "mdtrtinfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": psn_no,
                "med_type": med_type,
                "begntime": begntime,
                "dise_codg": dise_codg,
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
                    "dise_dor_name": "医生",
                    "diag_time": begntime,
                    "vali_flag": "1",
                }
            ],
        }

    @staticmethod
    def fee_rows(
        mdtrt_id: str, psn_no: str, lines: list[dict[str, Any]], fee_time: str, chrg_bchno: str
    ) -> list[dict[str, Any]]:
        """feedetail[] rows from example-style lines."""
        return [
            {
                "feedetl_sn": ln["feedetl_sn"],
                "mdtrt_id": mdtrt_id,
                "psn_no": psn_no,
                "chrg_bchno": chrg_bchno,
                "rx_circ_flag": "0",
                "fee_ocur_time": fee_time,
                "med_list_codg": ln.get("med_list_codg", ""),
                "medins_list_codg": ln["medins_list_codg"],
                "det_item_fee_sumamt": ln["det_item_fee_sumamt"],
                "cnt": ln["cnt"],
                "pric": ln["pric"],
                "bilg_dept_codg": "K01",
                "bilg_dept_name": "内科",
                "bilg_dr_codg": "D001",
                "bilg_dr_name": "医生",
                "hosp_appr_flag": ln.get("hosp_appr_flag", "1"),
                **({"init_feedetl_sn": ln["init_feedetl_sn"]} if "init_feedetl_sn" in ln else {}),
            }
            for ln in lines
        ]

    def settle_data(
        self,
        psn_no: str,
        mdtrt_id: str,
        med_type: str,
        medfee: str,
        insutype: str,
        acct_used_flag: str,
        **extra: Any,
    ) -> dict[str, Any]:
        """2206/2207/2303/2304 data node."""
        return {
            "data": {
                "psn_no": psn_no,
                **certificate(psn_no),
                "med_type": med_type,
                "medfee_sumamt": medfee,
                "psn_setlway": "01",
                "mdtrt_id": mdtrt_id,
                "acct_used_flag": acct_used_flag,
                "insutype": insutype,
                "invono": "",
                **extra,
            }
        }

    @staticmethod
    def drug_input(
        psn_no: str,
        begntime: str,
        medfee: str,
        lines: list[dict[str, Any]],
        acct_used_flag: str = "1",
        insutype: str = "310",
    ) -> dict[str, Any]:
        """2101/2102 druginfo + drugdetail[]."""
        return {
            "druginfo": {
                "psn_no": psn_no,
                **certificate(psn_no),
                "begntime": begntime,
                "medfee_sumamt": medfee,
                "insutype": insutype,
                "dise_codg": "",
                "dise_name": "",
                "acct_used_flag": acct_used_flag,
                "med_type": "41",
            },
            "drugdetail": [
                {
                    "feedetl_sn": ln["feedetl_sn"],
                    "rxno": "",
                    "rx_circ_flag": "0",
                    "fee_ocur_time": begntime,
                    "med_list_codg": "",
                    "medins_list_codg": ln["medins_list_codg"],
                    "det_item_fee_sumamt": ln["det_item_fee_sumamt"],
                    "cnt": ln["cnt"],
                    "pric": ln["pric"],
                    "bilg_dr_codg": "D001",
                    "bilg_dr_name": "医生",
                }
                for ln in lines
            ],
        }
