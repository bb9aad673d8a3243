"""Shared by the probes (run by the vLLM environment's python, never by chirond's): their JSON in and
out, a `vllm serve` command line parsed the way `vllm serve` parses it, and the keys of an answer
that a validated vLLM model does not declare."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def read_payload() -> Any:
    return json.loads(sys.stdin.read() or "null")


def answer(obj: Any) -> None:
    sys.stdout.write("\n" + json.dumps(obj) + "\n")


def serve_args(argv: list[str]) -> argparse.Namespace:
    """The Namespace `vllm serve` builds from `argv` (the whole command, program included), after
    its quick checks (`validate_parsed_serve_args`). argparse errors exit 2, as `vllm serve` does."""
    from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    rest = _after_serve(argv)
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    args = parser.parse_args(rest)
    args.subparser = "serve"
    if getattr(args, "model_tag", None):  # vllm's CLI main does this for `vllm serve MODEL`
        args.model = args.model_tag
    validate_parsed_serve_args(args)
    return args


def _after_serve(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        if arg.rsplit("/", 1)[-1] == "vllm" and i + 1 < len(argv) and argv[i + 1] == "serve":
            return argv[i + 2:]
        if arg == "vllm.entrypoints.openai.api_server":
            return argv[i + 1:]
    raise SystemExit(f"not a vllm serve command: {argv}")


def extras(obj: Any, path: str) -> list[str]:
    """Keys a validated pydantic model holds beyond its declared fields, anywhere inside it (vLLM's
    models allow extra keys, so validation alone would not see a key vLLM never sends)."""
    from pydantic import BaseModel

    out: list[str] = []
    if isinstance(obj, BaseModel):
        out += [f"{path}.{k}: not a field of {type(obj).__name__}" for k in (obj.model_extra or {})]
        for name in type(obj).model_fields:
            out += extras(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, list):
        for i, x in enumerate(obj):
            out += extras(x, f"{path}[{i}]")
    return out
