"""LocalBackend with real child processes on 127.0.0.1: ports, GPU bookkeeping, crash detection,
SIGTERM/SIGKILL, process groups and clean shutdown. Waits are bounded polls; nothing asserts timing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from chirond import engine_guard
from chirond.cluster.backend import BackendError, JobFacts, JobState, LaunchSpec
from chirond.cluster.local import LocalBackend
from chirond.cluster.probe import scrape
from chirond.config import LocalBackendConfig
from chirond.engine_guard import MIDDLEWARE
from chirond.engines import guarded

PY = sys.executable
METRICS = Path(__file__).resolve().parents[1] / "data" / "vllm_metrics" / "vllm-0.10.2.txt"

# A stand-in engine: /health, /metrics from a recorded text, /env tells its CUDA_VISIBLE_DEVICES.
SERVER = """
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b""
        elif self.path == "/metrics":
            body = open(sys.argv[2], "rb").read()
        elif self.path == "/env":
            body = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>").encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

# Writes `marker` on SIGTERM; then exits 0, or (argv[3] == "stay") keeps running until SIGKILL.
TRAP = """
import pathlib, signal, sys, time
marker, ready, mode = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
def on_term(*_):
    marker.write_text("term")
    if mode != "stay":
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
ready.write_text("ready")
for _ in range(1200):
    time.sleep(0.1)
"""

# Starts a grandchild in the same process group, records its pid, then sleeps (or, with argv[2]
# == "crash", exits 3 at once, leaving the grandchild behind like a crashed engine's helper).
PARENT = """
import pathlib, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
pathlib.Path(sys.argv[1] + ".tmp").write_text(str(child.pid))
pathlib.Path(sys.argv[1] + ".tmp").rename(sys.argv[1])
if sys.argv[2:] == ["crash"]:
    sys.exit(3)
time.sleep(120)
"""

SLEEP = [PY, "-c", "import time; time.sleep(120)"]


def spec(instance_id: int, argv: list[str], gpus: int = 1) -> LaunchSpec:
    return LaunchSpec(instance_id=instance_id, model="m", argv=tuple(argv), gpus=gpus)


def pid_of(job_id: str) -> int:
    return int(job_id.removeprefix("local-"))


