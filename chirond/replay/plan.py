"""The pure parts of a replay: the daemon config a scenario becomes, the HTTP bodies its requests
become, the batch files of its batch work, and the verdict on whether the machine kept up.

Two clocks. The scenario and the daemon speak "daemon seconds" (the daemon's `Clock` reads K of
them per real second); the client sends request i at `arrival_i / K` real seconds after the start
and records times as real elapsed x K. Everything in the generated config is in daemon seconds
except what the daemon documents as real: `sim_startup_s` (the fake engine's start-up) and
`stop_grace_s`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chirond.model import ReqClass, Request
from chirond.policy import REGISTRY, SWEEPS, make_policy
from chirond.profiles import Profile, load_profile
from chirond.sim.scenario import Scenario, ScenarioError
from chirond.tokens import make_text

ENDPOINT = "/v1/completions"  # the prompt's token count is exact here (chat adds template tokens)
USER_WINDOW = "24h"  # [batch] windows must hold it


@dataclass(frozen=True)
class ModelPlan:
    name: str
    profile_path: Path
    profile: Profile
    ttft_s: float
    tpot_s: float
    cold_start_s: float  # daemon seconds
    min_instances: int
    initial_instances: int  # what the policy starts with (static: its fixed count)
    max_instances: int


@dataclass(frozen=True)
class BatchFile:
    """One batch of the scenario: requests of one model that arrive together with one deadline.
    It is uploaded and created at `arrival` with completion window `window` (real seconds, as the
    store keeps wall time), which is `deadline_s` daemon seconds, rounded to whole real seconds."""

    model: str
    arrival: float  # daemon seconds from the start
    deadline_s: float  # relative, daemon seconds (the scenario's)
    window: str  # e.g. "120s"
    window_daemon_s: float  # what the window is on the daemon's clock
    requests: tuple[Request, ...]


@dataclass(frozen=True)
class ReplayPlan:
    scenario: Scenario
    policy: str
    params: dict[str, float]
    speedup: float
    seed: int
    models: tuple[ModelPlan, ...]
    interactive: tuple[Request, ...]  # by arrival
    batches: tuple[BatchFile, ...]  # by arrival
    warnings: tuple[str, ...] = field(default=())

    def model(self, name: str) -> ModelPlan:
        return next(m for m in self.models if m.name == name)

    @property
    def windows(self) -> list[str]:
        return sorted({USER_WINDOW, *(b.window for b in self.batches)})


def make_plan(
    sc: Scenario, policy: str, requests: Iterable[Request], speedup: float, seed: int
) -> ReplayPlan:
    """What one replay of `policy` runs. Raises ScenarioError for what replay cannot run."""
    if policy in SWEEPS:
        raise ScenarioError(
            f"{policy!r} is a sweep of {SWEEPS[policy]!r} runs, which replay does not do: replay "
            f"{SWEEPS[policy]!r} with [policies.params.{SWEEPS[policy]}] set to the point you want"
        )
    if policy not in REGISTRY:
        raise ScenarioError(f"unknown policy {policy!r}; replay runs: {', '.join(REGISTRY)}")
    if not (speedup > 0 and math.isfinite(speedup)):
        raise ScenarioError(f"--speedup must be a positive number, got {speedup}")
    params: dict[str, float] = {}
    for k, v in sc.policy_params.get(policy, {}).items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ScenarioError(f"{sc.path}: policies.params.{policy}.{k}: the daemon takes numbers only, got {v!r}")
        params[k] = float(v)
    profiles: dict[str, Profile] = {}
    for m in sc.models:
        try:
            profiles[m.name] = load_profile(m.profile_path)
        except ValueError as e:
            raise ScenarioError(f"{sc.path}: models.{m.name}.profile: {e}") from None
    pol = make_policy(policy, profiles, params)
    for m in sc.models:
        if m.min_instances_by_hour:
            # The daemon reads the hour from the local clock, which a faster replay does not follow.
            raise ScenarioError(f"{sc.path}: models.{m.name}.min_instances_by_hour: replay does not run "
                                "hour-of-day schedules (the daemon reads the local time of day)")
        if m.learned_floor_price > 0:
            raise ScenarioError(f"{sc.path}: models.{m.name}.learned_floor_price: replay does not run "
                                "hour-of-day schedules, learned ones neither (the daemon reads the local time of day)")
    models = []
    for m in sc.models:
        prof = profiles[m.name]
        models.append(ModelPlan(
            name=m.name, profile_path=m.profile_path, profile=prof, ttft_s=m.ttft_s, tpot_s=m.tpot_s,
            cold_start_s=m.cold_start_s if m.cold_start_s is not None else prof.cold_start_s,
            min_instances=m.min_instances,
            initial_instances=pol.initial_instances(m.name, m.initial_instances, m.static_instances),
            max_instances=max(1, m.max_gpus // prof.gpus),
        ))  # fmt: skip
    warnings = []
    if sc.cluster.failures:
        warnings.append("[[cluster.failures]] are not emulated by replay: node failures are left out")
    inter = tuple(sorted((r for r in requests if r.cls is ReqClass.INTERACTIVE), key=lambda r: r.arrival))
    batches = batch_files(
        (r for r in requests if r.cls is ReqClass.BATCH), speedup, warnings
    )
    return ReplayPlan(sc, policy, params, speedup, seed, tuple(models), inter, batches, tuple(warnings))


def batch_files(
    requests: Iterable[Request], speedup: float, warnings: list[str] | None = None
) -> tuple[BatchFile, ...]:
    """Batch requests grouped by (model, arrival, relative deadline): one Batch API batch each."""
    groups: dict[tuple[str, float, float], list[Request]] = {}
    for r in requests:
        if r.deadline is None:
            raise ScenarioError(f"batch request {r.id} of {r.model} has no deadline: replay needs one for its window")
        groups.setdefault((r.model, r.arrival, round(r.deadline - r.arrival, 6)), []).append(r)
    if len(groups) > 200:
        raise ScenarioError(
            f"{len(groups)} batch groups (model, arrival, deadline): replay sends batch work through the Batch "
            "API, one batch per group; use backlogs, or interactive traces, for spread-out batch arrivals"
        )
    out = []
    for (model, arrival, rel), reqs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        window, daemon_s = window_for(rel, speedup)
        if warnings is not None and abs(daemon_s - rel) > 0.01 * rel:
            warnings.append(
                f"{model}: a deadline of {rel:g} s is a window of {window} at speedup {speedup:g}, "
                f"{daemon_s:g} s on the daemon's clock (the store counts whole real seconds)"
            )
        out.append(BatchFile(model, arrival, rel, window, daemon_s, tuple(sorted(reqs, key=lambda r: r.id))))
    return tuple(out)


def window_for(deadline_s: float, speedup: float) -> tuple[str, float]:
    """The Batch API window for a deadline of `deadline_s` daemon seconds: the store keeps wall
    time, so it is deadline / K real seconds, in whole seconds (at least 1)."""
    real = max(1, round(deadline_s / speedup))
    if real > 999_999:
        raise ScenarioError(f"a batch deadline of {deadline_s:g} s is too long for a completion window")
    return f"{real}s", real * speedup


def completion_body(model: str, input_tokens: int, output_tokens: int, *, stream: bool, salt: int = 0) -> dict:
    """A /v1/completions body whose prompt counts as exactly `input_tokens` (chirond.tokens) and
    whose answer is exactly `output_tokens` long: `ignore_eos` makes vLLM (and fake-vllm) generate
    up to max_tokens whatever the text."""
    body: dict = {
        "model": model,
        "prompt": make_text(max(1, input_tokens), salt),
        "max_tokens": max(1, output_tokens),
        "ignore_eos": True,
        "temperature": 0.0,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def batch_jsonl(b: BatchFile) -> bytes:
    """The batch's input file: one line per request, custom_id "r<request id>"."""
    lines = (
        json.dumps({
            "custom_id": f"r{r.id}", "method": "POST", "url": ENDPOINT,
            "body": completion_body(r.model, r.input_tokens, r.output_tokens, stream=False, salt=r.id),
        }, separators=(",", ":"))
        for r in b.requests
    )  # fmt: skip
    return ("\n".join(lines) + "\n").encode()


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def daemon_config(
    plan: ReplayPlan,
    *,
    listen_port: int,
    port_range: tuple[int, int],
    state_dir: Path,
    log_level: str = "info",
    max_connections: int = 1000,
) -> str:
    """The daemon's config for one replay, as TOML text (see docs/scenarios.md, "Replay")."""
    sc, k = plan.scenario, plan.speedup
    c = sc.cluster
    backlog = sum(len(b.requests) for b in plan.batches)
    sections: list[tuple[str, dict[str, object]]] = [
        ("daemon", {
            "listen_host": "127.0.0.1", "listen_port": listen_port, "state_dir": state_dir,
            "tick_s": sc.tick_s, "policy": plan.policy, "backend": "local", "log_level": log_level,
            "clock_speedup": k,
            # daemon seconds: a stop takes at most a couple of real seconds
            "shutdown_timeout_s": 2.0 * k,
        }),
        ("daemon.policy_params", dict(plan.params)),
        ("api", {
            "auth": "open",
            # The simulator queues without bound and never gives up on a request before the horizon.
            "max_queue_interactive": max(1024, len(plan.interactive)),
            "max_queue_batch": max(65536, backlog),
            "max_wait_s": sc.horizon_s,
            # Every request comes from this one client address, and the simulator has no port
            # guards: lift them so they neither close the client's kept-alive connections nor
            # refuse its bursts (as many connections as the open-files limit allows, all for it).
            "max_connections": max_connections, "max_connections_per_client": max_connections,
            "idle_timeout_s": sc.horizon_s, "header_timeout_s": sc.horizon_s, "body_timeout_s": sc.horizon_s,
        }),
        ("backend.local", {
            "gpus": c.gpus, "port_range": list(port_range),
            "queue_wait_s": list(c.queue_wait_s), "time_limit_s": c.time_limit_s, "seed": plan.seed,
            "queue_when_full": True,  # as Slurm and the simulated partition: a launch waits for GPUs
        }),
        ("batch", {"windows": plan.windows}),
    ]  # fmt: skip
    for m in plan.models:
        sections.append((f'models."{m.name}"', {
            "profile": m.profile_path,
            "slo": {"ttft_s": m.ttft_s, "tpot_s": m.tpot_s},
            "min_instances": m.min_instances, "initial_instances": m.initial_instances,
            "max_instances": m.max_instances,
            "sim_speedup": k,
            "sim_startup_s": m.cold_start_s / k,  # real seconds: the fake engine's start-up
        }))  # fmt: skip
    out = [f"# Generated by `chirond replay` for scenario {sc.name!r}, policy {plan.policy!r}, speedup {k:g}."]
    for name, table in sections:
        out.append(f"\n[{name}]")
        out.extend(f"{key} = {_toml(v)}" for key, v in table.items())
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class LagVerdict:
    trustworthy: bool
    reasons: tuple[str, ...]
    limit_s: float  # daemon seconds of lag allowed


