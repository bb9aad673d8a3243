"""fake-vllm's start-up counts from its process's start (chirond.fakevllm.server.process_age_s)."""

from __future__ import annotations

import time

import pytest

from chirond.fakevllm.server import age_from_proc, process_age_s

IMPORTED = time.monotonic()
# /proc/PID/stat of a process whose name holds spaces and parentheses; its start time (field 22)
# is 2773178 ticks after boot
STAT = ("14680 (fake (vllm) x) S 14573 14573 484 0 -1 4194304 128 0 0 0 0 0 0 0 20 0 1 0 2773178 3133440 390 "
        "18446744073709551615 94007006302208 94007006322089 140735485660032 0 0 0 0 0 0 0 0 0 17 1 0 0 0\n")


def test_age_is_uptime_less_the_start_time() -> None:
    assert age_from_proc(STAT, "27733.50 51000.00\n", 100) == pytest.approx(27733.50 - 27731.78)


@pytest.mark.parametrize("stat, uptime", [("", "1.0 2.0"), (STAT, ""), ("1 (x) S 2", "5.0 1.0"), (STAT, "n/a")])
def test_what_does_not_parse_is_no_age(stat: str, uptime: str) -> None:
    assert age_from_proc(stat, uptime, 100) == 0.0


def test_this_process_is_at_least_as_old_as_this_module() -> None:
    assert process_age_s() >= time.monotonic() - IMPORTED - 0.02  # /proc/uptime counts in 10 ms
