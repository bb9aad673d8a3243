"""The interactive arrival window the policies read: the same traffic reads the same on any clock."""

from __future__ import annotations

import dataclasses

import pytest

from chirond.stats import ArrivalWindow

# (seconds after the first arrival, prompt tokens): a request at the very start, a burst, a lull
TRAFFIC = [(0.0, 4800), (0.4, 30), (2.0, 370), (2.1, 900), (2.2, 120), (45.0, 64), (130.0, 2000)]
# The simulator's clock starts at 0 with the trace; the daemon's is monotonic (the machine's uptime),
# and `chirond replay` starts the trace a cold start after the daemon.
ORIGINS = [0, 201, 25_000]


def _window(origin: int) -> ArrivalWindow:
    w = ArrivalWindow()
    for t, tokens in TRAFFIC:
        w.arrival(origin + t, tokens)
    return w


@pytest.mark.parametrize("after", [0.0, 0.5, 3.0, 59.0, 61.0, 131.0, 700.0])
def test_the_same_traffic_reads_the_same_whatever_the_clock_reads(after: float) -> None:
    got = {o: dataclasses.asdict(_window(o).stats(o + after)) for o in ORIGINS}
    recent = {o: got[o].pop("recent") for o in ORIGINS}  # whole seconds and counts: exact
    for o in ORIGINS[1:]:
        assert recent[o] == recent[0], f"origin {o} s, {after} s after the first arrival"
        assert got[o] == pytest.approx(got[0]), f"origin {o} s, {after} s after the first arrival"


def test_one_request_at_the_start_is_one_a_minute() -> None:
    # Not one a second: read so, it asked the simulator for an instance the daemon never launched.
    w = ArrivalWindow()
    w.arrival(0.0, 4800)
    s = w.stats(0.0)
    assert s.rate_1m == pytest.approx(1 / 60)
    assert s.prompt_tokens_1m == pytest.approx(4800 / 60)
    assert s.rate_10m == pytest.approx(1 / 600)
