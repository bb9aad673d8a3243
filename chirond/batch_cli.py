"""`chiron batch`: submit a JSONL file as an OpenAI batch, follow it, fetch its results.

Talks to chirond's Files and Batches API with the `openai` client, like any user program would.
The input is OpenAI's batch format, or plain lines (`{"prompt": ...}`, `{"messages": [...]}`) that
`convert_line` turns into chat-completion lines; the converted file goes through a temporary file
and is uploaded as a stream, so a big input never sits in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import openai
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chirond.cli_common import DEFAULT_URL as DEFAULT_URL
from chirond.cli_common import add_endpoint_args, add_json_arg, console, default_url
from chirond.control_cli import key_file  # where `chiron token --save` writes the key

CHAT_URL = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_PLAIN_RESERVED = ("custom_id", "prompt", "messages")
_MAX_WINDOW_S = 8 * 86400  # for a batch without expires_at: longer than any window offered


class CliError(Exception):
    """A problem the user can fix; printed as `error: ...`, exit 2."""


# ---------------------------------------------------------------- input conversion (pure)


def convert_line(obj: object, lineno: int, model: str | None) -> dict[str, Any]:
    """One input line as an OpenAI batch line.

    An OpenAI line (it has `url` or `body`) keeps its fields; its body gets `model` when it has none,
    `method` defaults to POST and `custom_id` to "line-N". A plain line with `prompt` (a string) or
    `messages` (a list) becomes a chat-completion request; its other fields (max_tokens, model, ...)
    go into the body as they are. Raises CliError naming the line."""
    where = f"line {lineno}"
    if not isinstance(obj, dict):
        raise CliError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    custom_id = obj.get("custom_id", f"line-{lineno}")
    if not isinstance(custom_id, str) or not custom_id:
        raise CliError(f"{where}: 'custom_id' must be a non-empty string")
    if "url" in obj or "body" in obj:
        body = obj.get("body")
        if not isinstance(body, dict):
            raise CliError(f"{where}: 'body' must be a JSON object (the request)")
        if not isinstance(obj.get("url"), str):
            raise CliError(f"{where}: 'url' must be a string such as {CHAT_URL!r}")
        out = {**obj, "custom_id": custom_id, "method": obj.get("method", "POST")}
        if not body.get("model"):
            out["body"] = {**body, "model": _need_model(model, where)}
        return out
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise CliError(f"{where}: 'messages' must be a non-empty list of chat messages")
    elif "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            raise CliError(f"{where}: 'prompt' must be a string")
        messages = [{"role": "user", "content": prompt}]
    else:
        raise CliError(
            f"{where}: expected an OpenAI batch line (custom_id, method, url, body) or a plain line "
            "with 'prompt' or 'messages'"
        )
    body = {k: v for k, v in obj.items() if k not in _PLAIN_RESERVED}
    body["messages"] = messages
    if not body.get("model"):
        body["model"] = _need_model(model, where)
    return {"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": body}


def _need_model(model: str | None, where: str) -> str:
    if not model:
        raise CliError(f"{where}: the request names no model: pass --model")
    return model


@dataclass(frozen=True)
class Converted:
    lines: int
    endpoint: str


def convert_file(src: IO[bytes], dst: IO[bytes], model: str | None, name: str = "input") -> Converted:
    """Convert a JSONL stream line by line into `dst`. Every line must use the same endpoint (a batch
    has one). Blank lines are skipped; line numbers count them, so "line-N" ids match the editor's."""
    lines, endpoint = 0, ""
    for lineno, raw in enumerate(src, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise CliError(f"{name} line {lineno}: not JSON ({e})") from e
        try:
            line = convert_line(obj, lineno, model)
        except CliError as e:
            raise CliError(f"{name} {e}") from e
        url = line["url"]
        if endpoint and url != endpoint:
            raise CliError(
                f"{name} line {lineno}: url {url!r} differs from the first line's {endpoint!r} "
                "(a batch has one endpoint)"
            )
        endpoint = url
        dst.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        lines += 1
    if not lines:
        raise CliError(f"{name} holds no request")
    return Converted(lines, endpoint)


def parse_metadata(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    meta: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CliError(f"--metadata {item!r}: expected KEY=VALUE")
        meta[k] = v
    return meta


def output_paths(out: Path) -> tuple[Path, Path]:
    """(results, errors): `x.output.jsonl` -> `x.errors.jsonl`; `x.jsonl` -> `x.errors.jsonl` next to it."""
    name = out.name
    if name.endswith(".output.jsonl"):
        return out, out.with_name(name[: -len(".output.jsonl")] + ".errors.jsonl")
    return out, out.with_name(f"{name.removesuffix('.jsonl')}.errors.jsonl")


# ---------------------------------------------------------------- client


def resolve_url_key(url: str | None, key: str | None) -> tuple[str, str]:
    url = url or default_url()
    key = key or os.environ.get("CHIROND_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if not key:
        try:
            key = key_file().read_text().strip()
        except FileNotFoundError:
            key = ""
        except OSError as e:
            raise CliError(f"cannot read the API key file {key_file()}: {e}") from e
    return url.rstrip("/"), key or "none"


def _client(args: argparse.Namespace) -> openai.OpenAI:
    url, key = resolve_url_key(args.url, args.api_key)
    return openai.OpenAI(base_url=url, api_key=key, timeout=args.timeout)


def _api_message(e: openai.APIStatusError) -> str:
    msg = e.body.get("message") if isinstance(e.body, dict) else None
    return f"{e.status_code}: {msg or e.message}"


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the errors a user can act on into `error: ...` on stderr and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CliError as e:
            msg = str(e)
        except openai.APIConnectionError as e:
            url, _ = resolve_url_key(args.url, None)
            msg = f"cannot reach {url}: is chirond running? ({e.__class__.__name__})"
        except openai.APIStatusError as e:
            msg = _api_message(e)
        except OSError as e:
            msg = str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2

    return run


# ---------------------------------------------------------------- output


def _when(ts: object, short: bool = False) -> str:
    if not isinstance(ts, int | float) or not ts:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def _counts(b: Any) -> tuple[int, int, int]:
    c = b.request_counts
    return (c.completed, c.failed, c.total) if c is not None else (0, 0, 0)


def batch_table(batches: list[Any], title: str | None = None) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD)
    t.add_column("id", no_wrap=True)  # whole, to copy into the next command
    t.add_column("status", no_wrap=True)
    t.add_column("win", no_wrap=True)
    t.add_column("done", justify="right", no_wrap=True)
    t.add_column("fail", justify="right", no_wrap=True)
    t.add_column("created", no_wrap=True)
    for b in batches:
        done, failed, total = _counts(b)
        t.add_row(
            b.id, b.status, b.completion_window, f"{done + failed}/{total}", str(failed), _when(b.created_at, True)
        )
    return t


def status_table(b: Any) -> Table:
    done, failed, total = _counts(b)
    t = Table(show_header=False, title=b.id)
    t.add_column("field", style="bold")
    t.add_column("value")
    rows = [
        ("status", b.status),
        ("endpoint", b.endpoint),
        ("window", b.completion_window),
        ("requests", f"{done} done, {failed} failed, of {total}"),
        ("input file", b.input_file_id),
        ("output file", b.output_file_id or "-"),
        ("error file", b.error_file_id or "-"),
        ("created", _when(b.created_at)),
        ("expires", _when(b.expires_at)),
    ]
    for name in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelled_at"):
        ts = getattr(b, name, None)
        if ts:
            rows.append((name.removesuffix("_at").replace("_", " "), _when(ts)))
    if b.metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in b.metadata.items())))
    errors = b.errors.data if b.errors is not None and b.errors.data else []
    for err in errors[:10]:
        where = f" (line {err.line})" if err.line is not None else ""
        rows.append(("error", f"{err.code}: {err.message}{where}"))
    for name, value in rows:
        t.add_row(name, str(value))
    return t


