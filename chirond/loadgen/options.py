"""What one `chiron load` run is asked to do: the defaults, the command's help text, its argparse
options and their checks, and `LoadConfig`, the options as one frozen value."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

from chirond.batch_cli import resolve_url_key
from chirond.cli_common import DEFAULT_URL, add_endpoint_args
from chirond.loadgen.workload import DEFAULT_MIX, parse_mix
from chirond.model import Slo

DEFAULT_TRACE = Path(__file__).resolve().parents[1] / "data" / "azure2023_conv.csv"
DEFAULT_BASE_URL = DEFAULT_URL
DEFAULT_SLO = Slo(ttft_s=1.0, tpot_s=0.1)

DESCRIPTION = """\
Drive a short sample workload through an OpenAI-compatible endpoint (chirond, vLLM, ...) with the
openai client, then print per-class latency and SLO attainment and how the instances scaled.

Interactive requests replay the Azure 2023 conversation trace: the next RATE x DURATION trace
requests after --trace-start-s, time-scaled to fill --duration-s (so the trace's bursts are kept
and the mean rate is --rate), or with --rate-scale the trace itself, X times faster. Prompt and
output lengths come from the trace, clipped to --max-input-tokens / --max-output-tokens; each
request asks for exactly that many output tokens (max_tokens and ignore_eos). By default 80% use
streaming chat completions, 10% streaming completions and 10% non-streaming chat (--mix).
Batch requests (--batch-requests, lengths drawn from the same trace) are sent from t=0 as
non-streaming chat completions with service_tier="flex" (and header X-Chirond-Class: batch),
at most --batch-concurrency at a time.

Measured per request: TTFT (first content-bearing chunk; for non-streaming requests the whole
response time), TPOT ((last token - first token) / (completion tokens - 1)), end-to-end time,
completion tokens from the usage the server reports, and the error (HTTP status, timeout, ...).
An interactive request meets its SLO if it succeeded with TTFT <= --ttft-slo-s and TPOT <=
--tpot-slo-s; a non-streaming one if its end-to-end time is within TTFT SLO + (tokens - 1) x
TPOT SLO. A batch request meets its SLO if it succeeded. While it runs, GET BASE_URL/models is
polled once a second to record the instance counts chirond reports.

