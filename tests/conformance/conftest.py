"""The conformance tier: vLLM's own code, from the pinned vLLM in its own cached virtual
environment (scripts/vllm-venv.sh; the test command installs it), judges what chirond renders and
what fake-vllm answers. Each test hands JSON to a probe script (tests/conformance/probes/) that the
vLLM environment's python runs, and gets JSON back: chirond's venv never imports vLLM.

The venv's python is `$CHIROND_VLLM_PYTHON`, else what `scripts/vllm-venv.sh --path` names. When
it is missing the tier fails, unless CHIROND_SKIP_CONFORMANCE=1 says to skip it (for a quick local
run without the 1 GB install); CI never sets it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from chirond.fakevllm import FakeVllm

ROOT = Path(__file__).resolve().parents[2]
PROBES = Path(__file__).resolve().parent / "probes"
PROBE_TIMEOUT_S = 300
FAKE_MODEL = "llama-8b"  # the name the `fake` fixture serves
FAKE_MAX_MODEL_LEN = 4096  # importing vLLM takes 10-30 s on a busy 2-core machine

Probe = Callable[..., Any]


def _vllm_python() -> Path:
    if os.environ.get("CHIROND_VLLM_PYTHON"):
        return Path(os.environ["CHIROND_VLLM_PYTHON"])
    out = subprocess.run(["bash", str(ROOT / "scripts" / "vllm-venv.sh"), "--path"], capture_output=True,
                         text=True, check=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    py = _vllm_python()
    if not py.exists():
        why = f"no vLLM environment at {py}: run `bash scripts/vllm-venv.sh` (the test command does)"
        if os.environ.get("CHIROND_SKIP_CONFORMANCE") == "1":
            pytest.skip(f"CHIROND_SKIP_CONFORMANCE=1 and {why}")
        pytest.fail(why + ", or set CHIROND_SKIP_CONFORMANCE=1 to skip the conformance tier")
    return py


@pytest.fixture(scope="session")
def probe(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Probe:
    """probe("name", payload, env) runs probes/name.py with the payload as JSON on stdin under the vLLM
    environment and returns its JSON answer; a probe that fails fails the test with its stderr."""
    home = tmp_path_factory.mktemp("vllm-home")

    def run(name: str, payload: Any = None, env: dict[str, str] | None = None) -> Any:
        extra = dict(env or {})
        path = os.pathsep.join([str(PROBES), *filter(None, [extra.pop("PYTHONPATH", "")])])
        # Offline, CPU platform (the CUDA build finds no GPU), caches in the test's temporary folder.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "VLLM_TARGET_DEVICE": "cpu",
               "VLLM_CACHE_ROOT": str(home / "vllm"), "HF_HOME": str(home / "hf"), "PYTHONPATH": path,
               "VLLM_LOGGING_LEVEL": "ERROR", **extra}
        res = subprocess.run([str(vllm_python), str(PROBES / f"{name}.py")], input=json.dumps(payload),
                             capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env, cwd=home, check=False)
        if res.returncode != 0:
            pytest.fail(f"probe {name} exited {res.returncode}:\n{res.stderr[-4000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture
async def fake() -> AsyncIterator[FakeVllm]:
    """A fake-vllm server of the 8B profile, serving FAKE_MODEL with FAKE_MAX_MODEL_LEN, 50x fast."""
    s = FakeVllm(ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml", FAKE_MODEL, speedup=50,
                 max_model_len=FAKE_MAX_MODEL_LEN)
    await s.start("127.0.0.1", 0, startup_s=0.0)
    try:
        yield s
    finally:
        await s.stop()
