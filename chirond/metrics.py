"""chirond's own Prometheus metrics (`chirond_*`), fed by the same hooks the autoscaler reads.
Labels stay bounded: model, class, pool, state, action, outcome; per-instance series (cap) are
removed when the instance goes."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from chirond import __version__

# vLLM's own TTFT and inter-token buckets, so chirond's and the engines' histograms line up.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
               14400.0, 86400.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.queue = Gauge("chirond_queue_length", "Requests waiting in chirond's queues", ["model", "class"],
                           registry=r)
        self.instances = Gauge("chirond_instances", "Instances by pool and state", ["model", "pool", "state"],
                               registry=r)
        self.cap = Gauge("chirond_instance_batch_cap", "In-flight cap (local batch size) per instance",
                         ["model", "instance"], registry=r)
        self.gpus = Gauge("chirond_gpus_in_use", "GPUs held by chirond's instances", registry=r)
        self.ttft = Histogram("chirond_time_to_first_token_seconds", "TTFT from arrival at chirond",
                              ["model", "class"], buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("chirond_time_per_output_token_seconds", "Mean time per output token per request",
                              ["model", "class"], buckets=TPOT_BUCKETS, registry=r)
        self.requests = Counter("chirond_requests", "Requests by outcome (ok, error, rejected, cancelled)",
                                ["model", "class", "outcome"], registry=r)
        self.slo_met = Counter("chirond_slo_met", "Finished requests that met their SLO (TTFT and TPOT; "
                               "batch: deadline)", ["model", "class"], registry=r)
        self.slo_attainment = Gauge("chirond_slo_attainment", "Fraction of finished requests that met their "
                                    "SLO since start", ["model", "class"], registry=r)
        self.preemptions = Counter("chirond_preemptions", "Batch requests evicted for interactive ones, and "
                                   "requests whose instance was lost", ["model", "reason"], registry=r)
        self.retries = Counter("chirond_upstream_retries", "Attempts retried on another instance",
                               ["model"], registry=r)
        self.scaling = Counter("chirond_scaling_actions", "Actions applied by the control loop",
                               ["model", "action"], registry=r)
        self.tick = Histogram("chirond_control_tick_seconds", "Time spent in one control tick",
                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r)
        self.loop_lag = Gauge("chirond_event_loop_lag_seconds", "How late the control loop last woke up, in "
                              "real seconds (a busy event loop; `chirond replay` reads it)", registry=r)
        # What the dashboard and the alert rules (deploy/) need besides the above.
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)  # python_info
        self.build = Gauge("chirond_build_info", "chirond's version (value 1)", ["version"], registry=r)
        self.build.labels(__version__).set(1)
        self.queue_wait = Histogram("chirond_queue_wait_seconds", "Arrival at chirond to the first instance slot "
                                    "(a cold start included)", ["model", "class"], buckets=E2E_BUCKETS, registry=r)
        self.e2e = Histogram("chirond_request_duration_seconds", "Arrival at chirond to the last token, finished "
                             "requests", ["model", "class"], buckets=E2E_BUCKETS, registry=r)
        self.batch_backlog = Gauge("chirond_batch_backlog_lines", "Batch lines and batch-class requests waiting, "
                                   "per model", ["model"], registry=r)
        self.batch_deadline = Gauge("chirond_batch_next_deadline_seconds", "Seconds to the earliest deadline of "
                                    "the waiting batch work (+Inf when none)", ["model"], registry=r)
        self.last_tick = Gauge("chirond_control_loop_last_tick_timestamp_seconds", "Unix time the control loop "
                               "last went round (stalled when it stops moving)", registry=r)
        self.start_failures = Counter("chirond_instance_start_failures", "Instances that ended or timed out "
                                      "before their first health check", ["model"], registry=r)
        self.launch_refusals = Counter("chirond_launch_refusals", "Launches the backend refused (Slurm: sbatch "
                                       "errors)", ["model"], registry=r)
        self.http_errors = Counter("chirond_http_errors", "Error answers by OpenAI error code (storage_error: "
                                   "chirond's own disk or database failed)", ["code"], registry=r)
        self.ssh_up = Gauge("chirond_ssh_connected", "1 while the SSH connection to the Slurm login node is up "
                            "(backend.slurm.ssh only)", ["target"], registry=r)
        self._finished: dict[tuple[str, str], list[int]] = {}

    def finished(self, model: str, cls: str, met: bool) -> None:
        n = self._finished.setdefault((model, cls), [0, 0])
        n[0] += 1
        n[1] += met
        if met:
            self.slo_met.labels(model, cls).inc()
        self.slo_attainment.labels(model, cls).set(n[1] / n[0])

    def attainment(self, model: str, cls: str) -> float | None:
        """Fraction of finished requests that met their SLO since start; None before the first."""
        n = self._finished.get((model, cls))
        return n[1] / n[0] if n else None

    def drop_instance(self, model: str, inst_id: int) -> None:
        with contextlib.suppress(KeyError):
            self.cap.remove(model, str(inst_id))