def gone(pid: int) -> bool:
    """True when no process has this pid, or only a zombie that is not ours to reap (a grandchild
    waiting for init, which in a container may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def until(pred: Callable[[], bool], what: str, tries: int = 400, step: float = 0.05) -> None:
    for _ in range(tries):
        if pred():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"gave up waiting for {what}")


async def until_ended(backend: LocalBackend, job_id: str) -> JobFacts:
    for _ in range(400):
        facts = (await backend.poll()).get(job_id)
        assert facts is not None, f"{job_id} vanished without an ENDED report"
        if facts.state is JobState.ENDED:
            return facts
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} never ended")


async def get(port: int, path: str) -> tuple[int, str]:
    """GET from an instance, retrying while it starts to listen."""
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    return resp.status, await resp.text()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"port {port} never answered")


@pytest.fixture
def make_backend(tmp_path: Path) -> Callable[..., LocalBackend]:
    made: list[LocalBackend] = []

    def make(**kw: object) -> LocalBackend:
        cfg = LocalBackendConfig(**{"gpus": 2, **kw})  # type: ignore[arg-type]
        b = LocalBackend(cfg, tmp_path / "state", stop_grace_s=0.5)
        made.append(b)
        return b

    return make


@pytest.fixture
async def backend(make_backend: Callable[..., LocalBackend]) -> AsyncIterator[LocalBackend]:
    b = make_backend()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()  # never leave children behind, even when a test fails


async def test_two_servers_distinct_ports_gpus_and_logs(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    argv = [PY, "-c", SERVER, "{port}", str(METRICS)]
    a, b = await asyncio.gather(backend.submit(spec(1, argv)), backend.submit(spec(2, argv)))
    facts = await backend.poll()
    fa, fb = facts[a], facts[b]
    assert fa.state is fb.state is JobState.RUNNING
    assert fa.host == fb.host == "127.0.0.1"
    assert fa.port is not None and fb.port is not None and fa.port != fb.port
    assert (fa.instance_id, fb.instance_id) == (1, 2)
    assert fa.started_at is not None and fa.ends_at is None

    assert await get(fa.port, "/health") == (200, "")
    assert await get(fb.port, "/health") == (200, "")
    envs = {(await get(fa.port, "/env"))[1], (await get(fb.port, "/env"))[1]}
    assert envs == {"0", "1"}
    async with aiohttp.ClientSession() as session:
        stats = await scrape(session, f"http://127.0.0.1:{fa.port}", 5.0)
    assert stats.running == 7 and stats.model_names == ("Qwen/Qwen2.5-7B-Instruct",)

    log = (tmp_path / "state" / "instances" / "1.log").read_text()
    assert f"port {fa.port}" in log  # our header
    assert "GET /health" in log  # the child's own stderr


async def test_gpu_accounting_refuses_when_full(backend: LocalBackend) -> None:
    assert backend.free_gpus() == 2
    j1 = await backend.submit(spec(1, SLEEP))
    await backend.submit(spec(2, SLEEP))
    assert backend.free_gpus() == 0
    with pytest.raises(BackendError, match="needs 1 GPU"):
        await backend.submit(spec(3, SLEEP))
    jobs = await backend.poll()
    assert len(jobs) == 2  # the refused one left nothing behind
    # A job without GPUs still fits, and sees none.
    j0 = await backend.submit(spec(4, SLEEP, gpus=0))
    await backend.cancel(j0, grace_s=5.0)
    # Ending a job gives its GPU back.
    await backend.cancel(j1, grace_s=5.0)
    await until_ended(backend, j1)
    assert backend.free_gpus() == 1
    await backend.submit(spec(5, SLEEP))
    assert backend.free_gpus() == 0


async def test_two_gpu_job_gets_two_devices_mapped_through_parent(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon itself sees devices 4 and 7 only: index 0 and 1 must mean those.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    job = await backend.submit(spec(1, [PY, "-c", SERVER, "{port}", str(METRICS)], gpus=2))
    port = (await backend.poll())[job].port
    assert port is not None
    assert await get(port, "/env") == (200, "4,7")
    with pytest.raises(BackendError):
        await backend.submit(spec(2, SLEEP))


async def test_crash_is_reported_twice_then_forgotten(backend: LocalBackend) -> None:
    job = await backend.submit(spec(1, [PY, "-c", "import sys, time; time.sleep(0.3); sys.exit(3)"]))
    facts = await until_ended(backend, job)
    assert facts.detail == "exit code 3"
    assert facts.instance_id == 1
    assert backend.free_gpus() == 2
    second = (await backend.poll()).get(job)
    assert second is not None and second.state is JobState.ENDED and second.detail == "exit code 3"
    assert job not in await backend.poll()


async def test_killed_process_is_reported_with_signal_name(backend: LocalBackend) -> None:
    job = await backend.submit(spec(1, SLEEP))
    os.kill(pid_of(job), signal.SIGKILL)
    assert (await until_ended(backend, job)).detail == "killed by SIGKILL"


async def test_cancel_sends_sigterm_first(backend: LocalBackend, tmp_path: Path) -> None:
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    job = await backend.submit(spec(1, [PY, "-c", TRAP, str(marker), str(ready), "exit"]))
    await until(ready.exists, "the child's SIGTERM handler")
    await backend.cancel(job, grace_s=60.0)
    facts = await until_ended(backend, job)
    assert facts.detail == "exit code 0"  # it ended through its handler, not SIGKILL
    assert marker.read_text() == "term"


async def test_cancel_kills_after_grace_when_sigterm_is_ignored(backend: LocalBackend, tmp_path: Path) -> None:
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    job = await backend.submit(spec(1, [PY, "-c", TRAP, str(marker), str(ready), "stay"]))
    await until(ready.exists, "the child's SIGTERM handler")
    await backend.cancel(job, grace_s=0.3)
    facts = await until_ended(backend, job)
    assert facts.detail == "killed by SIGKILL"
    assert marker.read_text() == "term"  # SIGTERM came first
    await backend.cancel(job, grace_s=0.3)  # cancelling an ended job is a no-op


async def test_shorter_grace_brings_sigkill_forward(backend: LocalBackend, tmp_path: Path) -> None:
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    job = await backend.submit(spec(1, [PY, "-c", TRAP, str(marker), str(ready), "stay"]))
    await until(ready.exists, "the child's SIGTERM handler")
    await backend.cancel(job, grace_s=3600.0)
    await backend.cancel(job, grace_s=0.0)
    assert (await until_ended(backend, job)).detail == "killed by SIGKILL"


async def test_cancel_reaches_the_whole_process_group(backend: LocalBackend, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    job = await backend.submit(spec(1, [PY, "-c", PARENT, str(pidfile)]))
    await until(pidfile.exists, "the grandchild")
    grandchild = int(pidfile.read_text())
    assert not gone(grandchild)
    await backend.cancel(job, grace_s=5.0)
    assert (await until_ended(backend, job)).detail == "killed by SIGTERM"
    await until(lambda: gone(grandchild), "the grandchild to die")


async def test_leftovers_of_a_crashed_leader_are_killed(backend: LocalBackend, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    job = await backend.submit(spec(1, [PY, "-c", PARENT, str(pidfile), "crash"]))
    await until(pidfile.exists, "the grandchild")
    grandchild = int(pidfile.read_text())
    assert (await until_ended(backend, job)).detail == "exit code 3"
    await until(lambda: gone(grandchild), "the orphaned grandchild to be killed")


async def test_stop_leaves_no_child_alive(make_backend: Callable[..., LocalBackend], tmp_path: Path) -> None:
    backend = make_backend(gpus=4)
    await backend.start()
    pidfile, marker, ready = tmp_path / "gc.pid", tmp_path / "marker", tmp_path / "ready"
    jobs = [
        await backend.submit(spec(1, SLEEP)),
        await backend.submit(spec(2, [PY, "-c", TRAP, str(marker), str(ready), "stay"])),  # needs SIGKILL
        await backend.submit(spec(3, [PY, "-c", PARENT, str(pidfile)])),
        await backend.submit(spec(4, [PY, "-c", SERVER, "{port}", str(METRICS)])),
    ]
    await until(ready.exists, "the child's SIGTERM handler")
    await until(pidfile.exists, "the grandchild")
    await backend.cancel(jobs[0], grace_s=3600.0)  # a pending SIGKILL task that stop() must end
    await backend.stop()
    for job in jobs:
        with pytest.raises(ProcessLookupError):  # exited and reaped: not even a zombie
            os.kill(pid_of(job), 0)
    await until(lambda: gone(int(pidfile.read_text())), "the grandchild to die")
    facts = await backend.poll()
    assert {f.state for f in facts.values()} == {JobState.ENDED}
    assert facts[jobs[1]].detail == "killed by SIGKILL"
    assert backend.free_gpus() == 4
    await backend.stop()  # idempotent


def _two_free_ports() -> int:
    """A port p with p and p+1 free (bounded search)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p < 65535:
            with socket.socket() as a, socket.socket() as b:
                try:
                    a.bind(("127.0.0.1", p))
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
            return p
    raise AssertionError("no two adjacent free ports")


