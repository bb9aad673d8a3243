"""Scaling and failure handling on the loopback Slurm cluster, with an in-process daemon (the setup of
test_slurm_daemon.py):

* the `chirond` policy scales out when interactive requests queue past half the TTFT SLO (a second
  Slurm job is submitted and becomes ready) and back in once the load stops (the extra job is
  drained and ends, the daemon keeps one instance);
* a node set down under a running instance: its job ends, the daemon counts a failure, non-streaming
  requests in flight there are retried on the other instance and succeed, streams that already had
  bytes end with an error event (the documented behaviour, chirond/serve/api.py), and a replacement
  becomes ready on the remaining node. The node is resumed whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import openai
from openai.types.chat import ChatCompletionMessageParam

from chirond.cluster.slurm_backend import SlurmBackend
from chirond.model import Slo
from tests.support import wait_for
from tests.support.daemon import client, ready
from tests.support.loopback import USABLE_NODE_STATES, LoopbackCluster, SlurmJobs, run, wait_state
from tests.support.slurm_daemon import MODEL, daemon_config, running, tagged_jobs

LONG = 2000  # output tokens of a "long" request: about 6 s on the 8B profile at sim_speedup 4


def node_of(job_id: str) -> str:
    return run("squeue", "-h", "-j", job_id, "-o", "%N").stdout.strip()


def node_state(node: str) -> str:
    return run("sinfo", "-h", "-n", node, "-o", "%t", check=False).stdout.strip().rstrip("*~#$@")


def busy(partition: str) -> list[str]:
    """Jobs (anyone's) pending, running or completing in `partition`."""
    states = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"
    return run("squeue", "-h", "-p", partition, "-t", states, "-o", "%i").stdout.split()


async def long_request(c: openai.AsyncOpenAI, max_tokens: int, stream: bool) -> str:
    """One long interactive request: "ok" when it completed in full, else the error it ended with."""
    msgs: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a long story."}]
    try:
        if not stream:
            r = await c.chat.completions.create(
                model=MODEL, messages=msgs, max_tokens=max_tokens, extra_body={"ignore_eos": True}
            )
            assert r.usage is not None and r.choices[0].message.content
            assert r.usage.completion_tokens == max_tokens, r.usage
            return "ok"
        s = await c.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True}
        )
        last = None
        async for ch in s:
            if ch.choices:
                last = ch.choices[0].finish_reason or last
        assert last == "length", last
        return "ok"
    except openai.APIError as e:
        return f"error: {e.message}"


# ------------------------------------------------------------------------------------ scale out / in


async def test_chirond_policy_scales_out_under_queueing_and_back_in(
    loopback_cluster: LoopbackCluster, tmp_path: Path
) -> None:
    base = daemon_config(tmp_path, loopback_cluster)
    # TPOT SLO 15 ms: the policy's computed cap is its floor, 8 per instance (the 8B profile's step
    # alone is 11.4 ms, over 0.8 x 15 ms at any batch above 8), so 12 concurrent long requests leave
    # 4 queued; TTFT 0.3 s: they wait past 0.15 s within a tick -> backpressure asks for one more.
    model = dataclasses.replace(
        base.models[MODEL], slo=Slo(ttft_s=0.3, tpot_s=0.015), min_instances=1, max_instances=3, initial_instances=1
    )
    cfg = dataclasses.replace(
        base,
        models={MODEL: model},
        daemon=dataclasses.replace(base.daemon, policy="chirond", policy_params={"scale_down_hold_s": 3.0}),
        lifecycle=dataclasses.replace(base.lifecycle, drain_timeout_s=5.0),
    )
    async with running(cfg) as d, contextlib.AsyncExitStack() as stack:
        b = d.backend
        assert isinstance(b, SlurmBackend) and b.daemon_id is not None
        await wait_for(lambda: len(ready(d)) == 1, 30, "the first instance to be ready")
        (first,) = ready(d)
        c = await stack.enter_async_context(client(d))  # closed before the daemon stops
        # One short request, so the policy sees interactive traffic and sets its SLO cap (8).
        r = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].message.content
        await wait_for(lambda: [s.cap for s in d.dispatcher.slots.values()] == [8], 5, "the SLO cap of 8")

        load = [asyncio.create_task(long_request(c, 4 * LONG, stream=True)) for _ in range(12)]
        try:
            await wait_for(lambda: len(d.instances) == 2, 10, "a second instance to be launched")
            await wait_for(lambda: len(ready(d)) == 2, 30, "the second instance to be ready")
            second = next(j for j in ready(d) if j != first)
            ours = tagged_jobs(b.daemon_id)
            assert ours == {first: "RUNNING", second: "RUNNING"}, ours
            # The queue empties onto the new instance, and the pressure does not ask for a third.
            await wait_for(lambda: d.dispatcher.queued(MODEL) == (0, 0), 10, "the queue to empty")
            slot = d.dispatcher.slots[next(i.id for i in d.instances.values() if i.job_id == second)]
            assert slot.inflight > 0
        finally:
            for t in load:
                t.cancel()  # the client goes away: chirond aborts the upstream requests
            await asyncio.gather(*load, return_exceptions=True)

        # No load: the pressure holds 3 s, the plan must ask for fewer for 3 s more, then one is drained.
        t0 = time.monotonic()
        await wait_for(lambda: len(d.instances) == 1, 25, "one instance to be drained and to end")
        print(f"load stopped -> back to one instance: {time.monotonic() - t0:.1f} s")
        (left,) = d.instances.values()
        gone = ({first, second} - {left.job_id}).pop()
        assert left.job_id in (first, second) and left.ready_at is not None
        assert wait_state(gone, "COMPLETED", "CANCELLED", timeout=10) in ("COMPLETED", "CANCELLED")
        assert tagged_jobs(b.daemon_id)[left.job_id or ""] == "RUNNING"
        assert not d.fleet.control.obs.failures[MODEL]  # a drain is not a failure
        r = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].message.content


