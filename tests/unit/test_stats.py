"""The proxy's arrival statistics (`chirond.stats.ArrivalWindow`)."""

from __future__ import annotations

import pytest

from chirond.stats import ArrivalWindow


def test_recent_arrivals_by_second_oldest_first_within_the_history() -> None:
    w = ArrivalWindow(history_s=120)
    w.arrival(10.2, 100)
    w.arrival(10.7, 300)
    w.arrival(100.5, 50)
    s = w.stats(100.9)
    assert s.recent == ((90.0, 2.0, 400.0), (0.0, 1.0, 50.0))  # (age s, requests, prompt tokens)
    assert s.recent_span_s == pytest.approx(90.7)  # since the first arrival
    later = w.stats(200.0)  # the second at 10 s has left the 120-s history
    assert later.recent == ((100.0, 1.0, 50.0),)
    assert later.recent_span_s == 120.0
