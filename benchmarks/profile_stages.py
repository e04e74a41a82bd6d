"""Where a request's CPU goes, by stage: each sample of a py-spy profile attributed to the stage of
its deepest frame that belongs to one.

    py-spy record --pid PID --rate 400 --nonblocking --format raw -o FILE --duration 8
    python benchmarks/profile_stages.py FILE [--leaves STAGE]

py-spy's own summary (`--format` summary, the harness's `--profile`) ranks functions; a request's
work is spread over dozens of them, none above a twentieth, so this sums them by stage instead:
the access log, metrics, the signature, reading the body, the envelope's checks and decode, the
transaction's input, the answer's build and encoding, the group read and commit, asyncpg, the
dispatch, aiohttp, and what is left (the event loop's own C code, shown as `asyncio/runners.py`).
Stages are tried in the order listed; `--leaves STAGE` lists the functions a stage's samples end
in.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (stage, a pattern a frame matches); a frame matching two is the first's.
STAGES: list[tuple[str, str]] = [
    ("access log", r"ops/access_log\.py"),
    ("metrics", r"prometheus_client/|ops/metrics\.py|observe \(gateway/app/server"),
    ("signature", r"pipeline/auth\.py"),
    ("body read", r"read_body \(gateway/pipeline/edge"),
    ("repeated keys", r"repeated_keys\.py"),
    ("envelope decode", r"decode_request \("),
    ("transaction input", r"purchase_of \(|_of \(adapters/his/"),
    ("answer build", r"adapters/national/output\.py|output \(adapters/"),
    ("settlement core", r"gateway/core/settle\.py"),
    ("answer encoding", r"encode_response \("),
    ("group commit write", r"ledger/writes\.py"),
    ("group commit", r"pipeline/group_commit\.py"),
    ("group read", r"pipeline/group_read\.py"),
    ("ledger reads", r"settlement_state\.py|ledger/persons\.py|ledger/idempotency\.py"),
    ("asyncpg", r"asyncpg/"),
    ("dispatch", r"pipeline/dispatch\.py"),
    (
        "HTTP handler",
        r"(_answer|_admitted|call_service|answer_always|_refusal|_shed|_names_upload|_is_utf8|"
        r"_senders) \(gateway/app/server|pipeline/edge\.py|pipeline/overload\.py|"
        r"pipeline/deadlines\.py",
    ),
    ("aiohttp", r"aiohttp/"),
]
REST = "event loop and the rest"


def _frame(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def stages(path: Path, leaves_of: str | None = None) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, samples per stage, samples per leaf function of `leaves_of`)."""
    compiled = [(name, re.compile(pattern)) for name, pattern in STAGES]
    total = 0
    by_stage: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        stage = next(
            (name for f in reversed(frames) for name, pattern in compiled if pattern.search(f)),
            REST,
        )
        total += n
        by_stage[stage] += n
        if stage == leaves_of:
            leaves[_frame(frames[-1])] += n
    return total, by_stage, leaves


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("profile", type=Path, help="py-spy record --format raw output")
    p.add_argument("--leaves", help="also list the functions this stage's samples end in")
    args = p.parse_args()
    total, by_stage, leaves = stages(args.profile, args.leaves)
    print(f"{total} samples")
    for name, n in by_stage.most_common():
        print(f"{100 * n / total:5.1f}%  {name}")
    for name, n in leaves.most_common(20):
        print(f"        {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
