"""chirond's rendered engine commands through `vllm serve`'s parser, its quick checks
(validate_parsed_serve_args) and the engine config it builds before loading anything
(AsyncEngineArgs.create_engine_config, on the CPU platform). Payload: {"commands": [[label, argv]],
"models": {hub id: local folder with config.json}}. Answers {label: {"error"} or the resolved
settings chirond cares about}."""

from __future__ import annotations

import contextlib
import io
import warnings

from vllm_cli import answer, read_payload, serve_args

warnings.simplefilter("ignore")
payload = read_payload()


def resolve(argv: list[str]) -> dict[str, object]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    argv = [payload["models"].get(a, a) for a in argv]  # the hub id -> its config.json, offline
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = serve_args(argv)
    except SystemExit as e:  # argparse: an unknown flag or a bad value
        return {"error": f"argparse: {err.getvalue().strip().splitlines()[-1:] or e}"}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        cfg = AsyncEngineArgs.from_cli_args(args).create_engine_config()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    if args.tool_call_parser is not None:
        from vllm.tool_parsers import ToolParserManager

        try:
            ToolParserManager.get_tool_parser(args.tool_call_parser)
        except Exception as e:
            return {"error": f"--tool-call-parser {args.tool_call_parser}: {type(e).__name__}: {e}"}
    s = cfg.scheduler_config
    return {
        "max_num_seqs": s.max_num_seqs, "max_num_batched_tokens": s.max_num_batched_tokens, "policy": s.policy,
        "max_model_len": cfg.model_config.max_model_len, "served_model_name": cfg.model_config.served_model_name,
        "tensor_parallel_size": cfg.parallel_config.tensor_parallel_size,
        "enable_auto_tool_choice": args.enable_auto_tool_choice, "tool_call_parser": args.tool_call_parser,
        "middleware": list(args.middleware), "disable_log_stats": args.disable_log_stats,
        "runner": cfg.model_config.runner_type, "convert": cfg.model_config.convert_type,
        "cache_config_info": {k: str(v) for k, v in cfg.cache_config.metrics_info().items()},
    }


answer({label: resolve(argv) for label, argv in payload["commands"]})
