"""Every engine command chirond can render (tests/support/engine_commands.py: the config
examples' commands under every policy's engine flags) is parsed by `vllm serve`'s own parser,
passes its serve-argument checks and resolves to an engine config (offline, on the CPU: the models'
config.json files live in tests/data/vllm_models/) with the settings chirond meant."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from chirond.engine_guard import MIDDLEWARE
from tests.support.engine_commands import rendered_commands

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm_models"
MODELS = {"meta-llama/Llama-3.1-8B-Instruct": str(DATA / "llama-3.1-8b"),
          "meta-llama/Llama-3.1-70B-Instruct": str(DATA / "llama-3.1-70b")}
# Controls: flags vLLM 0.33 refuses, so a probe that accepts anything fails this test.
BROKEN = {
    "unknown-flag": ["--no-such-flag"],
    "bad-value": ["--max-num-seqs", "many"],
    "tools-without-parser": ["--enable-auto-tool-choice"],
    "bad-policy": ["--scheduling-policy", "lifo"],
    "unknown-tool-parser": ["--enable-auto-tool-choice", "--tool-call-parser", "llama9_json"],
}


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_rendered_commands_parse_and_resolve(probe: Callable[..., Any], tmp_path: Path) -> None:
    commands = rendered_commands(tmp_path)
    assert len(commands) >= 8
    base = [a for a in commands[0][1] if a not in ("--enable-auto-tool-choice", "--tool-call-parser", "llama3_json")]
    i = base.index("--scheduling-policy")
    controls = [(f"control:{k}", base[:i] + base[i + 2:] + extra) for k, extra in BROKEN.items()]
    got = probe("engine_commands", {"commands": commands + controls, "models": MODELS})
    for label, argv in commands:
        r = got[label]
        assert "error" not in r, (label, r)
        assert r["max_num_seqs"] == int(_flag(argv, "--max-num-seqs")), label
        assert r["max_num_batched_tokens"] == int(_flag(argv, "--max-num-batched-tokens")), label
        assert r["policy"] == _flag(argv, "--scheduling-policy"), label
        assert r["served_model_name"] == _flag(argv, "--served-model-name"), label
        assert r["tensor_parallel_size"] == int(_flag(argv, "--tensor-parallel-size")), label
        assert r["middleware"] == [MIDDLEWARE], label
        assert r["disable_log_stats"] is False, label  # it would remove every vllm:* metric
        # Llama 3.1 chat with `tools` needs auto tool choice and its parser, or vLLM answers 400.
        assert (r["enable_auto_tool_choice"], r["tool_call_parser"]) == (True, "llama3_json"), label
        # An embedding model runs vLLM's pooling runner, the Llama checkpoint converted to embed.
        want = ("pooling", "embed") if label.endswith(":embed") else ("generate", "none")
        assert (r["runner"], r["convert"]) == want, label
    assert any(label.endswith(":embed") for label, _ in commands)
    for label, _ in controls:
        assert "error" in got[label], (label, got[label])