async def test_port_in_use_is_skipped_and_exhaustion_refused(make_backend: Callable[..., LocalBackend]) -> None:
    p = _two_free_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", p))
        squatter.listen()
        backend = make_backend(port_range=(p, p + 1))
        await backend.start()
        try:
            job = await backend.submit(spec(1, SLEEP))
            assert (await backend.poll())[job].port == p + 1
            # p is taken by a stranger, p+1 by our own live child (its command does not even listen).
            with pytest.raises(BackendError, match="no free TCP port"):
                await backend.submit(spec(2, SLEEP))
            assert backend.free_gpus() == 1
        finally:
            await backend.stop()


async def test_unrunnable_command_is_refused_cleanly(backend: LocalBackend, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot run"):
        await backend.submit(spec(1, [str(tmp_path / "no-such-engine")]))
    assert backend.free_gpus() == 2
    assert await backend.poll() == {}


def test_constructor_does_nothing(tmp_path: Path) -> None:
    LocalBackend(LocalBackendConfig(), tmp_path / "state")
    assert not (tmp_path / "state").exists()


async def test_a_vllm_command_gets_the_engine_guard(make_backend: Callable[..., LocalBackend], tmp_path: Path) -> None:
    """A `vllm serve` command runs with `--middleware chirond_engine_guard.EngineGuard` and the guard
    importable from PYTHONPATH, as vLLM imports it (a stand-in `vllm` records both)."""
    record = tmp_path / "record.txt"
    vllm = tmp_path / "bin" / "vllm"
    vllm.parent.mkdir()
    vllm.write_text(f"#!{PY}\nimport sys, chirond_engine_guard\n"
                    f"open({str(record)!r}, 'w').write(repr((sys.argv[1:], chirond_engine_guard.__file__)))\n")
    vllm.chmod(0o755)
    b = make_backend()
    await b.start()
    job = await b.submit(spec(0, list(guarded((str(vllm), "serve", "m", "--port", "{port}"))), gpus=0))
    facts = await until_ended(b, job)
    assert record.exists(), facts.detail
    argv, guard = eval(record.read_text())  # our own repr, written just above
    assert argv[:2] == ["serve", "m"] and argv[-2:] == ["--middleware", MIDDLEWARE]
    assert Path(guard).read_text() == engine_guard.source()
