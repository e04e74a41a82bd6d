"""Overload: a bound on requests in flight per process, past which new ones are answered busy.

A gateway past saturation that keeps accepting work only queues it: every request waits behind
all the others and latency grows until clients time out and retry, which adds more work. Bounding
what is in flight keeps the accepted requests fast and turns the excess into immediate, explicit
"busy" answers that a counter can retry with the same msgid (nothing was done for them).

A request holds its slot from its signed headers on, while its body is still arriving: that is
what keeps a flood of large bodies from being buffered at once. A body can be sent slowly on
purpose, so the requests still receiving a body are bounded per client address and per
institution to `share` of the bound: one holder of one institution's secret, from one address or
many, cannot stall the whole bound with bodies that never finish.
"""

from __future__ import annotations

from collections import Counter

from gateway.ops import metrics

# Refused before the body is read, so a retry of a sale settled earlier gets it too: found from
# outside, "本次交易未处理" alone reads as "the sale did not happen" to a clerk whose retry it was.
SHED_MESSAGE = (
    "医保结算服务繁忙，本次请求未受理，请稍候使用相同报文ID重试"
    "（此前已结算成功的报文，重试时返回原结算结果；请勿换新报文ID重新结算）"
)


class Admission:
    """Counts requests in flight; `limit` 0 admits everything.

    With a latency target (`target_seconds`), the bound is found, not guessed: `limit` moves
    between `floor` and the configured bound (`ceiling`) by what the answered requests took,
    judged a window of `WINDOW` answers at a time. A static bound is right for one speed of the
    machine only: on a shared box the same bound kept accepted requests within 50 ms at one
    moment and let them take 97-149 ms at another (benchmarks/RESULTS.md, P6).

    - A window with more than one answer in a hundred past the target lowers the bound by a
      quarter, where requests queued behind one another in the process are what made them late.
    - A lowering that bought nothing (the next window as late, or the floor reached and still
      late) is given back, a tenth at a time, and no lowering is tried for `HOLD` windows: what
      makes answers late then is not how many are admitted (an event loop busy with the busy
      answers themselves, a slow ledger), and admitting fewer would only settle fewer. Found
      from outside: without this the bound sat at its floor under a load that kept answers late
      at any bound, and settled a sixth of what a fixed bound of 24 did on the same box.
    - A window that turned requests away and held the target raises it by a tenth.
    It starts at the floor and climbs: started at the configured bound, the first windows
    admitted far more than the machine could answer within the target, and those answers alone
    were past the 99th percentile of an eight-second overload run.
    """

    __slots__ = (
        "_answered",
        "_held",
        "_late",
        "_late_before",
        "_turned_away",
        "ceiling",
        "floor",
        "in_flight",
        "limit",
        "receiving",
        "share",
        "target",
    )

    WINDOW = 100  # answers judged together
    LATE_ALLOWED = 1  # of them, past the target: the 99th percentile is within it
    HOLD = 10  # windows without a lowering, once one bought nothing

    def __init__(
        self, limit: int, share: float, target_seconds: float = 0.0, floor: int = 4
    ) -> None:
        self.ceiling = limit
        self.share = share
        self.target = target_seconds if limit else 0.0
        self.floor = max(1, min(floor, limit)) if limit else 0
        self.limit = self.floor if self.target else limit
        self.in_flight = 0
        self.receiving: Counter[str] = Counter()  # requests still receiving a body, per key
        self._answered = 0
        self._late = 0
        self._late_before = -1  # late answers in the window before a lowering; -1: none made
        self._held = 0  # windows left without a lowering
        self._turned_away = False
        metrics.ADMISSION_LIMIT.set(self.limit)

    @property
    def share_limit(self) -> int:
        """Bodies one address or one institution may be sending at once (0: no bound): a share
        of the bound in force, at least one (found from outside: a share of the configured
        bound let four slow bodies from one address hold a bound lowered to four)."""
        if not self.limit:
            return 0
        return max(1, int(self.limit * self.share))

    def enter(self) -> bool:
        """Admit one request, or False when the process is at its limit."""
        if self.limit and self.in_flight >= self.limit:
            self._turned_away = True
            return False
        self.in_flight += 1
        return True

    def leave(self, seconds: float | None = None) -> None:
        """One admitted request answered, after `seconds` (None: not judged, e.g. an upload,
        whose time is its size's, not the load's)."""
        self.in_flight -= 1
        if self.target and seconds is not None:
            self._answered += 1
            if seconds > self.target:
                self._late += 1
            if self._answered >= self.WINDOW:
                self._judge()

    def _judge(self) -> None:
        was = self.limit
        late = self._late > self.LATE_ALLOWED
        lowered, self._late_before = self._late_before, -1
        if late and (self.limit <= self.floor or 0 <= lowered <= self._late):
            self._held = self.HOLD  # lowering buys nothing now
        if late and not self._held:
            self._late_before = self._late
            self.limit = max(self.floor, self.limit * 3 // 4)
        elif late or self._turned_away:
            # A tenth at a time (at least one): back from the floor in tens of windows, not
            # hundreds, once whatever made answers late has passed, or once lowering did not
            # help.
            self.limit = min(self.ceiling, self.limit + max(1, self.limit // 10))
        if self._held:
            self._held -= 1
        self._answered = self._late = 0
        self._turned_away = False
        if self.limit != was:
            metrics.ADMISSION_LIMIT.set(self.limit)

    def start_body(self, keys: tuple[str, ...]) -> bool:
        """Let an admitted request receive its body, or False when one of its keys (its address,
        its institution) already has its share of the bound receiving bodies."""
        cap = self.share_limit
        if cap and any(self.receiving[key] >= cap for key in keys):
            return False
        for key in keys:
            self.receiving[key] += 1
        return True

    def end_body(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self.receiving[key] -= 1
            if self.receiving[key] <= 0:
                del self.receiving[key]


UPLOADS_AT_ONCE = (
    "本机构正在处理的大文件上传已达{count}个，本次交易未处理；请待前一个完成后使用相同报文ID重试"
)
UPLOAD_BYTES = (
    "本机构大文件上传超出流量限额（每秒约{rate}），本次交易未处理；请稍后使用相同报文ID重试"
)
_MIB = 1 << 20


def _size(n: int) -> str:
    return f"{n / _MIB:g}MB" if n >= _MIB else f"{max(n >> 10, 1)}KB"


class UploadBudget:
    """Heavy uploads per institution: how many at once, and how many bytes per second.

    A detail file or a batch costs the process far more than a sale (reading, unpacking,
    checking, a ledger write for its answer), and one institution sending them back to back
    took that from every other institution's counters. The budget is decided before the body
    is read wherever the headers tell (the count, and the bytes from Content-Length); a heavy
    request is charged at least `floor` bytes, since a small file may unpack to the parser's
    bound, and never more than `burst`, so the largest body fits a full budget. Over either,
    the request is refused with nothing done; the same msgid can be sent again later.
    """

    __slots__ = ("_buckets", "burst", "floor", "in_flight", "per_institution", "rate", "refused")

    # Buckets kept before the full ones are forgotten (a full bucket is the same as none).
    KEEP = 4096

    def __init__(
        self, per_institution: int = 0, rate: int = 0, burst: int = 0, floor: int = 0
    ) -> None:
        self.per_institution = per_institution
        self.rate = rate  # bytes per second; 0: no byte budget
        self.burst = burst
        self.floor = floor
        self.in_flight: Counter[str] = Counter()
        self._buckets: dict[str, tuple[float, float]] = {}  # institution: (bytes, when)
        self.refused = 0

    @property
    def active(self) -> bool:
        return bool(self.per_institution or self.rate)

    def charge(self, size: int) -> int:
        """What a heavy request of `size` bytes costs its institution's byte budget."""
        return min(max(size, self.floor), max(self.burst, 1))

    def take(self, institution: str, size: int, now: float) -> str | None:
        """Admit one heavy request of `size` bytes (declared, or read) at monotonic time `now`:
        None, and the caller releases it when answered; or why not, with nothing taken."""
        if self.per_institution and self.in_flight[institution] >= self.per_institution:
            self.refused += 1
            return UPLOADS_AT_ONCE.format(count=self.per_institution)
        if self.rate:
            cost = self.charge(size)
            held, when = self._buckets.get(institution, (float(self.burst), now))
            held = min(float(self.burst), held + (now - when) * self.rate)
            if held < cost:
                self._buckets[institution] = (held, now)
                self.refused += 1
                return UPLOAD_BYTES.format(rate=_size(self.rate))
            self._buckets[institution] = (held - cost, now)
            if len(self._buckets) > self.KEEP:
                self._forget_full(now)
        self.in_flight[institution] += 1
        return None

    def release(self, institution: str) -> None:
        self.in_flight[institution] -= 1
        if self.in_flight[institution] <= 0:
            del self.in_flight[institution]

    def _forget_full(self, now: float) -> None:
        full = [
            key
            for key, (held, when) in self._buckets.items()
            if held + (now - when) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