def _download(client: openai.OpenAI, file_id: str, path: Path) -> int:
    """Stream a file to `path` (through `path.part`, renamed when whole); returns its bytes."""
    part = path.with_name(path.name + ".part")
    size = 0
    with client.files.with_streaming_response.content(file_id) as resp, part.open("wb") as f:
        for chunk in resp.iter_bytes(1 << 16):
            f.write(chunk)
            size += len(chunk)
    part.replace(path)
    return size


def _fetch_results(client: openai.OpenAI, b: Any, out: Path, console: Console) -> None:
    res_path, err_path = output_paths(out)
    got = False
    for file_id, path, what in ((b.output_file_id, res_path, "results"), (b.error_file_id, err_path, "errors")):
        if file_id:
            _download(client, file_id, path)
            console.print(f"{what}: {path}", soft_wrap=True)
            got = True
    if not got:
        console.print(f"batch {b.id} ({b.status}) has no output or error file", soft_wrap=True)


# ---------------------------------------------------------------- commands


def _submit(args: argparse.Namespace) -> int:
    src = Path(args.file)
    meta = parse_metadata(args.metadata)
    client = _client(args)
    console = Console()
    with src.open("rb") as fin, tempfile.TemporaryFile(prefix="chiron-batch-", suffix=".jsonl") as tmp:
        conv = convert_file(fin, tmp, args.model, name=str(src))
        tmp.seek(0)
        f = client.files.create(file=(src.name, tmp), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id,
        endpoint=conv.endpoint,  # type: ignore[arg-type]  # the client's Literal lists OpenAI's own
        completion_window=args.window,
        metadata=meta,
    )
    console.print(
        f"uploaded {src} ({conv.lines} requests) as {f.id}; batch [bold]{b.id}[/bold] {b.status}", soft_wrap=True
    )
    if not args.wait:
        console.print(f"follow it with: chiron batch status {b.id}", soft_wrap=True)
        return 0
    out = Path(args.out) if args.out else src.with_name(f"{src.stem}.output.jsonl")
    return _wait_and_fetch(client, b, args.poll_s, out, console)


