"""Run several policies on one scenario, side by side, with the same workload and cluster."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np

from chirond.control.snapshot import higher
from chirond.model import Slo
from chirond.policy import REGISTRY, SWEEPS, make_policy, names
from chirond.profiles import Profile, load_profile
from chirond.sim.hindsight import learn_floor, policy_for
from chirond.sim.report import summarize
from chirond.sim.results import RunResult
from chirond.sim.runner import ClusterSetup, ModelSetup, Simulation
from chirond.sim.scenario import Scenario, ScenarioError, build_workload

# llumnix-tuned: Llumnix's scale-up threshold swept as in the Chiron paper, D = U + 50.
LLUMNIX_SWEEP_U = (5.0, 25.0, 45.0, 65.0, 85.0)

Progress = Callable[[str, float, float], None]


def setups(sc: Scenario) -> tuple[list[ModelSetup], ClusterSetup, dict[str, Profile]]:
    models: list[ModelSetup] = []
    profiles: dict[str, Profile] = {}
    for m in sc.models:
        try:
            prof = load_profile(m.profile_path)
        except ValueError as e:
            raise ScenarioError(f"{sc.path}: models.{m.name}.profile: {e}") from None
        profiles[m.name] = prof
        models.append(
            ModelSetup(
                name=m.name,
                profile=prof,
                slo=Slo(m.ttft_s, m.tpot_s),
                cold_start_s=m.cold_start_s if m.cold_start_s is not None else prof.cold_start_s,
                max_instances=max(1, m.max_gpus // prof.gpus),
                min_instances=m.min_instances,
                initial_instances=m.initial_instances,
                static_instances=m.static_instances,
                min_instances_by_hour=m.min_instances_by_hour,
            )
        )
    c = sc.cluster
    cluster = ClusterSetup(
        gpus=c.gpus,
        gpus_per_node=c.gpus_per_node,
        queue_wait_s=c.queue_wait_s,
        time_limit_s=c.time_limit_s,
        failures=[(f.at_s, f.node, f.down_s) for f in c.failures],
    )
    return models, cluster, profiles


def with_learned_floors(sc: Scenario, seed: int | None = None, policy: str = "chirond",
                        traces: Mapping[str, Path] | None = None) -> Scenario:
    """`sc` with the floor per hour of every model that sets `learned_floor_price` learned from
    its history day (the workload drawn with `history_seed`) with `policy`'s per-instance
    mechanisms, as the daemon learns it from its own traffic (`chirond learn-floor`), and kept
    above any `min_instances_by_hour` of its own. Learned once; the result learns nothing more."""
    learning = [m for m in sc.models if m.learned_floor_price > 0]
    if not learning or sc.history_seed is None:
        return sc
    replaced = sorted(set(traces or {}) & {m.name for m in learning})
    if replaced:
        raise ScenarioError(f"--trace {replaced[0]}: the model learns its floor from the history day, which a "
                            "trace does not replace (set its learned_floor_price to 0 to run the trace)")
    if sc.history_seed == (sc.seed if seed is None else seed):
        raise ScenarioError(f"{sc.path}: history_seed {sc.history_seed} is the seed the run is judged on: "
                            "a floor learned from that day would know it")
    setups_by_name = {m.name: m for m in setups(sc)[0]}
    history = build_workload(sc, np.random.default_rng(sc.history_seed))
    models = []
    for m in sc.models:
        if m.learned_floor_price > 0:
            setup = setups_by_name[m.name]
            learned, _ = learn_floor(history[m.name], setup, policy_for(policy, setup, sc.policy_params.get(policy)),
                                     m.learned_floor_price, tick_s=sc.tick_s)
            m = replace(m, min_instances_by_hour=higher(m.min_instances_by_hour, learned), learned_floor_price=0.0)
        models.append(m)
    return replace(sc, models=tuple(models))


def run_one(
    sc: Scenario,
    policy: str,
    params: Mapping[str, object] | None = None,
    *,
    seed: int | None = None,
    traces: Mapping[str, Path] | None = None,
    label: str | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """One policy, one run. The workload is rebuilt from the seed, so every run sees the same."""
    seed = sc.seed if seed is None else seed
    sc = with_learned_floors(sc, seed, traces=traces)
    models, cluster, profiles = setups(sc)
    merged = {**sc.policy_params.get(policy, {}), **(params or {})}
    pol = make_policy(policy, profiles, merged)
    work = build_workload(sc, np.random.default_rng(seed), trace_overrides=traces)
    reqs = [r for rs in work.values() for r in rs]
    name = label or policy
    sim = Simulation(
        scenario=sc.name,
        models=models,
        cluster=cluster,
        requests=reqs,
        policy=pol,
        policy_name=name,
        seed=seed,
        horizon_s=sc.horizon_s,
        tick_s=sc.tick_s,
        progress=(lambda t, h: progress(name, t, h)) if progress else None,
    )
    return sim.run()


def _score(s: dict[str, object]) -> tuple[float, float]:
    """llumnix-tuned keeps the sweep point with the best mean of the two attainments; within half
    a point, the fewest GPU-hours."""
    att = (float(s["interactive_attainment"]) + float(s["batch_attainment"])) / 2  # type: ignore[arg-type]
    return (round(att / 0.005), -float(s["gpu_hours"]))  # type: ignore[arg-type]


_Task = tuple[Scenario, str, dict[str, object], int | None, Mapping[str, Path] | None, str]


def _job(args: _Task) -> RunResult:
    sc, policy, params, seed, traces, label = args
    return run_one(sc, policy, params, seed=seed, traces=traces, label=label)


def compare(
    sc: Scenario,
    policies: Sequence[str],
    *,
    seed: int | None = None,
    traces: Mapping[str, Path] | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    on_done: Callable[[str, int, int], None] | None = None,
) -> list[RunResult]:
    """Run every policy (a sweep name expands into its runs) and return one result per name."""
    for p in policies:
        if p not in REGISTRY and p not in SWEEPS:
            raise ScenarioError(f"unknown policy {p!r}; known: {', '.join(names())}")
    sc = with_learned_floors(sc, seed, traces=traces)  # once, not in every run
    tasks: list[_Task] = []
    for p in policies:
        if p == "llumnix-tuned":
            for u in LLUMNIX_SWEEP_U:
                params: dict[str, object] = {"scale_up_below": u, "scale_down_above": u + 50}
                tasks.append((sc, "llumnix", params, seed, traces, f"llumnix-tuned U={u:g}"))
        else:
            tasks.append((sc, p, {}, seed, traces, p))
    jobs = jobs or min(len(tasks), os.cpu_count() or 1)
    if jobs > 1:
        results = []
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_job, t) for t in tasks]
            for fut in as_completed(futures):
                results.append(fut.result())
                if on_done is not None:
                    on_done(results[-1].policy, len(results), len(tasks))
    else:
        results = []
        for sc_, pol, task_params, s, t, label in tasks:
            results.append(run_one(sc_, pol, task_params, seed=s, traces=t, label=label, progress=progress))
            if on_done is not None:
                on_done(label, len(results), len(tasks))
    out: list[RunResult] = []
    for p in policies:
        if p == "llumnix-tuned":
            sweep = [r for r in results if r.policy.startswith("llumnix-tuned U=")]
            best = max(sweep, key=lambda r: _score(summarize(r)))
            best.policy = "llumnix-tuned"
            best.params = {**best.params, "swept_u": list(LLUMNIX_SWEEP_U)}
            out.append(best)
        else:
            out.append(next(r for r in results if r.policy == p))
    return out
