"""Time-limit handover on the loopback Slurm cluster: instance jobs with a 3-minute Slurm time limit
under steady interactive load through the real `openai` client. The `chirond` policy must submit a
successor before the limit (its `ends_at` comes from squeue's end_time), route to it once it is
ready, drain the predecessor and end it itself, long before Slurm's TIMEOUT, with no request lost.
About 75 s: the first job turns "expiring" at lead time + 120 s before its limit (60 s after it starts).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import openai

from chirond.cluster.slurm_backend import SlurmBackend
from tests.support import wait_for
from tests.support.daemon import ready
from tests.support.loopback import LoopbackCluster
from tests.support.slurm_daemon import MODEL, daemon_config, running, tagged_jobs

LIMIT_S = 180  # --time=3: the shortest limit the policy's 120 s margin leaves room in


async def steady_load(c: openai.AsyncOpenAI, stop: asyncio.Event, results: list[str]) -> None:
    """Short interactive requests one after another, streamed and not, until `stop`; each outcome
    ("ok" or the error) goes to `results`."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            if n % 2:
                r = await c.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"ping {n}"}],
                    max_tokens=16,
                    extra_body={"ignore_eos": True},
                )
                assert r.usage is not None and r.usage.completion_tokens == 16, r.usage
            else:
                s = await c.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"ping {n}"}],
                    max_tokens=16,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                last = None
                async for ch in s:
                    if ch.choices:
                        last = ch.choices[0].finish_reason or last
                assert last == "length", last
            results.append("ok")
        except (openai.APIError, AssertionError) as e:
            results.append(f"request {n}: {e!r}")
        await asyncio.sleep(0.1)


async def test_time_limit_triggers_a_handover_with_no_failed_request(
    loopback_cluster: LoopbackCluster, tmp_path: Path
) -> None:
    base = daemon_config(tmp_path, loopback_cluster)
    assert base.slurm is not None
    # max_instances 1: the successor may run beside its predecessor (Launch.replaces) until that one
    # has drained; no other launch could pass the cap.
    model = dataclasses.replace(base.models[MODEL], min_instances=1, max_instances=1, initial_instances=1)
    cfg = dataclasses.replace(
        base,
        models={MODEL: model},
        daemon=dataclasses.replace(base.daemon, policy="chirond"),
        slurm=dataclasses.replace(base.slurm, time_limit_s=LIMIT_S),
    )
    stop = asyncio.Event()
    results: list[str] = []
    async with running(cfg) as d:
        b = d.backend
        assert isinstance(b, SlurmBackend) and b.daemon_id is not None
        await wait_for(lambda: len(ready(d)) == 1, 30, "the first instance to be ready")
        (inst,) = d.instances.values()
        first = inst.job_id
        assert first is not None and inst.ends_at is not None
        # ends_at reached the daemon from squeue: the job's start plus its 3-minute limit.
        assert 0 < inst.ends_at - d.clock() <= LIMIT_S
        jobs_seen: list[str] = [first]

        def successor() -> bool:
            jobs_seen.extend(x.job_id for x in d.instances.values() if x.job_id and x.job_id not in jobs_seen)
            return len(jobs_seen) > 1

        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{d.port}/v1", api_key="none", max_retries=0, timeout=30
        ) as c:
            load = asyncio.create_task(steady_load(c, stop, results))
            try:
                # Handover: a successor is submitted and becomes ready, then the first job ends.
                await wait_for(successor, LIMIT_S, "a successor job to be submitted")
                second = jobs_seen[1]
                print(f"successor {second} submitted {inst.ends_at - d.clock():.0f} s before the limit")
                await wait_for(lambda: second in ready(d), 60, "the successor to be ready")
                await wait_for(lambda: inst.id not in d.instances, 60, "the first instance to end")
                print(f"first instance ended {inst.ends_at - d.clock():.0f} s before its limit: {inst.detail}")
                # More requests after the handover, all on the successor.
                n = len(results)
                await wait_for(lambda: len(results) >= n + 5, 30, "requests after the handover")
            finally:
                stop.set()
                await load
        fails = [r for r in results if r != "ok"]
        assert not fails, fails
        assert len(results) > 50, len(results)  # steady load throughout
        # The first job ended because chirond drained and cancelled it, well before its limit.
        assert d.fleet.control.obs.failures[MODEL] == []
        assert inst.cancel_sent_at is not None and inst.ends_at - inst.cancel_sent_at > 30
        state = tagged_jobs(b.daemon_id)[first]
        assert state in ("COMPLETED", "CANCELLED"), state  # not TIMEOUT
        assert [x.job_id for x in d.instances.values()] == [second]
