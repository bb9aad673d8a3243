"""A running instance job requeued by Slurm (`scontrol requeue`, as preemption or a node failure with
--requeue would) on the loopback cluster: the daemon takes the instance out of the ready set, puts
the request it held back in the queue, and serves it again once the same job id runs again and its
engine is healthy at the address the new run wrote. No replacement job is submitted."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import openai

from tests.support import wait_for
from tests.support.daemon import client, ready
from tests.support.loopback import LoopbackCluster, job_state, run
from tests.support.slurm_daemon import MODEL, daemon_config, running, tagged_jobs


async def test_requeued_job_leaves_the_ready_set_and_comes_back_through_starting(
    loopback_cluster: LoopbackCluster, tmp_path: Path
) -> None:
    base = daemon_config(tmp_path, loopback_cluster)  # static policy, one instance
    cfg = dataclasses.replace(base, models={MODEL: dataclasses.replace(base.models[MODEL], sim_speedup=2.0)})
    async with running(cfg) as d:
        assert d.backend.name == "slurm"
        await wait_for(lambda: len(ready(d)) == 1, 30, "the first instance to be ready")
        (inst,) = d.instances.values()
        job = inst.job_id
        assert job is not None
        node = run("squeue", "-h", "-j", job, "-o", "%N").stdout.strip()
        async with client(d) as c:
            # A long request in flight when the job is requeued (about 10 s of output at speedup 2).
            req = asyncio.create_task(c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "a long one"}], max_tokens=1500,
                extra_body={"ignore_eos": True}))  # fmt: skip
            await wait_for(lambda: bool(d.gateway.jobs) and inst.id in d.dispatcher.slots
                             and d.dispatcher.slots[inst.id].inflight == 1, 10, "the request to run")  # fmt: skip
            run("scontrol", "update", f"jobid={job}", "Requeue=1")  # chirond submits --no-requeue
            run("scontrol", "requeue", job)
            await wait_for(lambda: inst.ready_at is None, 15, "the instance to leave the ready set")
            assert inst.id not in d.dispatcher.slots and len(d.fleet.control.obs.failures[MODEL]) == 1
            assert d.dispatcher.queued(MODEL)[0] == 1  # its request waits in the queue again
            # Slurm holds a requeued job back (BeginTime, 2 min here: until the old run's credential
            # expires on its node). Let it start now, on the other node.
            await wait_for(lambda: job_state(job) == "PENDING", 15, "the job to be pending again")
            run("scontrol", "update", f"jobid={job}", f"ExcNodeList={node}", "StartTime=now")
            await wait_for(lambda: inst.ready_at is not None, 60, "the instance to be ready again")
            r = await asyncio.wait_for(req, 60)
            assert r.usage is not None and r.usage.completion_tokens == 1500
            r2 = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=4)  # fmt: skip
            assert r2.choices[0].message.content
        # The same job, run again: no replacement was submitted.
        assert [x.job_id for x in d.instances.values()] == [job]
        assert list(tagged_jobs(d.backend.daemon_id)) == [job]  # type: ignore[attr-defined]
        assert isinstance(r, openai.types.chat.ChatCompletion)
