"""What reading a large 9101 detail file costs the event loop: in a thread or in a process.

    python benchmarks/upload_reader_lag.py [--rows 150000] [--rounds 2]

A ticker on the loop sleeps 1 ms at a time while one valid detail file (a zip of `rows`
tab-separated lines) is read by `reconcile.read_upload`, once through the parser threads
(`off_loop`) and once through the reader processes (`off_process`, what 9101 uses). The ticks
counted against the ideal (wall ÷ 1 ms) say how much of the time the loop had; the gaps say how
long it waited at worst. The switch interval is the gateway's own (1 ms, gateway/app/runtime.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import time
import zipfile

from gateway.app.runtime import HELPER_THREAD_SLICE_SECONDS
from gateway.jobs import reconcile


def detail_file(rows: int) -> str:
    text = "".join(
        f"P{i:010d}\tM{i:010d}\tS{i:010d}\t12.34\t10.00\t2.34\t0\n" for i in range(rows)
    ).encode()
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("detail.txt", text)
    return base64.b64encode(packed.getvalue()).decode()


async def read_once(mode: str, encoded: str) -> str:
    limits = reconcile.FileLimits(parse_seconds=30.0)
    if mode == "process":
        reconcile.start_readers(limits)
        await asyncio.sleep(2.0)  # started, as the gateway starts them
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last - 0.001)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    if mode == "process":
        await reconcile.off_process(
            limits, "bench", reconcile.read_upload, encoded, limits, 32 * 1024 * 1024
        )
    else:
        await reconcile.off_loop(limits, reconcile.read_upload, encoded, limits, 32 * 1024 * 1024)
    wall = time.perf_counter() - started
    done.set()
    await ticker
    reconcile.stop_readers()
    gaps.sort()
    n = len(gaps)
    return (
        f"| {mode} | {wall:.2f} | {n:,} of {wall / 0.001:,.0f} ({n * 0.001 / wall:.0%}) |"
        f" {gaps[n // 2] * 1e3:.2f} | {gaps[int(n * 0.99)] * 1e3:.2f} | {gaps[-1] * 1e3:.1f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=150_000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    sys.setswitchinterval(HELPER_THREAD_SLICE_SECONDS)
    encoded = detail_file(args.rows)
    print(f"{args.rows:,} rows, {len(encoded) / 2**20:.1f} MiB of Base64")
    print("| read in | wall s | loop ticks of ideal | gap p50 ms | gap p99 ms | gap max ms |")
    print("|---|---|---|---|---|---|")
    for _ in range(args.rounds):
        for mode in ("thread", "process"):
            print(asyncio.run(read_once(mode, encoded)), flush=True)


if __name__ == "__main__":
    main()
