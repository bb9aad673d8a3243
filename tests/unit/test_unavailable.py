"""Which models answer 503 at once instead of queueing: disabled, launches refused, starts failing."""

from chirond.serve.unavailable import FAILED_STARTS, why_unavailable


def test_a_disabled_model_is_unavailable_even_with_instances_left() -> None:
    why = why_unavailable("m", 0, 1, None, 0)
    assert why is not None and why.code == "model_disabled" and "max_instances = 0" in why.message


def test_a_refused_launch_counts_only_while_nothing_serves() -> None:
    why = why_unavailable("m", 2, 0, "sbatch: error: invalid account", 0)
    assert why is not None and why.code == "launch_refused" and "invalid account" in why.message
    assert why_unavailable("m", 2, 1, "sbatch: error: invalid account", 0) is None


def test_repeated_failed_starts_make_it_unavailable() -> None:
    assert why_unavailable("m", 2, 0, None, FAILED_STARTS - 1) is None
    why = why_unavailable("m", 2, 0, None, FAILED_STARTS)
    assert why is not None and why.code == "start_failing" and why.retry_after_s > 0
    assert why_unavailable("m", 2, 1, None, FAILED_STARTS) is None


def test_a_model_that_can_start_is_available() -> None:
    assert why_unavailable("m", 4, 0, None, 0) is None
