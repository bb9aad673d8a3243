"""Fault injection (issue 13): the state directory on a small tmpfs fills up mid-batch or while a
large batch validates and is freed again, or is read-only when the daemon starts; each time every
accepted line is answered exactly once, no usage record is lost, and the daemon serves again
without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import aiohttp

from tests.support import faults as f


def fill(dirpath: Path, room: int = 0) -> Path:
    """Fills the file system of `dirpath` to the last byte, then gives `room` bytes back; returns
    the filler file."""
    filler = dirpath / "filler.bin"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        for _ in range(10_000):  # bounded: 10,000 MiB, far past the tmpfs size
            out.write(b"\0" * (1 << 20))
            out.flush()
    with contextlib.suppress(OSError), filler.open("ab") as out:  # the last partial block
        for _ in range(1 << 16):
            out.write(b"\0" * 512)
            out.flush()
    if room:
        os.truncate(filler, max(0, filler.stat().st_size - room))
    return filler


async def test_full_disk_mid_batch_then_freed(tmp_path: Path) -> None:
    with f.tmpfs(tmp_path / "state", "64m") as state:
        async with f.serving(tmp_path, state) as (d, c):
            n = 1500
            bid = await f.submit(c, tmp_path, n, max_tokens=8)
            for _ in range(300):  # bounded: until some lines are answered
                b = await c.batches.retrieve(bid)
                if b.request_counts.completed > 50:
                    break
                await asyncio.sleep(0.1)
            filler = fill(state)
            await asyncio.sleep(3)  # results and usage now fail to be written
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{d.port}/health") as r:
                assert r.status == 200  # still serving
            with contextlib.suppress(Exception):  # an upload now: 503 storage_error, nothing kept
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", b"x" * 4096 + b"\n", filename="x.jsonl")
                async with aiohttp.ClientSession() as s, s.post(
                    f"{d.url}/files", data=form, headers={"Authorization": f"Bearer {f.KEY}"}
                ) as r:
                    assert r.status in (503, 200)
                    if r.status == 503:
                        assert (await r.json())["error"]["code"] == "storage_error"
            filler.unlink()  # space returns: no restart
            b = await f.wait_batch(c, bid)
            assert b.status == "completed"
            await f.answered_once(c, b, n)
            await f.serves(d)
        assert f.usage_requests(state) >= n  # every answered line's usage was recorded


async def test_full_disk_while_a_large_batch_validates_then_freed(tmp_path: Path) -> None:
    # The upload fits; then the disk is left with too little room for the batch's rows, so the
    # validation itself runs into the full disk (not the create, which needs one page).
    n, bad_every = 4000, 50
    bad = {i for i in range(n) if i % bad_every == 7}
    with f.tmpfs(tmp_path / "state", "64m") as state:
        async with f.serving(tmp_path, state) as (d, c):
            path = tmp_path / "in.jsonl"
            lines = [f.chat_line(i) for i in range(n)]
            for i in bad:  # refused by validation: they must come back in the error file, once
                lines[i] = lines[i].replace(f'"{f.MODEL}"', '"no-such-model"')
            path.write_text("\n".join(lines) + "\n")
            up = await c.files.create(file=path.open("rb"), purpose="batch")
            filler = fill(state, room=256 << 10)
            b = await c.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions",
                                       completion_window="24h")
            for _ in range(300):  # bounded: until a validation attempt has failed on the full disk
                if f"validating {b.id} failed" in d.log.read_text():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("validation never met the full disk: " + d.log.read_text()[-2000:])
            assert (await c.batches.retrieve(b.id)).status == "validating"  # not failed: retried
            await f.serves(d)  # health and chat while full (their usage waits in memory)
            filler.unlink()  # space returns: no restart
            done = await f.wait_batch(c, b.id)
            assert done.status == "completed", done
            await f.answered_once(c, done, n)
            assert done.request_counts.failed == len(bad)
            errors = (await c.files.content(str(done.error_file_id))).text.splitlines()
            assert sorted(json.loads(x)["custom_id"] for x in errors) == sorted(f"req-{i}" for i in bad)
            assert {json.loads(x)["error"]["code"] for x in errors} == {"model_not_found"}
            await f.serves(d)
        assert f.usage_requests(state) >= n - len(bad) + 2  # the lines and both chats


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def open_paths(pid: int) -> list[str]:
    """What the process's descriptors point at ("... (deleted)" for an unlinked file)."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            out.append(os.readlink(fd))
    return out


async def test_deleting_a_running_batchs_input_frees_its_space_at_once(tmp_path: Path) -> None:
    # docs/batch.md: deleting the input file of a batch that has not ended cancels it; the file's
    # space comes back at once (the daemon holds no handle on it), every line is still answered once.
    n = 3000
    with f.tmpfs(tmp_path / "state", "64m") as state:
        async with f.serving(tmp_path, state) as (d, c):
            assert d.proc is not None
            path = tmp_path / "in.jsonl"
            pad = "x" * 2000  # 6 MB in all: a difference statvfs shows plainly
            path.write_text("\n".join(f.chat_line(i, 8).replace("question ", f"{pad} question ") for i in range(n)))
            size = path.stat().st_size
            up = await c.files.create(file=path.open("rb"), purpose="batch")
            b = await c.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h")
            for _ in range(600):  # bounded: until lines are being answered
                got = await c.batches.retrieve(b.id)
                if got.status == "in_progress" and got.request_counts and got.request_counts.completed > 20:
                    break
                await asyncio.sleep(0.1)
            assert got.status == "in_progress" and got.request_counts and got.request_counts.completed < n, got
            before = free_bytes(state)
            assert (await c.files.delete(up.id)).deleted
            for _ in range(100):  # bounded: the space comes back without waiting for the batch
                if free_bytes(state) - before >= 0.8 * size:
                    break
                await asyncio.sleep(0.1)
            assert free_bytes(state) - before >= 0.8 * size, (before, free_bytes(state), size)
            assert not [p for p in open_paths(d.proc.pid) if up.id in p], open_paths(d.proc.pid)
            done = await f.wait_batch(c, b.id)
            assert done.status == "cancelled", done
            await f.answered_once(c, done, n)
            rc = done.request_counts
            assert rc is not None and rc.completed > 0 and rc.failed > 0
            errors = (await c.files.content(str(done.error_file_id))).text.splitlines()
            assert {json.loads(x)["error"]["code"] for x in errors} == {"input_file_deleted"}
            assert done.errors and done.errors.data and done.errors.data[0].code == "input_file_deleted"
            await f.serves(d)


async def test_read_only_state_dir_refuses_start_then_serves_once_writable(tmp_path: Path) -> None:
    # Linux refuses to remount a file system read-only while files on it are open for writing
    # (EBUSY: chirond.db is), so the read-only fault is the one a daemon meets at (re)start:
    # exit 2 naming daemon.state_dir, no traceback; writable again, the same config starts. A
    # storage failure while running is tests/component/test_hostile_requests.py (503 storage_error).
    with f.tmpfs(tmp_path / "state", "16m") as state:
        cfg, port = f.write_config(tmp_path, state)
        f.remount(state, "ro")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chirond", "serve", "--config", str(cfg),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2 and b"daemon.state_dir" in err and b"Traceback" not in err, err[-2000:]
        f.remount(state, "rw")
        d = f.ServeProcess(cfg, port, tmp_path / "daemon.log")
        await d.start()
        c = d.client()
        try:
            bid = await f.submit(c, tmp_path, 50)
            b = await f.wait_batch(c, bid)
            await f.answered_once(c, b, 50)
            await f.serves(d)
        finally:
            await c.close()
            assert await d.stop() == 0
