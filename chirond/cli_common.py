"""What every `chiron` command shares: one way to name the endpoint and the key (`--url`,
`--api-key`; $CHIROND_URL, $CHIROND_API_KEY, then the openai client's own $OPENAI_BASE_URL,
$OPENAI_API_KEY), `--json` for anything printed as a table, tables that are not cut to 80
columns in a pipe, and an example at the end of every `--help`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rich.console import Console

DEFAULT_URL = "http://127.0.0.1:8000/v1"
URL_HELP = f"chirond's API, up to /v1 (default: $CHIROND_URL, $OPENAI_BASE_URL, else {DEFAULT_URL})"
KEY_HELP = "bearer key (default: $CHIROND_API_KEY, $OPENAI_API_KEY, ~/.config/chirond/key, else 'none')"


def console() -> Console:
    """On a terminal, its width; into a file or a pipe, wide enough that no column is cut."""
    return Console(width=None if sys.stdout.isatty() else 4096)


def default_url() -> str:
    return os.environ.get("CHIROND_URL") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_URL


class _Deprecated(argparse.Action):
    """An old flag that still works, with a warning naming the new one."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kw: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(ns, self.dest, values)


def add_endpoint_args(p: argparse.ArgumentParser | Any, *, old_url_flag: str | None = None) -> None:
    """--url and --api-key (and a deprecated old spelling of --url, kept working)."""
    p.add_argument("--url", metavar="URL", help=URL_HELP)
    p.add_argument("--api-key", metavar="KEY", help=KEY_HELP)
    if old_url_flag:
        p.add_argument(old_url_flag, dest="url", metavar="URL", action=_Deprecated, new="--url",
                       help=argparse.SUPPRESS)


def add_json_arg(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (for scripts)")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


Parsers = list[tuple[tuple[str, ...], argparse.ArgumentParser]]


def walk(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Parsers:
    """Every parser under `p` with its command path, `p` first."""
    out = [(path, p)]
    for name, sub in _subparsers(p).items():
        out.extend(walk(sub, (*path, name)))
    return out


def add_examples(root: argparse.ArgumentParser, examples: dict[str, str]) -> None:
    """Append "example:" lines to each command's --help; `examples` is keyed by the command path
    after the program name ("batch submit"); the program itself is ""."""
    for path, p in walk(root):
        text = examples.get(" ".join(path))
        if text is None:
            continue
        lines = "\n".join("  " + line for line in text.strip().splitlines())
        block = f"example{'s' if text.strip().count(chr(10)) else ''}:\n{lines}"
        p.epilog = f"{p.epilog}\n\n{block}" if p.epilog else block
        p.formatter_class = argparse.RawDescriptionHelpFormatter
