"""Requests as counters send them, for the load tests and the HTTP harness alike.

One place builds the envelopes, the signed headers and the inputs of each flow (pharmacy basket,
outpatient visit, inpatient stay, refund and re-settlement), so locust and the harness measure
the same traffic.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import random
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.pipeline.auth import load_credentials, sign_headers

PATH = "/fsi/api/rsfComIfsService/callService"
REGION = "441800"
PHARMACY = "P44180000001"
HOSPITAL = "H44180000001"
CREDENTIALS = load_credentials(
    Path(__file__).resolve().parents[1] / "config" / "demo" / "credentials.toml"
)
# msgids unique across processes and runs: the process id and a random start.
_serial = itertools.count(random.randrange(10**9))
_PROCESS = f"{os.getpid() % 10**4:04d}"

BASKET = [
    ("YP0001", "18.50"),
    ("YP0002", "12.50"),
    ("YP0004", "9.90"),
    ("YP0007", "9.90"),
    ("YP0009", "28.80"),
]
# A 10-line outpatient bill (class A, B and C items), 250.90 in all.
OUTPATIENT_LINES = [
    ("ZL0001", "25"),
    ("ZL0004", "30"),
    ("YP0001", "18.5"),
    ("YP0003", "40"),
    ("YP0005", "30"),
    ("ZL0005", "60"),
    ("YP0002", "12.5"),
    ("ZL0008", "20"),
    ("YP0007", "9.9"),
    ("ZL0012", "5"),
]
OUTPATIENT_TOTAL = "250.90"
# One day of an inpatient stay (code, price, count): bed, nursing, tests and drugs.
WARD_DAY = [
    ("ZL0003", "60", "10"),
    ("ZL0008", "20", "20"),
    ("YP0003", "40", "1"),
    ("YP0001", "18.5", "2"),
]
WARD_DAY_TOTAL = sum(Decimal(price) * int(cnt) for _, price, cnt in WARD_DAY)  # 1,077.00


# Every request presents the person's e-voucher (mdtrt_cert_type 01), whose token is the psn_no
# for the demo and the synthetic persons alike: the gateway refuses a certificate of anyone else.


def synthetic_person(index: int, region: str = REGION) -> str:
    """The psn_no `python -m gateway demo synth` gave the index-th synthetic employee."""
    return f"S{region}{index:012d}"


def now_text() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


class Terminal:
    """One counter: an institution's terminal (dev_no), signing every request."""

    def __init__(self, fixmedins_code: str, dev_no: str, region: str = REGION) -> None:
        self.fixmedins_code = fixmedins_code
        self.dev_no = dev_no
        self.region = region
        self.secret = CREDENTIALS[fixmedins_code]

    def msgid(self) -> str:
        # 40 characters at most (protocol.md): code, time, process, an 8-digit serial.
        serial = next(_serial) % 10**8
        return f"{self.fixmedins_code}{dt.datetime.now():%Y%m%d%H%M%S}{_PROCESS}{serial:08d}"

    def headers(self) -> dict[str, str]:
        """Signed x-tif headers with a fresh nonce: a real counter signs every request."""
        return {
            "Content-Type": "application/json",
            **sign_headers(self.fixmedins_code, self.secret, uuid.uuid4().hex),
        }

    def envelope(self, infno: str, input_: dict[str, Any], msgid: str | None = None) -> bytes:
        return json.dumps(
            {
                "infno": infno,
                "msgid": msgid or self.msgid(),
                "mdtrtarea_admvs": self.region,
                "insuplc_admdvs": self.region,
                "recer_sys_code": "YBXT",
                "dev_no": self.dev_no,
                "infver": "V1.0",
                "opter_type": "1",
                "opter": "OP-" + self.dev_no,
                "opter_name": "收费员",
                "inf_time": now_text(),
                "fixmedins_code": self.fixmedins_code,
                "fixmedins_name": "演示机构",
                "sign_no": "",
                "input": input_,
            },
            ensure_ascii=False,
        ).encode()


