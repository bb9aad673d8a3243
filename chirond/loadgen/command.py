"""`chiron load` as a command: run the workload the options describe on uvloop, let the first Ctrl-C
end the run early and still report (a second aborts), print the report, write the JSON and map the
outcome to the exit status the help text lists."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from rich.console import Console

from chirond.loadgen.endpoint import EndpointError
from chirond.loadgen.options import LoadConfig, config_from_args
from chirond.loadgen.report import print_report
from chirond.loadgen.run import LoadResult, run_load

EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_UNFINISHED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    console = Console()
    try:
        result = _run(cfg, console)
    except EndpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the run started
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_report(result, console)
    if args.json_out:
        try:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(result.to_json(), indent=1) + "\n")
        except OSError as e:
            print(f"error: cannot write {args.json_out}: {e}", file=sys.stderr)
            return EXIT_USAGE
        console.print(f"wrote {args.json_out}")
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.all_answered else EXIT_UNFINISHED


def _run(cfg: LoadConfig, console: Console) -> LoadResult:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(_run_until_interrupted(cfg, console))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run_until_interrupted(cfg, console))


async def _run_until_interrupted(cfg: LoadConfig, console: Console) -> LoadResult:
    """The first Ctrl-C ends the run early and still reports; a second one aborts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def first_interrupt() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)
        console.print("[yellow]interrupted: cancelling outstanding requests (Ctrl-C again to abort)[/yellow]")

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals here: Ctrl-C aborts
        loop.add_signal_handler(signal.SIGINT, first_interrupt)
    return await run_load(cfg, console, stop)