def lag_verdict(
    *,
    speedup: float,
    slo_ttft_s: Sequence[float],
    client_lag_p99_s: float,
    client_loop_lag_max_s: float,
    daemon_loop_lag_max_s: float | None,
    fraction: float,
) -> LagVerdict:
    """Lags in daemon seconds (real x K). The run is trustworthy when the client sent its requests
    on time (p99 of how late each was sent), and neither event loop (client, daemon) stalled, each
    within `fraction` of the tightest TTFT SLO: beyond that the lag itself, not the policy, decides
    whether requests meet their SLO."""
    limit = fraction * min(slo_ttft_s)
    reasons = []
    for what, lag in (
        ("client send lag p99", client_lag_p99_s),
        ("client event-loop lag max", client_loop_lag_max_s),
        ("daemon event-loop lag max", daemon_loop_lag_max_s),
    ):
        if lag is not None and lag > limit:
            reasons.append(
                f"{what} {lag:.3f} s (daemon clock) exceeds {fraction:g} x the tightest TTFT SLO = {limit:.3f} s: "
                f"this machine does not keep up with speedup {speedup:g}; try a lower --speedup"
            )
    return LagVerdict(not reasons, tuple(reasons), limit)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    i = (len(v) - 1) * q / 100.0
    lo = math.floor(i)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (i - lo)


def model_gpus(plan: ReplayPlan) -> Mapping[str, int]:
    return {m.name: m.profile.gpus for m in plan.models}
