"""The terminal label of the identity-failure counter is bounded per process and per
institution: a client sending made-up terminals cannot grow /metrics without bound, nor take
the labels of other institutions' real terminals."""

from __future__ import annotations

import pytest

from gateway.ops import metrics


def test_one_institution_takes_at_most_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_terminals", set())
    monkeypatch.setattr(metrics, "_per_institution", {})
    share = metrics.MAX_TERMINALS_PER_INSTITUTION
    labels = [metrics.terminal_label("P1", f"made-up-{n}") for n in range(share + 50)]
    assert labels[:share] == [f"made-up-{n}" for n in range(share)]
    assert set(labels[share:]) == {metrics.OTHER_TERMINAL}
    assert metrics.terminal_label("P1", "made-up-0") == "made-up-0"  # a known one keeps its own
    assert metrics.terminal_label("H1", "POS-01") == "POS-01"  # another institution's is kept


def test_the_process_takes_at_most_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_terminals", set())
    monkeypatch.setattr(metrics, "_per_institution", {})
    monkeypatch.setattr(metrics, "MAX_TERMINALS", 5)
    labels = [metrics.terminal_label(f"I{n}", "T") for n in range(8)]
    assert labels == ["T"] * 5 + [metrics.OTHER_TERMINAL] * 3
