"""What refusing a key sent twice costs a request, in process: the same bodies read with the check
and with it swapped for a no-op, in alternate rounds (so drift on a shared box falls on both),
CPU time per call, medians and minima over the rounds.

    python benchmarks/repeated_keys_cost.py [--rounds 15] [--calls 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import gateway.app.server  # noqa: E402, F401 (the transactions' node types, as served)
from adapters.national import envelope  # noqa: E402
from adapters.pos.pharmacy import purchase_of  # noqa: E402
from benchmarks.test_envelope_bench import ENVELOPE_2102, ENVELOPE_2207  # noqa: E402


def _cpu_us(call: Callable[[bytes], object], body: bytes, calls: int) -> float:
    started = time.process_time_ns()
    for _ in range(calls):
        call(body)
    return (time.process_time_ns() - started) / calls / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    check = envelope.refuse_repeated_keys
    cases: dict[str, tuple[Callable[[bytes], object], bytes]] = {
        "read a five-line sale": (lambda b: purchase_of(envelope.decode_request(b)), ENVELOPE_2102),
        "decode a 2207 envelope": (envelope.decode_request, ENVELOPE_2207),
    }
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for how, swapped in (("with", check), ("without", lambda raw: None)):
                envelope.refuse_repeated_keys = swapped
                for name, (call, body) in cases.items():
                    times.setdefault((name, how), []).append(_cpu_us(call, body, args.calls))
            for name, (_, body) in cases.items():
                times.setdefault((name, "the check alone"), []).append(
                    _cpu_us(check, body, args.calls)
                )
    finally:
        envelope.refuse_repeated_keys = check
    for (name, how), values in times.items():
        print(f"{name} ({how}): median {statistics.median(values):.1f} µs, min {min(values):.1f}")


if __name__ == "__main__":
    main()
