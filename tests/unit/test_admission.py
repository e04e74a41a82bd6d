"""The in-flight bound (gateway.pipeline.overload.Admission): fixed, or moved by a latency target
between a floor and the configured bound, window by window of answered requests."""

from __future__ import annotations

from gateway.ops import metrics
from gateway.pipeline.overload import Admission

TARGET = 0.050


def _gauge() -> float:
    return next(s.value for f in metrics.ADMISSION_LIMIT.collect() for s in f.samples)


def _fill(admission: Admission) -> int:
    """Admit until turned away; how many were admitted."""
    taken = 0
    while admission.enter():
        taken += 1
    return taken


def _window(admission: Admission, late: int, *, turned_away: bool) -> None:
    """One window of answers, `late` of them past the target; the bound turned requests away
    during it when `turned_away`."""
    if turned_away:
        held = _fill(admission)
        for _ in range(held):
            admission.leave(None)  # let them go unjudged; the window's answers follow
    for i in range(Admission.WINDOW):
        assert admission.enter()
        admission.leave(TARGET * 2 if i < late else TARGET / 2)


def test_without_a_target_the_bound_is_the_configured_one_whatever_the_latency() -> None:
    admission = Admission(20, 0.25)
    for _ in range(5):
        _window(admission, late=Admission.WINDOW, turned_away=True)
    assert admission.limit == 20
    assert _fill(admission) == 20


def _raised(admission: Admission) -> Admission:
    """Windows within the target, each turning requests away, until the configured bound."""
    while admission.limit < admission.ceiling:
        _window(admission, late=0, turned_away=True)
    return admission


def test_with_a_target_it_starts_at_the_floor_and_climbs_while_requests_are_turned_away() -> None:
    admission = Admission(64, 0.25, TARGET, floor=4)
    assert admission.limit == 4 and _gauge() == 4
    assert _fill(admission) == 4
    for _ in range(4):
        admission.leave(TARGET / 2)
    _window(admission, late=0, turned_away=True)
    assert admission.limit == 5  # at least one
    for _ in range(12):
        _window(admission, late=0, turned_away=True)
    assert 10 < admission.limit < 64  # a tenth at a time past ten
    _raised(admission)
    assert admission.limit == 64  # never past the configured bound
    _window(admission, late=0, turned_away=True)
    assert admission.limit == 64 and _gauge() == 64


def test_late_windows_lower_the_bound_by_a_quarter_while_each_lowering_helps() -> None:
    admission = _raised(Admission(64, 0.25, TARGET, floor=4))
    _window(admission, late=40, turned_away=False)
    assert admission.limit == 48
    assert _gauge() == 48
    assert _fill(admission) == 48  # requests past it are turned away
    for _ in range(48):
        admission.leave(None)
    bounds = []
    for late in (30, 20, 12, 8, 5, 3, 2):  # each lowering leaves fewer late
        _window(admission, late=late, turned_away=False)
        bounds.append(admission.limit)
    assert bounds == [36, 27, 20, 15, 11, 8, 6]


def test_a_lowering_that_bought_nothing_is_given_back_and_not_tried_again_for_a_while() -> None:
    """Found from outside: under a load that kept answers late at any bound (an event loop busy
    with the busy answers), the bound sat at its floor and settled a sixth of a fixed bound's."""
    admission = _raised(Admission(64, 0.25, TARGET, floor=4))
    _window(admission, late=10, turned_away=False)
    assert admission.limit == 48
    _window(admission, late=10, turned_away=False)  # as late as before: given back
    assert admission.limit == 52
    for _ in range(Admission.HOLD - 1):  # late, and held: climbing, never lowered
        before = admission.limit
        _window(admission, late=30, turned_away=False)
        assert admission.limit > before or admission.limit == 64
    assert admission.limit == 64
    _window(admission, late=30, turned_away=False)  # the hold over: tried again
    assert admission.limit == 48


def test_late_at_the_floor_climbs() -> None:
    """Late with the fewest admitted: admitting fewer cannot be the cure."""
    admission = Admission(64, 0.25, TARGET, floor=4)
    assert admission.limit == 4
    bounds = []
    for _ in range(5):
        _window(admission, late=50, turned_away=False)
        bounds.append(admission.limit)
    assert bounds == [5, 6, 7, 8, 9]


def test_one_late_answer_in_a_window_is_the_99th_percentile_within_the_target() -> None:
    admission = _raised(Admission(64, 0.25, TARGET))
    _window(admission, late=Admission.LATE_ALLOWED, turned_away=False)
    assert admission.limit == 64


def test_a_window_within_the_target_that_turned_nobody_away_leaves_it() -> None:
    """A bound nobody reached says nothing about whether more would stay fast."""
    admission = _raised(Admission(64, 0.25, TARGET))
    _window(admission, late=3, turned_away=False)
    assert admission.limit == 48
    _window(admission, late=0, turned_away=False)
    assert admission.limit == 48


def test_unjudged_answers_do_not_count() -> None:
    """An upload's time is its size's: however long, it is not a late answer."""
    admission = _raised(Admission(64, 0.25, TARGET))
    for _ in range(3 * Admission.WINDOW):
        assert admission.enter()
        admission.leave(None)
    assert admission.limit == 64
    assert admission.in_flight == 0


def test_a_slow_senders_share_is_of_the_bound_in_force() -> None:
    """Found from outside: a share of the configured bound (256 x 0.25) let four slow bodies
    from one address hold a bound lowered to four."""
    admission = Admission(256, 0.25, TARGET)
    assert admission.limit == 4
    assert admission.share_limit == 1
    assert admission.start_body(("address:a",))
    assert not admission.start_body(("address:a",))
    assert admission.start_body(("address:b",))
    assert Admission(256, 0.25).share_limit == 64


def test_no_bound_means_no_target() -> None:
    admission = Admission(0, 0.25, TARGET)
    for _ in range(3):
        _window(admission, late=Admission.WINDOW, turned_away=False)
    assert admission.limit == 0 and admission.share_limit == 0
