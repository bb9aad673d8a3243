"""Embedding models: /v1/embeddings requests checked before anything is queued, each task refusing
the other's endpoints, the `task` config key and the engine command it renders."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chirond.check_config import config_warnings
from chirond.config import ConfigError, load_config
from chirond.engines import engine_command
from chirond.model import EngineArgs
from chirond.serve.embeddings import check_task, parse_embeddings
from chirond.serve.openai_errors import ApiError
from chirond.tokens import count_messages, count_text

LIMIT = 1 << 20
TOML = """
[api]
auth = "open"
[models.e5]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = { ttft_s = 1.0, tpot_s = 0.1 }
"""


def parse(body: Any) -> Any:
    return parse_embeddings(json.dumps(body).encode(), "application/json", LIMIT)


@pytest.mark.parametrize(("value", "tokens"), [
    ("hello world", count_text("hello world")),
    (["ab", "cdefghij"], 1 + 2),
    ([5, 6, 7], 3),
    ([[5, 6], [7]], 3),
    ([{"role": "user", "content": "hi there"}], count_messages([{"role": "user", "content": "hi there"}])),
])
def test_accepted_inputs_and_their_token_estimate(value: Any, tokens: int) -> None:
    p = parse({"model": "e5", "input": value, "encoding_format": "base64", "dimensions": 8, "user": "x"})
    assert (p.endpoint, p.model, p.input_tokens, p.stream, p.passthrough, p.max_tokens) == (
        "embeddings", "e5", tokens, False, True, 0)
    assert p.body["user"] == "x"  # unknown fields pass through to vLLM


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": 5, "input": "x"}, "model"),
    ({"model": "e5"}, "input"),
    ({"model": "e5", "input": 5}, "input"),
    ({"model": "e5", "input": [1, "a"]}, "input"),
    ({"model": "e5", "input": [-1]}, "input"),
    ({"model": "e5", "input": []}, "input"),
    ({"model": "e5", "input": "x", "encoding_format": "bytes"}, "encoding_format"),
    ({"model": "e5", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "e5", "input": "x", "dimensions": "8"}, "dimensions"),
    ({"model": "e5", "input": "x", "service_tier": "turbo"}, "service_tier"),
    ({"model": "e5", "messages": [{"content": "no role"}]}, "messages"),
])
def test_refused_with_the_field_named(body: Any, param: str) -> None:
    with pytest.raises(ApiError) as e:
        parse(body)
    assert (e.value.status, e.value.param) == (400, param)


def test_body_limits_and_media_type() -> None:
    with pytest.raises(ApiError) as e:
        parse_embeddings(b'{"model": "e5", "input": "x"}', "text/plain", LIMIT)
    assert e.value.status == 415
    with pytest.raises(ApiError) as e:
        parse_embeddings(b'{"model": "e5", "input": "x"}', "application/json", 10)
    assert e.value.status == 413


def test_each_task_refuses_the_other_endpoints() -> None:
    for endpoint in ("chat", "completions"):
        check_task(endpoint, "m", "generate")
        with pytest.raises(ApiError, match="embedding model") as e:
            check_task(endpoint, "e5", "embed")
        assert (e.value.status, e.value.param) == (400, "model")
    check_task("embeddings", "e5", "embed")
    with pytest.raises(ApiError, match=r"generative model.*not /v1/embeddings"):
        check_task("embeddings", "m", "generate")


def test_task_key_and_the_engine_command(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    assert load_config(path).models["e5"].task == "generate"
    path.write_text(TOML + 'task = "classify"\n')
    with pytest.raises(ConfigError, match=r"models\.e5\.task"):
        load_config(path)
    path.write_text(TOML + 'task = "embed"\ncommand = ["vllm", "serve", "intfloat/e5-mistral-7b-instruct", '
                    '"--port", "{port}"]\n')
    m = load_config(path).models["e5"]
    args = EngineArgs(max_num_seqs=8, max_num_batched_tokens=2048, priority=False)
    argv = engine_command(m, args)
    assert argv[argv.index("--runner") + 1] == "pooling" and argv.count("--runner") == 1
    # A command that chooses its runner keeps it; a generative model's gets none.
    own = replace(m, command=(*m.command, "--runner=pooling"))
    assert "--runner" not in engine_command(own, args)
    assert "--runner" not in engine_command(replace(m, task="generate"), args)
    # The simulated server is told too.
    sim = engine_command(replace(m, command=()), args)
    assert sim[sim.index("--runner") + 1] == "pooling"
    assert "--runner" not in engine_command(replace(m, command=(), task="generate"), args)


def test_check_config_warns_when_the_runner_contradicts_the_task(tmp_path: Path) -> None:
    cmd = 'command = ["vllm", "serve", "m", "--port", "{port}", "--runner", "pooling"]\n'
    path = tmp_path / "c.toml"
    path.write_text(TOML + cmd)
    (w,) = [x for x in config_warnings(load_config(path)) if "--runner" in x]
    assert "models.e5.command" in w and "'generate'" in w
    path.write_text(TOML + 'task = "embed"\n' + cmd)
    # An embedding model's command needs neither --runner trouble nor tool-call flags.
    assert [x for x in config_warnings(load_config(path)) if "--runner" in x or "tools" in x] == []
