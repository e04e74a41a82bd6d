"""Automatic triggers per institution (清远 004: an institution's interface timeouts or errors).

Each institution's calls feed a breaker with the `[triggers.institution]` thresholds. When it
trips, the protective action is written as a plan rule for that institution (operator
`trigger:institution`), so every process applies it and the team sees who set it and why; a
person clears it (`plan clear`), after which the breaker starts counting afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.emergency.breaker import Breaker, BreakerConfig
from gateway.emergency.plan.rules import TxClass

log = logging.getLogger("gateway.emergency.triggers")
OPERATOR = "trigger:institution"
CLASS = TxClass.SETTLEMENT

Apply = Callable[[str, str], Awaitable[None]]  # (fixmedins_code, reason) -> rule written


class InstitutionTriggers:
    def __init__(
        self,
        config: BreakerConfig,
        apply: Apply,
        has_rule: Callable[[str], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._apply = apply
        self._has_rule = has_rule  # whether a rule for the institution is in force now
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def breaker(self, code: str) -> Breaker:
        b = self._breakers.get(code)
        if b is None:
            b = self._breakers[code] = Breaker(f"institution:{code}", self.config, self._clock)
        return b

    def record(self, code: str, ok: bool, timeout: bool, seconds: float) -> None:
        """One call of this institution's that reached the ledger (or failed trying)."""
        if not code:
            return
        b = self.breaker(code)
        if b.is_open:
            # Tripped earlier: once the team has cleared the rule (or it could not be written),
            # count afresh after the minimum open time.
            if not self._has_rule(code) and b.probe_due():
                b.close("规则已清除")
            return
        # Failures and timeouts, not slowness: a slow answer is the ledger's or the network's,
        # shared by every institution, and the ledger's breaker judges it (found from outside:
        # a healthy ledger 100 ms away put every pharmacy into `defer`, "20/20次慢于1秒", for
        # good, its rule recovered by hand).
        b.record(ok, timeout=timeout)
        if b.is_open:
            reason = f"自动触发：机构{code}接口{b.reason}"
            log.warning("institution trigger", extra={"fixmedins_code": code, "reason": reason})
            task = asyncio.get_running_loop().create_task(self._write(code, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, code: str, reason: str) -> None:
        try:
            await self._apply(code, reason)
        except Exception:
            # The ledger itself may be what fails; its own breaker protects everyone then.
            log.warning("institution trigger rule not written", exc_info=True)

    def states(self) -> list[dict[str, str]]:
        return [
            {
                "dependency": b.name,
                "state": b.state,
                "reason": b.reason,
                "action": self.config.action,
                "recover": self.config.recover,
            }
            for b in self._breakers.values()
            if b.is_open
        ]