The run ends by itself: interactive arrivals stop after --duration-s, and after another
--drain-s whatever is still outstanding is cancelled and counted as unfinished. Requests are
never retried."""

EPILOG = """\
exit status:
  0    every request was answered (error responses are counted in the report, not fatal)
  1    the endpoint could not be reached at start, or rejected the key, or lists no model
  2    bad arguments or trace file
  3    some requests got no answer before the deadline (duration + drain)
  130  interrupted: the first Ctrl-C stops the run and still prints the report, a second aborts"""


def _positive_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {s}")
    return v


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {s}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {s}")
    return v


def _mix_arg(s: str) -> dict[str, float]:
    try:
        return parse_mix(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    g = p.add_argument_group("endpoint")
    add_endpoint_args(g, old_url_flag="--base-url")  # the same flags and variables as `chiron batch`
    g.add_argument("--model", metavar="NAME", help="model to ask for (default: the first one GET /models lists)")

    g = p.add_argument_group("workload")
    g.add_argument("--trace", metavar="FILE", type=Path,
                   help="Azure-format CSV (TIMESTAMP,ContextTokens,GeneratedTokens) to replay "
                   "(default: the bundled Azure 2023 conversation trace)")
    g.add_argument("--trace-start-s", metavar="S", type=_nonneg_float, default=0.0,
                   help="where in the trace the window starts, in trace seconds (default 0)")
    g.add_argument("--duration-s", metavar="S", type=_positive_float, default=60.0,
                   help="seconds during which interactive requests arrive (default 60)")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument("--rate", metavar="R", type=_nonneg_float,
                      help="mean interactive requests/s: the next R x DURATION trace requests, time-scaled "
                      "to fill the duration (default 5)")
    rate.add_argument("--rate-scale", metavar="X", type=_positive_float,
                      help="instead of --rate: replay the trace X times faster (X x DURATION trace seconds)")
    g.add_argument("--max-input-tokens", metavar="N", type=_positive_int, default=2048,
                   help="clip prompt lengths (default 2048)")
    g.add_argument("--max-output-tokens", metavar="N", type=_positive_int, default=256,
                   help="clip output lengths (default 256)")
    g.add_argument("--batch-requests", metavar="N", type=_nonneg_int, default=100,
                   help="batch-class requests sent from t=0 (default 100; 0 for none)")
    g.add_argument("--batch-concurrency", metavar="N", type=_positive_int, default=32,
                   help="at most this many batch requests in flight (default 32)")
    g.add_argument("--mix", metavar="KIND=W,...", type=_mix_arg, default=parse_mix(DEFAULT_MIX),
                   help="how interactive requests are sent: relative weights of chat-stream (streaming chat "
                   "completions), chat (non-streaming), completions-stream and completions "
                   f"(default {DEFAULT_MIX})")
    g.add_argument("--max-requests", metavar="N", type=_nonneg_int,
                   help="cap on requests of both classes together, cut in proportion (default: no cap)")
    g.add_argument("--seed", metavar="N", type=int, default=0,
                   help="seed for the mix and the batch lengths (default 0)")

    g = p.add_argument_group("limits and SLO")
    g.add_argument("--timeout-s", metavar="S", type=_positive_float, default=120.0,
                   help="give up on an interactive request after this many seconds in all (default 120); "
                   "batch requests wait until the run's deadline")
    g.add_argument("--drain-s", metavar="S", type=_nonneg_float, default=120.0,
                   help="after the arrivals end, wait this long for outstanding requests, then cancel them "
                   "(default 120)")
    g.add_argument("--ttft-slo-s", metavar="S", type=_positive_float,
                   help=f"interactive TTFT SLO (default: what the endpoint advertises, else {DEFAULT_SLO.ttft_s})")
    g.add_argument("--tpot-slo-s", metavar="S", type=_positive_float,
                   help=f"interactive TPOT SLO (default: what the endpoint advertises, else {DEFAULT_SLO.tpot_s})")

    g = p.add_argument_group("output")
    g.add_argument("--json-out", metavar="FILE", type=Path,
                   help="write the summary, the instance samples and every request record here (JSON)")
    g.add_argument("--no-progress", action="store_true", help="no live progress display")


@dataclass(frozen=True, slots=True)
class LoadConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key: str = "none"
    model: str | None = None
    trace: Path = DEFAULT_TRACE
    trace_start_s: float = 0.0
    duration_s: float = 60.0
    rate: float | None = 5.0  # ignored when rate_scale is set
    rate_scale: float | None = None
    max_input_tokens: int = 2048
    max_output_tokens: int = 256
    batch_requests: int = 100
    batch_concurrency: int = 32
    mix: dict[str, float] = field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    max_requests: int | None = None
    seed: int = 0
    timeout_s: float = 120.0
    drain_s: float = 120.0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    show_progress: bool = True


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    rate = args.rate if args.rate is not None or args.rate_scale is not None else 5.0
    url, key = resolve_url_key(args.url, args.api_key)  # as `chiron batch` does
    return LoadConfig(
        base_url=url,
        api_key=key,
        model=args.model,
        trace=args.trace or DEFAULT_TRACE,
        trace_start_s=args.trace_start_s,
        duration_s=args.duration_s,
        rate=rate,
        rate_scale=args.rate_scale,
        max_input_tokens=args.max_input_tokens,
        max_output_tokens=args.max_output_tokens,
        batch_requests=args.batch_requests,
        batch_concurrency=args.batch_concurrency,
        mix=args.mix,
        max_requests=args.max_requests,
        seed=args.seed,
        timeout_s=args.timeout_s,
        drain_s=args.drain_s,
        ttft_slo_s=args.ttft_slo_s,
        tpot_slo_s=args.tpot_slo_s,
        show_progress=not args.no_progress,
    )
