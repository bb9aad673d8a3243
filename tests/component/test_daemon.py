"""chirond over real HTTP, driven by the real `openai` client, in front of simulated vLLM instances
running as child processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from chirond.daemon import Daemon
from chirond.tokens import make_text
from tests.support import openai_cases as cases
from tests.support import wait_for
from tests.support.daemon import ready_count
from tests.support.openai_cases import client

MODEL = "llama-8b"

# Shared with the Slurm backend's suite (tests/integration/test_slurm_openai.py).
test_chat_and_completions_streaming_and_not = cases.chat_and_completions_streaming_and_not
test_bad_inputs_get_openai_errors_and_the_daemon_keeps_serving = (
    cases.bad_inputs_get_openai_errors_and_the_daemon_keeps_serving
)
test_queue_full_gets_429_with_retry_after = cases.queue_full_gets_429_with_retry_after
test_batch_work_is_preempted_for_interactive_and_resumes = cases.batch_work_is_preempted_for_interactive_and_resumes
test_scale_from_zero_holds_requests_and_counts_ttft_from_arrival = (
    cases.scale_from_zero_holds_requests_and_counts_ttft_from_arrival
)
test_client_disconnect_aborts_the_upstream_request = cases.client_disconnect_aborts_the_upstream_request


async def test_instance_killed_mid_stream_ends_with_error_event_then_serving_resumes(daemon_factory: Any) -> None:
    d: Daemon = await daemon_factory(daemon__policy="static", model__sim_speedup=1.0)
    c = client(d)
    msgs = [{"role": "user", "content": make_text(10)}]
    s = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=400, stream=True,
                                        extra_body={"ignore_eos": True})
    got = 0
    with pytest.raises(openai.APIError):
        async for ch in s:
            if ch.choices and ch.choices[0].delta.content:
                got += 1
                if got == 3:
                    (inst,) = d.instances.values()
                    assert inst.job_id is not None
                    os.kill(int(inst.job_id.split("-")[1]), signal.SIGKILL)
    assert got >= 3
    # The policy replaces the lost instance and the daemon serves again.
    await wait_for(lambda: ready_count(d) >= 1 and all(i.routable for i in d.instances.values()), 30,
                   "a replacement instance")
    r = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3)
    assert r.choices[0].message.content


async def test_engines_take_only_chironds_key(daemon_factory: Any, tmp_path: Path) -> None:
    # A user who reaches an engine's port cannot go around chirond: /v1 wants the engine key,
    # which lives only in the daemon's state directory (0600) and the engines' environment.
    d: Daemon = await daemon_factory()
    key_file = d.cfg.daemon.state_dir / "engine.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() == d.engine_env["VLLM_API_KEY"]
    (inst,) = d.instances.values()
    body = {"model": "llama-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{inst.url}/v1/chat/completions", json=body) as r:
            assert r.status == 401
        headers = {"Authorization": f"Bearer {d.engine_env['VLLM_API_KEY']}"}
        async with s.post(f"{inst.url}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
        async with s.get(f"{inst.url}/metrics") as r:  # as vLLM: metrics and health stay open
            assert r.status == 200
    c = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key="none", max_retries=0)
    r2 = await c.chat.completions.create(model="llama-8b", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r2.choices[0].message.content
    await c.close()


async def test_requests_vllm_cannot_stream_go_upstream_unstreamed(daemon_factory: Any) -> None:
    """chirond streams from engines, but vLLM refuses to stream `prompt_logprobs` and beam search on
    completions (fake-vllm refuses the same): a non-streaming client's request goes through as sent."""
    d: Daemon = await daemon_factory()
    c = client(d)
    r = await c.completions.create(model=MODEL, prompt="hi", max_tokens=3, extra_body={"prompt_logprobs": 1})
    assert r.usage is not None and r.usage.completion_tokens == len(r.choices[0].text.split())
    r = await c.completions.create(model=MODEL, prompt="hi", max_tokens=3, extra_body={"use_beam_search": True})
    assert r.choices[0].text
    msgs = [{"role": "user", "content": "hi"}]
    rc = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3,  # type: ignore[arg-type]
                                         extra_body={"prompt_logprobs": -1})
    assert rc.choices[0].message.content
    # A streaming client asked for what vLLM cannot stream: vLLM's own 400 reaches it.
    with pytest.raises(openai.BadRequestError, match="prompt_logprobs"):
        await c.completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=True,
                                   extra_body={"prompt_logprobs": 1})
    await c.close()
