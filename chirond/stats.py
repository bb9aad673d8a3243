"""Interactive arrival statistics kept by the proxy (and the simulator) for the policies."""

from __future__ import annotations

import math

import numpy as np

from chirond.model import LoadStats


class ArrivalWindow:
    """Per-second buckets of arrivals and prompt tokens over a sliding history."""

    def __init__(self, history_s: int = 1800) -> None:
        self.history_s = history_s
        self._count = np.zeros(history_s)
        self._tokens = np.zeros(history_s)
        self._last_sec = 0  # the newest bucket written
        self._mean_input = 0.0
        self._mean_output = 0.0
        self._n_in = 0
        self._n_out = 0
        self._last_arrival = -math.inf
        self._first_arrival = math.inf

    def _roll_to(self, sec: int) -> None:
        if sec <= self._last_sec:
            return
        gap = sec - self._last_sec
        if gap >= self.history_s:
            self._count[:] = 0
            self._tokens[:] = 0
        else:
            idx = np.arange(self._last_sec + 1, sec + 1) % self.history_s
            self._count[idx] = 0
            self._tokens[idx] = 0
        self._last_sec = sec

    def arrival(self, now: float, input_tokens: int) -> None:
        sec = int(now)
        self._roll_to(sec)
        i = sec % self.history_s
        self._count[i] += 1
        self._tokens[i] += input_tokens
        self._n_in += 1
        self._last_arrival = max(self._last_arrival, now)
        self._first_arrival = min(self._first_arrival, now)
        # Exponentially weighted, so a change of workload shows within a few hundred requests.
        w = max(1.0 / self._n_in, 0.005)
        self._mean_input += w * (input_tokens - self._mean_input)

    def completion(self, output_tokens: int) -> None:
        self._n_out += 1
        w = max(1.0 / self._n_out, 0.005)
        self._mean_output += w * (output_tokens - self._mean_output)

    def stats(self, now: float) -> LoadStats:
        sec = int(now)
        self._roll_to(sec)
        order = (np.arange(sec - self.history_s + 1, sec + 1)) % self.history_s
        count = self._count[order]
        tokens = self._tokens[order]
        busy = np.flatnonzero(count)
        # Always over the whole minute and ten minutes, never "since the start": the daemon's clock
        # is monotonic (hours at any start), the simulator's starts at 0 with its first arrival, and
        # the two must read the same traffic alike (dividing by `now` there read one request at t = 0
        # as one a second, and launched an instance the daemon never launched).
        return LoadStats(
            rate_1m=float(count[-60:].sum()) / 60.0,
            rate_10m=float(count[-600:].sum()) / 600.0,
            prompt_tokens_1m=float(tokens[-60:].sum()) / 60.0,
            prompt_tokens_10m=float(tokens[-600:].sum()) / 600.0,
            mean_input=self._mean_input,
            mean_output=self._mean_output,
            idle_s=max(0.0, now - self._last_arrival),
            recent=tuple(zip((self.history_s - 1 - busy).tolist(), count[busy].tolist(), tokens[busy].tolist(),
                             strict=True)),
            # since the first arrival (not the clock's zero, as for the rates above), at most the history
            recent_span_s=max(1.0, min(now - self._first_arrival, float(self.history_s))),
        )
