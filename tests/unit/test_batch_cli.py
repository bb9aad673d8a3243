"""`chiron batch`'s pure parts: the input conversion, metadata, paths and the key lookup."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from chirond import batch_cli as bc


def convert(text: str, model: str | None = "m") -> tuple[bc.Converted, list[dict]]:
    out = io.BytesIO()
    conv = bc.convert_file(io.BytesIO(text.encode()), out, model, name="in.jsonl")
    return conv, [json.loads(line) for line in out.getvalue().splitlines()]


def test_prompt_line_becomes_a_chat_request_with_generated_id_and_fields_kept() -> None:
    conv, lines = convert('{"prompt": "hi", "max_tokens": 5}\n\n{"prompt": "yo", "custom_id": "a"}\n')
    assert conv == bc.Converted(2, "/v1/chat/completions")
    assert lines[0] == {
        "custom_id": "line-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "model": "m"},
    }
    assert lines[1]["custom_id"] == "a"  # line 3: the blank line counts, but only generated ids show it


def test_messages_line_keeps_its_own_model() -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}]
    _, lines = convert(json.dumps({"messages": msgs, "model": "other"}) + "\n")
    assert lines[0]["body"] == {"messages": msgs, "model": "other"}


def test_openai_line_gets_model_only_when_it_has_none() -> None:
    a = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "p"}}
    b = {"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"prompt": "p", "model": "x"}}
    conv, lines = convert(json.dumps(a) + "\n" + json.dumps(b) + "\n")
    assert conv.endpoint == "/v1/completions"
    assert lines[0]["body"]["model"] == "m"
    assert lines[1] == b
    assert a["body"] == {"prompt": "p"}  # the input object is not modified


def test_model_needed_only_when_a_line_lacks_one() -> None:
    _, lines = convert('{"prompt": "a", "model": "x"}\n', model=None)
    assert lines[0]["body"]["model"] == "x"
    with pytest.raises(bc.CliError, match=r"in.jsonl line 2: .*pass --model"):
        convert('{"prompt": "a", "model": "x"}\n{"prompt": "b"}\n', model=None)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json\n", r"line 1: not JSON"),
        ("[1, 2]\n", r"line 1: expected a JSON object, got list"),
        ('{"text": "x"}\n', r"line 1: expected an OpenAI batch line"),
        ('{"prompt": 3}\n', r"'prompt' must be a string"),
        ('{"messages": []}\n', r"'messages' must be a non-empty list"),
        ('{"prompt": "x", "custom_id": 7}\n', r"'custom_id' must be a non-empty string"),
        ('{"url": "/v1/chat/completions", "body": "x"}\n', r"'body' must be a JSON object"),
        ('{"body": {}}\n', r"'url' must be a string"),
        ("\n  \n", r"holds no request"),
        (
            '{"prompt": "a"}\n{"custom_id": "b", "url": "/v1/completions", "body": {"prompt": "b"}}\n',
            r"line 2: url '/v1/completions' differs from the first line's '/v1/chat/completions'",
        ),
    ],
)
def test_bad_input_names_the_line(text: str, match: str) -> None:
    with pytest.raises(bc.CliError, match=match):
        convert(text)


def test_metadata_and_output_paths() -> None:
    assert bc.parse_metadata(None) is None
    assert bc.parse_metadata(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(bc.CliError, match="KEY=VALUE"):
        bc.parse_metadata(["novalue"])
    assert bc.output_paths(Path("d/p.output.jsonl")) == (Path("d/p.output.jsonl"), Path("d/p.errors.jsonl"))
    assert bc.output_paths(Path("r.jsonl")) == (Path("r.jsonl"), Path("r.errors.jsonl"))
    assert bc.output_paths(Path("r.txt")) == (Path("r.txt"), Path("r.txt.errors.jsonl"))


def test_url_and_key_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CHIROND_URL", "CHIROND_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert bc.resolve_url_key(None, None) == (bc.DEFAULT_URL, "none")
    (tmp_path / "chirond").mkdir()
    (tmp_path / "chirond" / "key").write_text("filekey\n")
    assert bc.resolve_url_key(None, None)[1] == "filekey"
    monkeypatch.setenv("OPENAI_API_KEY", "oa")
    assert bc.resolve_url_key(None, None)[1] == "oa"
    monkeypatch.setenv("CHIROND_API_KEY", "ck")
    monkeypatch.setenv("CHIROND_URL", "http://h:1/v1/")
    assert bc.resolve_url_key(None, None) == ("http://h:1/v1", "ck")
    assert bc.resolve_url_key("http://x/v1", "k") == ("http://x/v1", "k")


def test_parsers_register_every_subcommand() -> None:
    ap = argparse.ArgumentParser(prog="chiron")
    bc.add_parsers(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(
        ["batch", "submit", "f.jsonl", "--model", "m", "--metadata", "a=1", "--metadata", "b=2", "--wait"]
    )
    assert (args.file, args.model, args.window, args.wait) == ("f.jsonl", "m", "24h", True)
    assert args.metadata == ["a=1", "b=2"]
    for argv in (["list"], ["status", "batch_1"], ["cancel", "batch_1"], ["results", "batch_1", "--out", "o"]):
        assert callable(ap.parse_args(["batch", *argv, "--url", "http://x/v1"]).func)


def test_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    ap = argparse.ArgumentParser(prog="chiron")
    bc.add_parsers(ap.add_subparsers(dest="cmd", required=True))
    # port 9 on 127.0.0.1 (discard) is closed on a test machine: connection refused at once
    args = ap.parse_args(["batch", "status", "batch_1", "--url", "http://127.0.0.1:9/v1", "--api-key", "k"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach http://127.0.0.1:9/v1: is chirond running?")
