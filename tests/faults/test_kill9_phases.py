"""Fault injection (issue 13): `kill -9` of `chirond serve` at a seeded random moment of each
batch phase (validating, running, cancel marking, expiry marking, finalizing), then a restart:
every accepted line ends in the output or the error file exactly once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import openai
import pytest

from tests.support import faults as f

SEED = 13
LINES = 3000


async def until(c: openai.AsyncOpenAI, bid: str, test: str, timeout_s: float = 120) -> None:
    """Polls the batch until `test` ("running", "finalizing") holds."""
    for _ in range(int(timeout_s * 50)):
        b = await c.batches.retrieve(bid)
        if test == "running" and b.status == "in_progress" and b.request_counts.completed > 0:
            return
        if test == "finalizing" and b.status in ("finalizing", "cancelling", "completed"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch never {test}")


@pytest.mark.parametrize("phase", ["validating", "running", "cancel-marking", "expiry-marking", "finalizing"])
async def test_kill_9_in_each_batch_phase_loses_and_duplicates_nothing(tmp_path: Path, phase: str) -> None:
    rng = random.Random(f"{SEED}-{phase}")
    cfg, port = f.write_config(tmp_path, tmp_path / "state")
    text = cfg.read_text() + '\n[batch]\nwindows = ["24h", "4s"]\n'
    cfg.write_text(text)
    d = f.ServeProcess(cfg, port, tmp_path / "daemon.log")
    await d.start()
    c = d.client()
    try:
        window = "4s" if phase == "expiry-marking" else "24h"
        bid = await f.submit(c, tmp_path, LINES, max_tokens=16 if phase == "expiry-marking" else 4, window=window)
        if phase == "validating":
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        elif phase == "running":
            await until(c, bid, "running")
            await asyncio.sleep(rng.uniform(0.0, 2.0))
        elif phase == "cancel-marking":
            await until(c, bid, "running")
            await c.batches.cancel(bid)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        elif phase == "expiry-marking":
            await asyncio.sleep(4 + rng.uniform(0.0, 1.5))
        else:
            await until(c, bid, "finalizing")
            await asyncio.sleep(rng.uniform(0.0, 0.05))
        await d.kill9()
        await d.start()  # the same state directory: the restart picks the batch up
        b = await f.wait_batch(c, bid)
        expected = {"cancel-marking": {"cancelled", "completed"}, "expiry-marking": {"expired", "completed"}}
        assert b.status in expected.get(phase, {"completed"}), b.status
        await f.answered_once(c, b, LINES)
        await f.serves(d)
    finally:
        await c.close()
        await d.stop()
