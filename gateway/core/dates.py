"""Which dates a counter may put on a visit, a fee line or a sale (pure; the caller passes now).

The service date picks the policy version and the calendar year whose accumulators pay
(settlement-rules §3), so a date is money: a visit dated next year draws next year's caps, and a
visit dated in a year already cleared draws that year's unused ones. A date is accepted only
between the late-billing bound and now (plus a small allowance for counters' clocks):

- not after now + `future_tolerance_seconds` (the counter's clock may run a little ahead);
- not before 1 January of the year `late_years` before this one. The treatment region sets it
  (就医地管理: the institution's agency manages how late its institutions may bill), with a
  default for regions without their own figure.

Times are naive local times on both sides, as the interface sends them and as the gateway
receives its requests (`Call.now`); the gateway runs in the regions' time zone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Protocol

import msgspec

from gateway.protocol.errors import LineRejected, RuleRejected


def shown(moment: dt.datetime) -> str:
    """A time as a refusal quotes it, yyyy-MM-dd HH:mm:ss as the fields are written. The year
    padded by hand: strftime writes year 1 (a .NET client's unset DateTime) as "1" (found from
    outside: "1-01-01 00:00:00")."""
    return f"{moment.year:04d}-{moment:%m-%d %H:%M:%S}"


class DatedLine(Protocol):
    """A fee line as its date is checked: its serial number and when it was incurred."""

    @property
    def feedetl_sn(self) -> str: ...

    @property
    def fee_ocur_time(self) -> dt.datetime: ...


class DateRules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The bounds on service dates ([dates] in config/gateway.toml)."""

    future_tolerance_seconds: int = 600
    late_years: int = 2
    late_years_by_region: Mapping[str, int] = msgspec.field(default_factory=dict)

    def earliest(self, admdvs: str, now: dt.datetime) -> dt.date:
        """The first service date the region's institutions may still bill."""
        years = self.late_years_by_region.get(admdvs, self.late_years)
        return dt.date(now.year - max(0, years), 1, 1)

    def reason(self, moment: dt.datetime, *, admdvs: str, now: dt.datetime) -> str | None:
        """Why `moment` is out of bounds, in the clerk's words; None when it is within them."""
        first, latest = self.bounds(admdvs, now)
        if moment > latest:
            return (
                f"（{shown(moment)}）晚于当前时间{shown(now)}"
                f"（允许误差{self.future_tolerance_seconds // 60}分钟），不能办理未来日期的业务"
            )
        if moment < first:
            return (
                f"（{shown(moment)}）早于本地区可补办结算的最早日期{first.date().isoformat()}，"
                "已超过结算时限（跨年度费用须在规定年度内结算）"
            )
        return None

    def bounds(self, admdvs: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """[first, last]: the moments `reason` finds nothing against (the first day of the
        late-billing bound from midnight, now plus the counters' clock tolerance)."""
        first = self.earliest(admdvs, now)
        latest = now + dt.timedelta(seconds=self.future_tolerance_seconds)
        return dt.datetime(first.year, first.month, first.day), latest

    def check_lines(self, lines: Iterable[DatedLine], *, admdvs: str, now: dt.datetime) -> None:
        """`check_line` for each line, the bounds worked out once: a sale or an upload dates
        every line, and all but a refused one are within them."""
        first, last = self.bounds(admdvs, now)
        for ln in lines:
            if not first <= ln.fee_ocur_time <= last:
                self.check_line(ln.feedetl_sn, ln.fee_ocur_time, admdvs=admdvs, now=now)

    def check_not_ahead(self, what: str, moment: dt.datetime, *, now: dt.datetime) -> None:
        """Refuse a date after now (with the counters' tolerance); any date before is a fact of
        the past, such as a chronic disease's first diagnosis, and is not billed by itself."""
        if moment > now + dt.timedelta(seconds=self.future_tolerance_seconds):
            raise RuleRejected(
                f"{what}（{shown(moment)}）晚于当前时间{shown(now)}"
                f"（允许误差{self.future_tolerance_seconds // 60}分钟），不能办理未来日期的业务，"
                "请核对日期"
            )

    @staticmethod
    def check_day_not_ahead(what: str, day: dt.date, *, now: dt.datetime) -> None:
        """Refuse a day after today. A day is not a moment: the counters' clock tolerance does
        not carry it into tomorrow (found from outside: a 3201 of tomorrow was answered in the
        last ten minutes of today, and refused past midnight in words showing a made-up time)."""
        today = now.date()
        if day > today:
            raise RuleRejected(
                f"{what}（{day:%Y-%m-%d}）晚于今天（{today:%Y-%m-%d}），"
                "不能办理未来日期的业务，请核对日期"
            )

    def check(self, what: str, moment: dt.datetime, *, admdvs: str, now: dt.datetime) -> None:
        """Refuse a date out of bounds; `what` names it (e.g. "挂号时间begntime")."""
        why = self.reason(moment, admdvs=admdvs, now=now)
        if why is not None:
            raise RuleRejected(f"{what}{why}，请核对日期")

    def check_line(
        self, feedetl_sn: str, moment: dt.datetime, *, admdvs: str, now: dt.datetime
    ) -> None:
        """The same for one fee line, naming the line."""
        why = self.reason(moment, admdvs=admdvs, now=now)
        if why is not None:
            raise LineRejected(feedetl_sn, f"费用发生时间fee_ocur_time{why}，请核对日期")


def within_visit(
    feedetl_sn: str,
    moment: dt.datetime,
    *,
    begntime: dt.datetime,
    endtime: dt.datetime | None,
    start: str,
    stay: bool = True,
) -> None:
    """A fee line belongs to its visit: not on a day before the registration or admission, nor
    on a day after the discharge. Whole days, because HIS send bare dates (midnight) for fee
    lines and discharge medication is charged after the discharge time on the same day.
    `start` names the visit's beginning for the clerk: 挂号, 入院, 购药; `stay`: whether its end
    is a discharge (a manual claim's outpatient visit ends too, and has none: found from
    outside, its clerk was told of a discharge and a stay)."""
    if moment.date() < begntime.date():
        raise LineRejected(
            feedetl_sn,
            f"费用发生时间{shown(moment)}早于{start}时间{shown(begntime)}，费用须发生在{start}之后",
        )
    if endtime is not None and moment.date() > endtime.date():
        end, visit = ("出院", "住院") if stay else ("就诊结束", "就诊")
        raise LineRejected(
            feedetl_sn,
            f"费用发生时间{shown(moment)}晚于{end}时间{shown(endtime)}，"
            f"{end}后的费用不能记入本次{visit}",
        )