def _wait_and_fetch(client: openai.OpenAI, batch: Any, poll_s: float, out: Path, console: Console) -> int:
    batch_id = batch.id
    try:
        b = wait(client, batch, poll_s, console)
    except KeyboardInterrupt:
        console.print(f"stopped waiting; the batch goes on: chiron batch status {batch_id}", soft_wrap=True)
        return 130
    console.print(status_table(b))
    _fetch_results(client, b, out, console)
    return 0 if b.status == "completed" else 1


def wait(client: openai.OpenAI, batch: Any, poll_s: float, console: Console) -> Any:
    """Poll until the batch ends, with a progress bar. Bounded: the server expires a batch at the end
    of its window, so past that (plus an hour for clock skew) something is wrong."""
    batch_id = batch.id
    give_up = (batch.expires_at or time.time() + _MAX_WINDOW_S) + 3600
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{batch_id} submitted", total=None)
        while True:
            try:
                b = client.batches.retrieve(batch_id)
            except (openai.APIConnectionError, openai.InternalServerError):
                bar.update(task, description=f"{batch_id} (reconnecting)")  # a daemon restart keeps the batch
            else:
                done, failed, total = _counts(b)
                bar.update(task, completed=done + failed, total=total or None, description=f"{batch_id} {b.status}")
                if b.status in TERMINAL:
                    return b
            if time.time() > give_up:
                raise CliError(f"batch {batch_id} has not ended past its window; see: chiron batch status {batch_id}")
            time.sleep(poll_s)


def _list(args: argparse.Namespace) -> int:
    page = _client(args).batches.list(limit=args.limit)
    if args.json:
        print(json.dumps([b.model_dump(mode="json") for b in page.data], indent=2))
        return 0
    console().print(batch_table(list(page.data), title="batches (newest first)"))
    return 0


def _status(args: argparse.Namespace) -> int:
    b = _client(args).batches.retrieve(args.id)
    if args.json:
        print(json.dumps(b.model_dump(mode="json"), indent=2))
        return 0
    console().print(status_table(b))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    b = _client(args).batches.cancel(args.id)
    Console().print(f"batch {b.id}: {b.status}", soft_wrap=True)
    return 0


def _results(args: argparse.Namespace) -> int:
    client = _client(args)
    b = client.batches.retrieve(args.id)
    if b.status not in TERMINAL:
        done, failed, total = _counts(b)
        raise CliError(f"batch {b.id} is {b.status} ({done + failed} of {total} done): results come when it ends")
    _fetch_results(client, b, Path(args.out) if args.out else Path(f"{b.id}.output.jsonl"), Console())
    return 0


def add_parsers(subparsers: Any) -> None:
    """Add `batch` and its subcommands to `chiron`'s subparsers; each sets `func(args) -> int`."""
    conn = argparse.ArgumentParser(add_help=False)
    add_endpoint_args(conn)
    conn.add_argument("--timeout", type=float, default=600.0, metavar="S", help="per HTTP request (default 600)")
    p = subparsers.add_parser(
        "batch",
        help="submit and follow OpenAI batch jobs (JSONL files of requests)",
        description="Submit a JSONL file of requests as a batch, follow it and download its results.",
    )
    sub = p.add_subparsers(dest="batch_cmd", required=True)
    s = sub.add_parser(
        "submit",
        parents=[conn],
        help="upload a JSONL file and create a batch",
        description=(
            "Upload FILE and create a batch. Lines are OpenAI batch lines ({custom_id, method, url, body}) or "
            'plain lines ({"prompt": ...} or {"messages": [...]}, optional custom_id and request fields) that '
            "become chat completions."
        ),
    )
    s.add_argument("file", help="JSONL file of requests")
    s.add_argument("--model", help="model for the lines that name none")
    s.add_argument("--window", default="24h", help="completion window: 24h (default), or 1h, 6h, 72h, 7d ...")
    s.add_argument("--wait", action="store_true", help="show progress until the batch ends, then download results")
    s.add_argument("--out", help="results file with --wait (default FILE_STEM.output.jsonl; errors: .errors.jsonl)")
    s.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="a label kept with the batch (repeatable)")
    s.add_argument("--poll-s", type=float, default=5.0, help=argparse.SUPPRESS)
    s.set_defaults(func=_guard(_submit))
    s = sub.add_parser("list", parents=[conn], help="list your batches, newest first")
    s.add_argument("--limit", type=int, default=20, help="how many (1-100, default 20)")
    add_json_arg(s)
    s.set_defaults(func=_guard(_list))
    s = sub.add_parser("status", parents=[conn], help="show one batch")
    s.add_argument("id", help="batch id (batch_...)")
    add_json_arg(s)
    s.set_defaults(func=_guard(_status))
    s = sub.add_parser("cancel", parents=[conn], help="cancel a batch (its finished lines are kept)")
    s.add_argument("id", help="batch id (batch_...)")
    s.set_defaults(func=_guard(_cancel))
    s = sub.add_parser("results", parents=[conn], help="download a finished batch's results and errors")
    s.add_argument("id", help="batch id (batch_...)")
    s.add_argument("--out", help="results file (default BATCH_ID.output.jsonl; errors: .errors.jsonl)")
    s.set_defaults(func=_guard(_results))
