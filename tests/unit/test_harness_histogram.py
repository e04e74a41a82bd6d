"""The harness reads P6's accepted latencies from the gateway's own histogram (wrk's are of every
answer, the fast busy ones included): quantiles between two scrapes, interpolated in a bucket."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import wrk_harness

BEFORE = {0.01: 5.0, 0.025: 5.0, 0.05: 5.0, 0.1: 5.0, math.inf: 5.0}
# 100 answers between the scrapes: 50 within 10 ms, 40 more within 25 ms, 9 more within 50 ms,
# one past 100 ms.
AFTER = {0.01: 55.0, 0.025: 95.0, 0.05: 104.0, 0.1: 104.0, math.inf: 105.0}


def test_quantiles_come_from_the_answers_between_the_scrapes() -> None:
    assert wrk_harness.quantile_ms(BEFORE, AFTER, 0.5) == 10.0  # the 50th at its bucket's top
    p90 = wrk_harness.quantile_ms(BEFORE, AFTER, 0.9)
    assert p90 is not None and math.isclose(p90, 25.0)
    p95 = wrk_harness.quantile_ms(BEFORE, AFTER, 0.95)  # 5 of the 9 between 25 and 50 ms
    assert p95 is not None and math.isclose(p95, 25.0 + 25.0 * 5 / 9)
    assert wrk_harness.quantile_ms(BEFORE, AFTER, 1.0) == 100.0  # past the last bound: its floor
    assert math.isclose(wrk_harness.within_share(BEFORE, AFTER, 0.05), 0.99)
    assert math.isclose(wrk_harness.within_share(BEFORE, AFTER, 0.025), 0.90)


def test_no_answers_between_the_scrapes_has_no_quantile() -> None:
    assert wrk_harness.quantile_ms(BEFORE, BEFORE, 0.99) is None
    assert wrk_harness.within_share(BEFORE, BEFORE, 0.05) == 0.0