# --------------------------------------------------------------------------------- a node goes down


async def test_node_down_fails_its_instance_retries_requests_and_replaces_it(
    loopback_cluster: LoopbackCluster, slurm_jobs: SlurmJobs, tmp_path: Path
) -> None:
    c0 = loopback_cluster
    assert len(c0.nodes) >= 2
    # Jobs of earlier tests may still be on their way out: start from an empty partition.
    await wait_for(lambda: not busy(c0.partition), 20, f"partition {c0.partition} to be empty")
    # Blockers holding all but one GPU of each of the first two nodes: the daemon's two jobs then land one
    # per node. The second node's blocker goes once the first node is down, to make room for the replacement.
    gres = f"--gres=gpu:{c0.gpu_type}:{c0.gpus_per_node - 1}"
    blockers = [slurm_jobs.submit(gres, "-w", node, wrap="sleep 300") for node in c0.nodes[:2]]
    for b in blockers:
        wait_state(b, "RUNNING", timeout=15)
    base = daemon_config(tmp_path, c0)
    model = dataclasses.replace(base.models[MODEL], min_instances=2, max_instances=2, initial_instances=2)
    cfg = dataclasses.replace(base, models={MODEL: model})
    downed: str | None = None
    try:
        async with running(cfg) as d, contextlib.AsyncExitStack() as stack:
            b = d.backend
            assert isinstance(b, SlurmBackend)
            await wait_for(lambda: len(ready(d)) == 2, 30, "two ready instances")
            by_node = {node_of(j): j for j in ready(d)}
            assert set(by_node) == set(c0.nodes[:2]), f"both jobs on one node: {by_node}"
            victim_job = by_node[c0.nodes[0]]
            victim = next(i for i in d.instances.values() if i.job_id == victim_job)
            c = await stack.enter_async_context(client(d))  # closed before the daemon stops
            # Non-streaming requests (LONG tokens) and streams (LONG + 1 tokens, to tell them apart).
            reqs = [asyncio.create_task(long_request(c, LONG, stream=False)) for _ in range(4)]
            streams = [asyncio.create_task(long_request(c, LONG + 1, stream=True)) for _ in range(4)]

            def on_victim(n_tokens: int) -> int:
                return sum(
                    1
                    for j in d.gateway.jobs.values()
                    if j.req.instance == victim.id and j.req.output_tokens == n_tokens
                )

            await wait_for(
                lambda: (
                    on_victim(LONG) > 0
                    and on_victim(LONG + 1) > 0
                    and sum(1 for j in d.gateway.jobs.values() if j.req.first_token) == 8
                ),
                10,
                "both kinds of request to run on the victim's instance, all past their first token",
            )
            plain_there, streams_there = on_victim(LONG), on_victim(LONG + 1)
            downed = c0.nodes[0]
            run("scontrol", "update", f"nodename={downed}", "state=down", "reason=chirond-test")
            t0 = time.monotonic()

            await wait_for(lambda: victim.id not in d.instances, 20, "the daemon to see the victim's job end")
            print(f"node down -> daemon saw the end: {time.monotonic() - t0:.1f} s; detail {victim.detail!r}")
            assert len(d.fleet.control.obs.failures[MODEL]) == 1
            end_state = run("squeue", "-h", "-t", "all", "-j", victim_job, "-o", "%T").stdout.strip()
            assert end_state in ("NODE_FAIL", "FAILED", "CANCELLED"), end_state  # --no-requeue: not requeued

            run("scancel", blockers[1])  # room on the node still up

            results = await asyncio.wait_for(asyncio.gather(*reqs), 40)
            assert results == ["ok"] * 4, results  # the ones on the lost node were retried on the other
            outcomes = await asyncio.wait_for(asyncio.gather(*streams), 40)
            errors = [o for o in outcomes if o != "ok"]
            assert len(errors) == streams_there, (outcomes, streams_there)  # streams there end with an error event
            assert all("lost mid-stream" in e or "failed" in e for e in errors), errors
            assert plain_there > 0

            # The static policy asks for two again: a replacement, necessarily on the node still up.
            await wait_for(lambda: len(ready(d)) == 2 and victim_job not in ready(d), 30, "a replacement")
            replacement = next(j for j in ready(d) if j not in by_node.values())
            assert node_of(replacement) == c0.nodes[1]
            assert await long_request(c, 8, stream=False) == "ok"
    finally:
        if downed is not None:
            run("scontrol", "update", f"nodename={downed}", "state=resume", check=False)
            end = time.monotonic() + 15
            while node_state(downed) not in USABLE_NODE_STATES and time.monotonic() < end:
                await asyncio.sleep(0.2)
            assert node_state(downed) in USABLE_NODE_STATES, f"{downed} is {node_state(downed)!r} after resume"
