"""Command lines: `chirond` (the service side) and `chiron` (for users and admins)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from chirond import __version__
from chirond.cli_common import add_examples, add_json_arg
from chirond.cli_common import console as cli_console

CHIROND_EXAMPLES = {
    "": "chirond serve --config /etc/chirond/chirond.toml",
    "simulate": "chirond simulate paper-small --policies static,chirond --out sim-out",
    "replay": "chirond replay replay-check --speedup 5 --out replay-out",
    "serve": "chirond serve --config etc/demo.toml",
    "check-config": "chirond check-config /etc/chirond/chirond.toml",
    "fake-vllm": "chirond fake-vllm --profile llama-3.1-8b_a100-80gb_tp1 --model llama-8b --port 9000",
    "install": "chirond install --print\nchirond install --completion bash > /etc/bash_completion.d/chirond\n"
               "chirond install --man /usr/local/share/man/man1",
}
CHIRON_EXAMPLES = {
    "": "chiron status",
    "profile": "chiron profile llama-3.1-8b_a100-80gb_tp1 --tpot-slo-s 0.1",
    "load": "chiron load --url http://127.0.0.1:8000/v1 --duration-s 60 --rate 5",
    "batch": "chiron batch submit prompts.jsonl --model llama-8b --wait",
    "batch submit": "chiron batch submit prompts.jsonl --model llama-8b --window 24h --wait",
    "batch list": "chiron batch list --json | jq -r '.[].id'",
    "batch status": "chiron batch status batch_abc123",
    "batch cancel": "chiron batch cancel batch_abc123",
    "batch results": "chiron batch results batch_abc123 --out results.jsonl",
    "token": "export OPENAI_API_KEY=$(chiron token)\nchiron token --list --json",
    "usage": "chiron usage --all --since 2026-11-01 --by account --format csv > gpu-hours.csv",
    "status": "chiron status --json | jq '.models'",
    "admin": "chiron admin limits llama-70b --max-instances 0",
    "admin drain": "chiron admin drain 7",
    "admin limits": "chiron admin limits llama-70b --max-instances 0",
}


def _simulate(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from chirond.sim.compare import compare
    from chirond.sim.report import (
        print_table,
        summarize,
        write_markdown,
        write_plots,
        write_run_logs,
        write_summary,
    )
    from chirond.sim.scenario import ScenarioError, load_scenario

    console = Console(stderr=False)
    try:
        sc = load_scenario(args.scenario)
        traces: dict[str, Path] = {}
        for item in args.trace or []:
            model, sep, file = item.partition("=")
            if not sep or not model or not file:
                raise ScenarioError(f"--trace {item!r}: expected MODEL=FILE")
            traces[model] = Path(file)
        policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else list(sc.policies)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(f"simulating {sc.name}", total=1)

            def on_done(label: str, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, description=f"{sc.name}: {label} done")

            def progress(label: str, t: float, horizon: float) -> None:
                bar.update(task, description=f"{sc.name}: {label} at {t / 60:.0f} min")

            results = compare(
                sc,
                policies,
                seed=args.seed,
                traces=traces or None,
                jobs=args.jobs,
                progress=progress if args.jobs == 1 else None,
                on_done=on_done,
            )
    except (ScenarioError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summaries = [summarize(r) for r in results]
    print_table(summaries, console, title=f"{sc.name} (seed {results[0].seed})")
    front: dict[str, Any] | None = None
    if args.frontier:
        front = _frontier(sc, args, summaries, console)
    if args.out:
        out = Path(args.out)
        path = write_summary(summaries, out)
        plots = [] if args.no_plots else write_plots(results, out)
        if front is not None and not args.no_plots:
            from chirond.sim import frontier as fr

            plots.append(fr.plot(summaries, front["frontier"], front["ceiling"], out / "frontier.png",
                                 f"{sc.name} (seed {results[0].seed}): policies against fixed deployments"))
        write_markdown(summaries, out / "summary.md", plots)
        logs = ", ".join(p.name for p in write_run_logs(results, out, args.requests))
        console.print(f"wrote {path}, {out / 'summary.md'}, {logs} and {len(plots)} plots in {out}")
    return 0


def _frontier(
    sc: Any, args: argparse.Namespace, summaries: list[dict[str, Any]], console: Console
) -> dict[str, Any]:
    """Sweep the fixed deployments, add the frontier and each policy's place against it to
    `summaries`, print the frontier."""
    from rich.table import Table

    from chirond.sim import frontier as fr

    with console.status(f"sweeping fixed deployments of {args.frontier_policy}'s mechanisms"):
        points = fr.sweep(sc, args.frontier_policy, seed=args.seed, jobs=args.jobs)
    front = fr.pareto(fr.combine(points, sc.cluster.gpus))
    top = fr.ceiling(points)
    for s in summaries:
        best = fr.cheapest_matching(front, s["interactive_attainment"] or 0.0, s["batch_attainment"] or 0.0)
        s["frontier_gpu_hours"] = best
        s["frontier_ratio"] = s["gpu_hours"] / best if best else None
        s["frontier"], s["ceiling"] = front, top
    t = Table(title=f"fixed deployments ({args.frontier_policy}'s caps, rules and engine flags), frontier")
    for col in ("instances", "Inter %", "Batch %", "GPU-h"):
        t.add_column(col, justify="left" if col == "instances" else "right")
    for d in [*front, {**top, "instances": {k: f"{v} (ceiling)" for k, v in top["instances"].items()}}]:
        t.add_row(" ".join(f"{k}={v}" for k, v in d["instances"].items()), f"{100 * d['interactive_attainment']:.2f}",
                  f"{100 * d['batch_attainment']:.2f}", f"{d['gpu_hours']:.2f}")
    console.print(t)
    for s in summaries:
        ratio = s["frontier_ratio"]
        console.print(f"{s['policy']}: {s['gpu_hours']:.1f} GPU-h; the cheapest fixed deployment as good: "
                      + (f"{s['frontier_gpu_hours']:.1f} GPU-h (ratio {ratio:.2f})" if ratio else "none"))
    return {"frontier": front, "ceiling": top}


def _profile(args: argparse.Namespace) -> int:
    from rich.table import Table

    from chirond.profiles import ProfileError, find_profile, load_profile

    try:
        prof = load_profile(find_profile(args.profile))
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ctx = args.input_tokens + args.output_tokens / 2
    kv_max = prof.max_batch_for_kv(ctx)
    sizes = [b for b in sorted({1, 8, 16, 32, 64, 128, 192, 256, kv_max, prof.max_num_seqs}) if b <= prof.max_num_seqs]
    if args.json:
        steps = {b: prof.step_s(b, b * ctx) for b in sizes}
        rows = [{"batch": b, "step_ms": s * 1000, "output_tokens_per_s": b / s,
                 "meets_tpot_slo": None if args.tpot_slo_s is None else s <= args.tpot_slo_s} for b, s in steps.items()]
        print(json.dumps({"profile": prof.name, "model": prof.model, "gpus": prof.gpus, "mean_context": ctx,
                          "kv_capacity_tokens": prof.kv_capacity_tokens, "kv_max_batch": kv_max,
                          "cold_start_s": prof.cold_start_s, "rows": rows}, indent=2))
        return 0
    t = Table(title=f"{prof.name}: {prof.model} on {prof.tensor_parallel}x {prof.gpu}, mean context {ctx:.0f}")
    for col in ("batch", "step ms", "TPOT ms (no prefill)", "output tok/s", "meets TPOT SLO"):
        t.add_column(col, justify="right")
    for b in sizes:
        step = prof.step_s(b, b * ctx)
        ok = "" if args.tpot_slo_s is None else ("yes" if step <= args.tpot_slo_s else "no")
        t.add_row(str(b), f"{step * 1000:.1f}", f"{step * 1000:.1f}", f"{b / step:,.0f}", ok)
    console = cli_console()
    console.print(t)
    console.print(
        f"prefill {prof.prefill_ms_per_token} ms/token + {prof.attn_ms_per_1m_pairs} ms per 1M (token, context) "
        f"pairs of attention ({prof.prefill_s(args.input_tokens) * 1000:.0f} ms for one prompt of this length); "
        f"KV holds {prof.kv_capacity_tokens:,} tokens "
        f"(batch of {kv_max} at this context); cold start {prof.cold_start_s:.0f} s "
        f"({prof.weights_gb} GB at {prof.storage_gbps} GB/s + {prof.engine_init_s:.0f} s init)"
    )
    return 0


def chirond_main(argv: list[str] | None = None) -> int:
    args = chirond_parser().parse_args(argv)
    return int(args.func(args))


def chirond_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="chirond",
        description="SLO-aware autoscaler and OpenAI-compatible gateway for LLM inference on Slurm.",
    )
    ap.add_argument("--version", action="version", version=f"chirond {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "simulate",
        help="compare scaling policies on a scenario with the discrete-event simulator",
        description=(
            "Run scaling policies side by side on one scenario (a TOML file, see benchmarks/scenarios/): "
            "same workload, same simulated Slurm partition, the daemon's own dispatcher and policy code. "
            "Prints a table; with --out, writes summary.json, summary.md, decisions.log and PNG plots "
            "(and with --requests, requests.csv: one row per request)."
        ),
    )
    s.add_argument("scenario", help="a scenario TOML file, or a shipped scenario's name (paper-small)")
    s.add_argument("--policies", help="comma-separated, default: the scenario's [policies] run list")
    s.add_argument("--seed", type=int, help="override the scenario's seed (same seed, same numbers)")
    s.add_argument("--out", help="directory for summary.json and plots")
    s.add_argument("--requests", action="store_true",
                   help="with --out, also write requests.csv, one row per request (large: about 100 bytes each)")
    s.add_argument(
        "--trace",
        action="append",
        metavar="MODEL=FILE",
        help="replace MODEL's interactive arrivals with a trace (CSV or JSONL: arrival_s, input_tokens, "
        "output_tokens[, class, deadline_s]); repeatable",
    )
    s.add_argument("--jobs", type=int, default=None, help="parallel runs (default: one per CPU)")
    s.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    s.add_argument("--frontier", action="store_true",
                   help="also sweep fixed deployments (no scaling) and place each policy against them")
    s.add_argument("--frontier-policy", default="chirond", metavar="POLICY",
                   help="whose per-instance mechanisms the fixed deployments use (default chirond)")
    s.set_defaults(func=_simulate)

    from chirond.replay import run as replay

    s = sub.add_parser(
        "replay",
        help="run the real daemon on a scenario's workload, sped up (a dry run; checks the simulator)",
        description=replay.DESCRIPTION,
        epilog=replay.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_arguments(s)
    s.set_defaults(func=replay.main)

    from chirond import check_config, daemon
    from chirond.fakevllm import server as fakevllm

    s = sub.add_parser(
        "serve",
        help="run the daemon: OpenAI-compatible endpoint, queues, autoscaler",
        description=(
            "Serve one OpenAI-compatible endpoint in front of autoscaled engine instances, as the config "
            "file says (see etc/chirond.toml). Stops gracefully on SIGTERM or Ctrl-C."
        ),
    )
    s.add_argument("--config", required=True, help="TOML config file (e.g. /etc/chirond/chirond.toml)")
    s.set_defaults(func=daemon.main)
    s = sub.add_parser(
        "check-config",
        help="validate a config file and print what it would run",
        description="Read and validate a config file; exit 0 if it is good, 2 with the key and reason if not.",
    )
    s.add_argument("config", help="TOML config file")
    s.set_defaults(func=check_config.check_config_main)
    from chirond import learn_floor_cli

    learn_floor_cli.add_parser(sub)
    s = sub.add_parser(
        "fake-vllm",
        help="a vLLM-compatible simulated server (no GPU) driven by a performance profile",
        description=fakevllm.DESCRIPTION,
    )
    fakevllm.add_arguments(s)
    s.set_defaults(func=fakevllm.main)
    from chirond import install_cli

    install_cli.add_parser(sub, {"chirond": (chirond_parser, "the chirond service: serve, simulate, check, install"),
                                 "chiron": (chiron_parser, "chirond's user and admin tool")})
    add_examples(ap, CHIROND_EXAMPLES)
    return ap


def chiron_main(argv: list[str] | None = None) -> int:
    args = chiron_parser().parse_args(argv)
    return int(args.func(args))


def chiron_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chiron", description="chirond's user and admin tool.")
    ap.add_argument("--version", action="version", version=f"chiron {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser(
        "profile",
        help="show what a performance profile predicts (step time, throughput, SLO fit per batch size)",
    )
    p.add_argument("profile", help="a profile file, or a shipped profile's name (llama-3.1-8b_a100-80gb_tp1)")
    p.add_argument("--input-tokens", type=float, default=1024, help="mean prompt length (default 1024)")
    p.add_argument("--output-tokens", type=float, default=256, help="mean output length (default 256)")
    p.add_argument("--tpot-slo-s", type=float, default=None, help="mark the batch sizes that meet this TPOT")
    add_json_arg(p)
    p.set_defaults(func=_profile)

    from chirond import loadgen

    p = sub.add_parser("load", help="drive a sample workload through an OpenAI endpoint and report SLO attainment",
                       description=loadgen.DESCRIPTION)
    loadgen.add_arguments(p)
    p.set_defaults(func=loadgen.main)

    from chirond import batch_cli, control_cli

    batch_cli.add_parsers(sub)
    control_cli.add_parsers(sub)
    add_examples(ap, CHIRON_EXAMPLES)
    return ap


if __name__ == "__main__":
    sys.exit(chirond_main())
