"""No way around chirond: vLLM's real app (every router of every task, built by `build_app` from
the command chirond renders, on the CPU, no engine) with the engine guard chirond adds refuses every
route but /health and /metrics without chirond's key. Without the guard, vLLM's own VLLM_API_KEY
check leaves /invocations (chat and completions) and others open: the control shows the hole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from chirond.engine_guard import MIDDLEWARE, OPEN_PATHS
from chirond.engines import write_guard
from tests.support.engine_commands import rendered_commands

TASKS = ["generate", "transcription", "realtime", "embed", "classify", "token_embed", "token_classify", "render"]


def test_every_route_but_health_and_metrics_needs_chironds_key(probe: Callable[..., Any], tmp_path: Path) -> None:
    argv = rendered_commands(tmp_path)[0][1]
    assert argv[-2:] == ["--middleware", MIDDLEWARE]
    guard = write_guard(tmp_path / "guard")
    got = probe("guard_app", {"argv": argv, "tasks": TASKS, "bare_argv": argv[:-2]},
                env={"PYTHONPATH": str(guard), "VLLM_API_KEY": "chirond-engine-key"})
    guarded, bare = got["guarded"], got["bare"]
    assert "POST /invocations" in guarded and "POST /v1/chat/completions" in guarded and len(guarded) > 30
    for route, st in sorted(guarded.items()):
        path = route.split(" ", 1)[1]
        if path in OPEN_PATHS:
            assert 401 not in st.values(), route
        else:
            assert st["none"] == 401 and st["wrong"] == 401, route
            assert st["key"] != 401, route
    # The hole the guard closes: vLLM's own key check lets these through without a key.
    assert bare["POST /invocations"]["none"] != 401
    assert bare["POST /tokenize"]["none"] != 401
    assert bare["POST /v1/chat/completions"]["none"] == 401