def drug_input(
    psn_no: str, insutype: str = "310", lines: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """2101/2102: a basket (the 5-line default, or the given (code, price) lines)."""
    chosen = BASKET if lines is None else lines
    today = now_text()
    total = sum(int(p.replace(".", "")) for _, p in chosen)
    return {
        "druginfo": {
            "psn_no": psn_no,
            "mdtrt_cert_type": "01",
            "mdtrt_cert_no": psn_no,
            "begntime": today,
            "medfee_sumamt": yuan(total),
            "insutype": insutype,
            "acct_used_flag": "1",
            "med_type": "41",
        },
        "drugdetail": [
            {
                "feedetl_sn": str(i + 1),
                "fee_ocur_time": today,
                "medins_list_codg": code,
                "det_item_fee_sumamt": price,
                "cnt": "1",
                "pric": price,
            }
            for i, (code, price) in enumerate(chosen)
        ],
    }


def random_basket() -> list[tuple[str, str]]:
    return random.sample(BASKET, k=random.randint(1, len(BASKET)))


def register_input(psn_no: str, insutype: str = "310") -> dict[str, Any]:
    """2201 挂号."""
    return {
        "data": {
            "psn_no": psn_no,
            "insutype": insutype,
            "begntime": now_text(),
            "mdtrt_cert_type": "01",
            "mdtrt_cert_no": psn_no,
            "ipt_otp_no": f"LT{_PROCESS}{next(_serial)}",
        }
    }


def visit_info_input(mdtrt_id: str, psn_no: str) -> dict[str, Any]:
    """2203 就诊信息上传 (ordinary outpatient)."""
    return {
        "mdtrtinfo": {
            "mdtrt_id": mdtrt_id,
            "psn_no": psn_no,
            "med_type": "11",
            "begntime": now_text(),
        }
    }


def outpatient_fees_input(mdtrt_id: str, psn_no: str) -> dict[str, Any]:
    """2204: the 10-line bill in batch B1."""
    now = now_text()
    return {
        "feedetail": [
            {
                "feedetl_sn": str(i + 1),
                "mdtrt_id": mdtrt_id,
                "psn_no": psn_no,
                "chrg_bchno": "B1",
                "fee_ocur_time": now,
                "medins_list_codg": code,
                "det_item_fee_sumamt": price,
                "cnt": "1",
                "pric": price,
                "hosp_appr_flag": "1",
            }
            for i, (code, price) in enumerate(OUTPATIENT_LINES)
        ]
    }


def settle_input(
    mdtrt_id: str,
    psn_no: str,
    insutype: str = "310",
    *,
    med_type: str = "11",
    medfee: str = OUTPATIENT_TOTAL,
    **extra: str,
) -> dict[str, Any]:
    """2206/2207 (outpatient, batch B1) and 2303/2304 (inpatient) data node."""
    return {
        "data": {
            "psn_no": psn_no,
            "mdtrt_cert_type": "01",
            "mdtrt_cert_no": psn_no,
            "med_type": med_type,
            "medfee_sumamt": medfee,
            "psn_setlway": "01",
            "mdtrt_id": mdtrt_id,
            "acct_used_flag": "1",
            "insutype": insutype,
            **({"chrg_bchno": "B1"} if med_type == "11" else {}),
            **extra,
        }
    }


def cancel_input(setl_id: str, mdtrt_id: str, psn_no: str) -> dict[str, Any]:
    """2103/2208/2305: undo a settlement (a refund)."""
    return {"data": {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": psn_no}}


def admission_input(psn_no: str, insutype: str = "310") -> dict[str, Any]:
    """2401 入院办理."""
    return {
        "mdtrtinfo": {
            "psn_no": psn_no,
            "insutype": insutype,
            "begntime": now_text(),
            "mdtrt_cert_type": "01",
            "mdtrt_cert_no": psn_no,
            "med_type": "21",
            "ipt_no": f"ZY{_PROCESS}{next(_serial)}",
            "atddr_no": "D1",
            "chfpdr_name": "医生",
            "adm_diag_dscr": "肺炎",
            "adm_dept_codg": "K1",
            "adm_dept_name": "内科",
            "adm_bed": "3",
            "dscg_maindiag_code": "J18",
            "dscg_maindiag_name": "肺炎",
        },
        "diseinfo": [],
    }


def ward_day_input(mdtrt_id: str, psn_no: str, day: int) -> dict[str, Any]:
    """2301: one day's charges of a stay (feedetl_sn unique within the stay)."""
    now = now_text()
    return {
        "feedetail": [
            {
                "feedetl_sn": f"{day}-{i + 1}",
                "mdtrt_id": mdtrt_id,
                "psn_no": psn_no,
                "chrg_bchno": "",
                "fee_ocur_time": now,
                "medins_list_codg": code,
                "det_item_fee_sumamt": f"{Decimal(price) * int(cnt):.2f}",
                "cnt": cnt,
                "pric": price,
                "hosp_appr_flag": "1",
            }
            for i, (code, price, cnt) in enumerate(WARD_DAY)
        ]
    }


def discharge_input(mdtrt_id: str, psn_no: str, insutype: str = "310") -> dict[str, Any]:
    """2402 出院办理."""
    return {
        "dscginfo": {
            "mdtrt_id": mdtrt_id,
            "psn_no": psn_no,
            "insutype": insutype,
            "endtime": now_text(),
            "dscg_dept_codg": "K1",
            "dscg_dept_name": "内科",
            "dscg_way": "1",
        },
        "diseinfo": [],
    }
