"""What the control loop learns from traffic and from the cluster, per model, in both worlds: the
interactive arrival window, the mean output of finished batch requests, recent job failures and the
measured queue wait (launch to running)."""

from __future__ import annotations

from collections.abc import Iterable

from chirond.control.instance import Instance
from chirond.model import ReqClass, Request, Slo, within_slo
from chirond.stats import ArrivalWindow

FAILURE_WINDOW_S = 600.0  # failures older than this no longer count
QUEUE_WAIT_WEIGHT = 0.3  # of the newest observation in the queue-wait average
BATCH_MEAN_FLOOR = 0.002  # the batch-output mean keeps adapting at least this fast


class Observations:
    def __init__(self, models: Iterable[str]) -> None:
        names = list(models)
        self.windows = {n: ArrivalWindow() for n in names}
        self.batch_out_mean = dict.fromkeys(names, 0.0)
        self._batch_out_n = dict.fromkeys(names, 0)
        self.failures: dict[str, list[float]] = {n: [] for n in names}
        self.queue_wait = dict.fromkeys(names, 0.0)

    def arrival(self, r: Request) -> None:
        if r.cls is ReqClass.INTERACTIVE:
            self.windows[r.model].arrival(r.arrival, r.input_tokens)

    def completed(self, r: Request, inst: Instance | None) -> None:
        """A request finished with its whole answer (on `inst`, when that is still known)."""
        if r.cls is ReqClass.INTERACTIVE:
            self.windows[r.model].completion(r.output_tokens)
            if inst is not None:
                inst.observe(r.ttft or 0.0, r.tpot or 0.0)
        else:
            n = self._batch_out_n[r.model] = self._batch_out_n[r.model] + 1
            mean = self.batch_out_mean[r.model]
            self.batch_out_mean[r.model] = mean + max(1.0 / n, BATCH_MEAN_FLOOR) * (r.output_tokens - mean)

    def failure(self, model: str, now: float) -> None:
        self.failures[model].append(now)

    def recent_failures(self, model: str, now: float) -> int:
        fails = [f for f in self.failures[model] if f > now - FAILURE_WINDOW_S]
        self.failures[model] = fails
        return len(fails)

    def running(self, inst: Instance, now: float) -> None:
        """`inst` began running: its launch-to-running wait feeds the lead time (once per job)."""
        if not inst.queue_wait_known:
            inst.queue_wait_known = True
            wait = self.queue_wait[inst.model]
            self.queue_wait[inst.model] = wait + QUEUE_WAIT_WEIGHT * (now - inst.launched_at - wait)


def slo_met(r: Request, slo: Slo) -> bool:
    """The one definition of "met": an interactive request within both its TTFT and TPOT SLO, a
    batch request finished by its deadline (or without one)."""
    if r.cls is ReqClass.INTERACTIVE:
        ttft, tpot = r.ttft, r.tpot
        return ttft is not None and tpot is not None and bool(within_slo(ttft, tpot, slo.ttft_s, slo.tpot_s))
    return r.deadline is None or (r.finish is not None and r.finish <= r.deadline)
