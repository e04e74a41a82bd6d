"""Locust scenarios against a running gateway: pharmacy counters and outpatient visits.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080

Each simulated counter is a terminal of its own (`dev_no`), as in life, so per-terminal rate
limits apply per user. A response counts as a failure unless `infcode` is 0.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, task

from gateway.auth import load_credentials, sign_headers

PATH = "/fsi/api/rsfComIfsService/callService"
CREDENTIALS = load_credentials(
    Path(__file__).resolve().parents[1] / "config" / "demo" / "credentials.toml"
)
_serial = itertools.count(1)

# Demo persons who can settle (insured); residents pay cash, employees use the account.
PERSONS = [
    ("441800000000000001", "310"),
    ("441800000000000003", "310"),
    ("441800000000000004", "390"),
    ("441800000000000005", "390"),
]
BASKET = [
    ("YP0001", "18.50"),
    ("YP0002", "12.50"),
    ("YP0004", "9.90"),
    ("YP0007", "9.90"),
    ("YP0009", "28.80"),
]


class Counter:
    """Envelope building for one terminal."""

    def __init__(self, fixmedins_code: str, dev_no: str) -> None:
        self.fixmedins_code = fixmedins_code
        self.dev_no = dev_no

    def headers(self) -> dict[str, str]:
        """Signed x-tif headers: a real counter signs every request."""
        secret = CREDENTIALS[self.fixmedins_code]
        return {
            "Content-Type": "application/json",
            **sign_headers(self.fixmedins_code, secret, uuid.uuid4().hex),
        }

    def envelope(self, infno: str, input_: dict[str, Any]) -> bytes:
        n = next(_serial)
        now = dt.datetime.now()
        return json.dumps(
            {
                "infno": infno,
                "msgid": f"{self.fixmedins_code}{now:%Y%m%d%H%M%S}{n % 10000:04d}{self.dev_no[-4:]}{n}",
                "mdtrtarea_admvs": "441800",
                "insuplc_admdvs": "441800",
                "recer_sys_code": "YBXT",
                "dev_no": self.dev_no,
                "infver": "V1.0",
                "opter_type": "1",
                "opter": "OP-" + self.dev_no,
                "opter_name": "收费员",
                "inf_time": now.strftime("%Y-%m-%d %H:%M:%S"),
                "fixmedins_code": self.fixmedins_code,
                "fixmedins_name": "演示机构",
                "sign_no": "",
                "input": input_,
            },
            ensure_ascii=False,
        ).encode()


def _ok(resp: Any) -> dict[str, Any] | None:
    try:
        answer = resp.json()
    except ValueError:
        resp.failure("not JSON")
        return None
    if answer.get("infcode") not in (0, "0"):
        resp.failure(answer.get("err_msg") or "infcode -1")
        return None
    resp.success()
    output = answer.get("output")
    return output if isinstance(output, dict) else {}


class PharmacyCounter(FastHttpUser):
    """A pharmacy POS: 1101 → 2101 → 2102, now and then a 2103 refund."""

    wait_time = between(0.0, 0.05)
    weight = 3

    def on_start(self) -> None:
        self.counter = Counter("P44180000001", f"POS{random.randrange(10**6):06d}")

    def basket(self) -> tuple[dict[str, Any], str, str]:
        psn_no, insutype = random.choice(PERSONS)
        lines = random.sample(BASKET, k=random.randint(1, 5))
        today = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        total = sum(int(p.replace(".", "")) for _, p in lines)
        medfee = f"{total // 100}.{total % 100:02d}"
        return (
            {
                "druginfo": {
                    "psn_no": psn_no,
                    "mdtrt_cert_type": "02",
                    "mdtrt_cert_no": "X",
                    "begntime": today,
                    "medfee_sumamt": medfee,
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
                    for i, (code, price) in enumerate(lines)
                ],
            },
            psn_no,
            medfee,
        )

    @task
    def sell(self) -> None:
        drug, psn_no, _ = self.basket()
        with self.client.post(
            PATH,
            data=self.counter.envelope("2101", drug),
            headers=self.counter.headers(),
            name="2101",
            catch_response=True,
        ) as r:
            if _ok(r) is None:
                return
        with self.client.post(
            PATH,
            data=self.counter.envelope("2102", drug),
            headers=self.counter.headers(),
            name="2102",
            catch_response=True,
        ) as r:
            out = _ok(r)
        if out and random.random() < 0.05:
            info = out["setlinfo"]
            cancel = {
                "data": {"setl_id": info["setl_id"], "mdtrt_id": info["mdtrt_id"], "psn_no": psn_no}
            }
            with self.client.post(
                PATH,
                data=self.counter.envelope("2103", cancel),
                headers=self.counter.headers(),
                name="2103",
                catch_response=True,
            ) as r:
                _ok(r)


class OutpatientDesk(FastHttpUser):
    """A hospital cashier: 2201 → 2203 → 2204 → 2206 → 2207."""

    wait_time = between(0.0, 0.1)
    weight = 1

    def on_start(self) -> None:
        self.counter = Counter("H44180000001", f"HIS{random.randrange(10**6):06d}")

    def call(self, infno: str, input_: dict[str, Any]) -> dict[str, Any] | None:
        with self.client.post(
            PATH,
            data=self.counter.envelope(infno, input_),
            headers=self.counter.headers(),
            name=infno,
            catch_response=True,
        ) as r:
            return _ok(r)

    @task
    def visit(self) -> None:
        psn_no, insutype = random.choice(PERSONS)
        now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        reg = self.call(
            "2201",
            {
                "data": {
                    "psn_no": psn_no,
                    "insutype": insutype,
                    "begntime": now,
                    "mdtrt_cert_type": "02",
                    "mdtrt_cert_no": "X",
                    "ipt_otp_no": f"LT{next(_serial)}{random.randrange(10**9)}",
                }
            },
        )
        if reg is None:
            return
        mdtrt_id = reg["data"]["mdtrt_id"]
        if (
            self.call(
                "2203",
                {
                    "mdtrtinfo": {
                        "mdtrt_id": mdtrt_id,
                        "psn_no": psn_no,
                        "med_type": "11",
                        "begntime": now,
                    }
                },
            )
            is None
        ):
            return
        codes = [
            "ZL0001",
            "ZL0004",
            "YP0001",
            "YP0003",
            "YP0005",
            "ZL0005",
            "YP0002",
            "ZL0008",
            "YP0007",
            "ZL0012",
        ]
        prices = ["25", "30", "18.5", "40", "30", "60", "12.5", "20", "9.9", "5"]
        lines = [
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
            for i, (code, price) in enumerate(zip(codes, prices, strict=True))
        ]
        if self.call("2204", {"feedetail": lines}) is None:
            return
        data = {
            "data": {
                "psn_no": psn_no,
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": "X",
                "med_type": "11",
                "medfee_sumamt": "250.90",
                "psn_setlway": "01",
                "mdtrt_id": mdtrt_id,
                "chrg_bchno": "B1",
                "acct_used_flag": "1",
                "insutype": insutype,
            }
        }
        if self.call("2206", data) is not None:
            self.call("2207", data)
