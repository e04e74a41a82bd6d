"""Locust scenarios against a running gateway (settings in loadtest/locust.conf).

    locust --config loadtest/locust.conf                       # the full mix, headless
    locust -f loadtest/locustfile.py,loadtest/shapes.py ...    # with a load shape (rush hour)

Every simulated counter is a terminal of its own (`dev_no`) and signs its requests. A response
counts as a failure unless it is what that counter expects (`infcode` 0, or for the retry storm
the stored answer or a fast "busy"). People: the demo persons, or with SGW_SYNTH_PERSONS=N the
synthetic ones `python -m gateway demo synth` made, so load spreads as it does in life.

Users: PharmacyCounter (2101 → 2102, now and then a 2103 refund), OutpatientDesk (2201 → 2203 →
2204 → 2206 → 2207), InpatientWard (2401 → 2301 a day for several days → 2402 → 2303 → 2304),
RefundDesk (a settlement refunded with 2208 and settled again), RetryStorm (one terminal resending
the same msgid ten times as fast as a counter would). Degraded mode is run by `make
loadtest-degraded`, which turns the plan to `defer` around a pharmacy run: claims are answered
(infcode 0) while the ledger is notionally away.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from locust import FastHttpUser, between, task

from loadtest import envelopes as env

DEMO_PERSONS = ["441800000000000001", "441800000000000002", "441800000000000003"]
SYNTH = int(os.environ.get("SGW_SYNTH_PERSONS", "0"))


def person() -> str:
    if SYNTH:
        return env.synthetic_person(random.randint(1, SYNTH))
    return random.choice(DEMO_PERSONS)


# The least time between two sends of one terminal: under the gateway's per-terminal rate
# (`[rate_limit] terminal_rate`, 50/s), so a refusal for sending too fast is never the load's
# own doing. Found from outside: an outpatient desk sends its visit's five calls back to back,
# 56/s, and `make loadtest` failed on a healthy gateway with "本终端交易过于频繁".
# A gateway run with another rate: SGW_TERMINAL_RATE, sends a second per terminal (default 40).
TERMINAL_GAP_SECONDS = 1 / float(os.environ.get("SGW_TERMINAL_RATE") or 40)


class Counter(FastHttpUser):
    """A signed terminal of one institution; `call` checks infcode and names the request."""

    abstract = True
    institution = env.PHARMACY
    prefix = "POS"

    def on_start(self) -> None:
        self.terminal = env.Terminal(
            self.institution, f"{self.prefix}{random.randrange(10**6):06d}"
        )
        self.last_sent = 0.0

    def call(
        self, infno: str, input_: dict[str, Any], name: str | None = None
    ) -> dict[str, Any] | None:
        wait = self.last_sent + TERMINAL_GAP_SECONDS - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # gevent's, under locust: the other users run meanwhile
        self.last_sent = time.monotonic()
        with self.client.post(
            env.PATH,
            data=self.terminal.envelope(infno, input_),
            headers=self.terminal.headers(),
            name=name or infno,
            catch_response=True,
        ) as r:
            try:
                answer = r.json()
            except ValueError:
                r.failure("not JSON")
                return None
            if answer.get("infcode") != 0:
                r.failure(answer.get("err_msg") or "infcode -1")
                return None
            r.success()
            output = answer.get("output")
            return output if isinstance(output, dict) else {}


class PharmacyCounter(Counter):
    # At least 20 ms between sales: one terminal never sends past the gateway's per-terminal
    # rate (50/s). Found from outside: under `defer` the answers take 3 ms, and 7% of the
    # degraded run's sales were refused as a terminal sending too fast, counted as failures.
    wait_time = between(0.02, 0.05)
    weight = 6

    @task
    def sell(self) -> None:
        drug = env.drug_input(person(), lines=env.random_basket())
        if self.call("2101", drug) is None:
            return
        out = self.call("2102", drug)
        if out and random.random() < 0.05:
            info = out["setlinfo"]
            self.call("2103", env.cancel_input(info["setl_id"], info["mdtrt_id"], info["psn_no"]))


class OutpatientDesk(Counter):
    wait_time = between(0.0, 0.1)
    weight = 3
    institution = env.HOSPITAL
    prefix = "HIS"

    def open_visit(self) -> tuple[str, str] | None:
        psn = person()
        reg = self.call("2201", env.register_input(psn))
        if reg is None:
            return None
        mdtrt_id = reg["data"]["mdtrt_id"]
        if self.call("2203", env.visit_info_input(mdtrt_id, psn)) is None:
            return None
        if self.call("2204", env.outpatient_fees_input(mdtrt_id, psn)) is None:
            return None
        return mdtrt_id, psn

    @task
    def visit(self) -> None:
        opened = self.open_visit()
        if opened is None:
            return
        data = env.settle_input(*opened)
        if self.call("2206", data) is not None:
            self.call("2207", data)


class RefundDesk(OutpatientDesk):
    """A settlement found wrong at the counter: refunded (2208) and settled again (2207)."""

    weight = 1

    @task
    def visit(self) -> None:
        opened = self.open_visit()
        if opened is None:
            return
        mdtrt_id, psn = opened
        data = env.settle_input(mdtrt_id, psn)
        first = self.call("2207", data)
        if first is None:
            return
        setl_id = first["setlinfo"]["setl_id"]
        if self.call("2208", env.cancel_input(setl_id, mdtrt_id, psn)) is not None:
            self.call("2207", data, name="2207 re-settle")


class InpatientWard(Counter):
    """An admission with a few days of charges, discharge, pre-settlement and settlement."""

    wait_time = between(0.0, 0.2)
    weight = 1
    institution = env.HOSPITAL
    prefix = "ZY"

    @task
    def stay(self) -> None:
        psn = person()
        admitted = self.call("2401", env.admission_input(psn))
        if admitted is None:
            return
        mdtrt_id = admitted["result"]["mdtrt_id"]
        days = random.randint(2, 4)
        for day in range(1, days + 1):
            if self.call("2301", env.ward_day_input(mdtrt_id, psn, day)) is None:
                return
        if self.call("2402", env.discharge_input(mdtrt_id, psn)) is None:
            return
        data = env.settle_input(
            mdtrt_id,
            psn,
            med_type="21",
            medfee=f"{env.WARD_DAY_TOTAL * days:.2f}",
            mid_setl_flag="0",
        )
        if self.call("2303", data) is not None:
            self.call("2304", data)


class RetryStorm(Counter):
    """A terminal that lost its answer and resends the same msgid ten times as fast as a counter
    would: each answer must be the stored one (byte for byte) or a fast busy, never a second
    settlement; other terminals must not feel it (R7)."""

    wait_time = between(0.0, 0.01)
    weight = 1
    prefix = "STORM"

    @task
    def storm(self) -> None:
        body = self.terminal.envelope("2102", env.drug_input(person()))
        first: bytes | None = None
        for _ in range(10):
            with self.client.post(
                env.PATH, data=body, headers=self.terminal.headers(), name="2102 retry storm",
                catch_response=True,
            ) as r:  # fmt: skip
                raw = r.content or b""
                if b'"infcode":0' in raw:
                    first = first or raw
                    if raw != first:  # replays are the stored bytes, whole
                        r.failure("a retry got a different answer")
                    else:
                        r.success()
                elif "繁忙".encode() in raw or "稍候".encode() in raw or "频繁".encode() in raw:
                    r.success()  # shed or rate limited: the counter retries later
                else:
                    r.failure(raw.decode(errors="replace")[:200])
            time.sleep(0.002)
