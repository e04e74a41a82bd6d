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


def settle_built() -> None:
    """After a snapshot's build, while the collector is still paused for it: freeze the new
    snapshot too. Resumed with it unfrozen, the first young collection walked all of it (half a
    million mappings' containers: a 13-22 ms stall on the loop, P7's bound is 10 ms). No
    collection first (it would walk everything); garbage frozen with the snapshot is freed by
    reference counting, as a retired snapshot is."""
    if _enabled:
        gc.freeze()
