"""The cyclic garbage collector and the process's long-lived heap.

A serving process holds a large heap that lives as long as it does (the reference snapshot, the
transaction table, modules, prepared statements) and allocates short-lived objects per request.
CPython's full collections walk every tracked object, long-lived or not: in a 2102 load run
(benchmarks/RESULTS.md) the serving process made 7 full collections of 40–55 ms each, loop
stalls that land straight in the latency tail. Frozen objects are left out of every walk; they
are still freed when nothing refers to them, so a retired snapshot (acyclic) goes as before.
"""

from __future__ import annotations

import gc

# A young collection runs when tracked objects allocated minus those freed pass the threshold.
# A request frees nearly all it allocates by reference counting, so the default (700) was
# passed every ~18 pre-settlements, by what a batch or a connection held for a moment, and the
# collections and the older generations' walks they set off cost 13-17 µs a request (5% of a
# 2101; benchmarks/RESULTS.md). At 5,000 they come 25 times less often, each walking at most
# 5,000 young objects (about a millisecond): far under P7's 10 ms bound on a blocked loop.
YOUNG = 5_000

# Only a process that serves and nothing else freezes its heap (`serve` turns it on): in a
# process that starts and stops gateways (the tests) a frozen gateway, stopped, would never be
# collected.
_enabled = False


def enable() -> None:
    global _enabled
    _enabled = True


def settle_after_start() -> None:
    """Once the process has loaded what it keeps: collect what start left behind, then freeze
    the rest. Not on a request path (the collection walks everything once)."""
    if _enabled:
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG, *gc.get_threshold()[1:])


def settle_built() -> None:
    """After a snapshot's build, while the collector is still paused for it: freeze the new
    snapshot too. Resumed with it unfrozen, the first young collection walked all of it (half a
    million mappings' containers: a 13-22 ms stall on the loop, P7's bound is 10 ms). No
    collection first (it would walk everything); garbage frozen with the snapshot is freed by
    reference counting, as a retired snapshot is."""
    if _enabled:
        gc.freeze()
