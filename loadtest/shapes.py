"""Load shapes for locust (`-f loadtest/locustfile.py,loadtest/shapes.py`).

RushHour: a morning outpatient rush as the seeds' cut-over notices describe it: a quiet start,
a ramp to the peak, a plateau, a second wave after lunch and the tail of the day, compressed
into `SGW_SHAPE_MINUTES` (default 10). Peak users come from `SGW_PEAK_USERS` (default 400).
"""

from __future__ import annotations

import os

from locust import LoadTestShape

# (fraction of the run, fraction of peak users) at the end of each stage
STAGES = [
    (0.10, 0.15),  # opening: a few counters
    (0.25, 0.60),  # the queue builds
    (0.45, 1.00),  # peak
    (0.60, 0.50),  # lunch
    (0.80, 0.85),  # afternoon wave
    (1.00, 0.20),  # tail
]


class RushHour(LoadTestShape):
    minutes = float(os.environ.get("SGW_SHAPE_MINUTES", "10"))
    peak = int(os.environ.get("SGW_PEAK_USERS", "400"))

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time() / (self.minutes * 60)
        for end, users in STAGES:
            if elapsed < end:
                target = max(1, int(self.peak * users))
                return target, max(1.0, target / 10)
        return None
