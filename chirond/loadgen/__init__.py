"""`chiron load`: drive a short sample workload through an OpenAI-compatible endpoint with the
`openai` client and report per-class latency, SLO attainment and the instances over time. The parts:
`workload` (the plan, pure), `options` (arguments and `LoadConfig`), `driver` (sends the requests),
`endpoint` (/models, the SLO, stream reading), `summary` (records and figures, pure), `run` (one run
end to end), `report` (the printed report) and `command` (`main`); the names below are re-exported."""

from chirond.loadgen.command import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNFINISHED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    main,
)
from chirond.loadgen.driver import BATCH_HEADER, BATCH_TIER, ClassCounts, Driver, prompt_text
from chirond.loadgen.endpoint import (
    EndpointError,
    StreamError,
    StreamTiming,
    fetch_models,
    probe,
    read_stream,
    resolve_slo,
)
from chirond.loadgen.options import (
    DEFAULT_BASE_URL,
    DEFAULT_SLO,
    DEFAULT_TRACE,
    DESCRIPTION,
    EPILOG,
    LoadConfig,
    add_arguments,
    config_from_args,
)
from chirond.loadgen.report import print_report
from chirond.loadgen.run import POLL_INTERVAL_S, LoadResult, load_workload, make_client, run_load
from chirond.loadgen.summary import (
    ClassSummary,
    InstanceSample,
    Outcome,
    Record,
    error_breakdown,
    meets_slo,
    percentile,
    sample_from_model,
    scale_events,
    sparkline,
    summarize_class,
)
from chirond.loadgen.workload import DEFAULT_MIX, KINDS, Api, Cls, Planned, Workload, build_workload, parse_mix

__all__ = [
    "BATCH_HEADER",
    "BATCH_TIER",
    "DEFAULT_BASE_URL",
    "DEFAULT_MIX",
    "DEFAULT_SLO",
    "DEFAULT_TRACE",
    "DESCRIPTION",
    "EPILOG",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNFINISHED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "KINDS",
    "POLL_INTERVAL_S",
    "Api",
    "ClassCounts",
    "ClassSummary",
    "Cls",
    "Driver",
    "EndpointError",
    "InstanceSample",
    "LoadConfig",
    "LoadResult",
    "Outcome",
    "Planned",
    "Record",
    "StreamError",
    "StreamTiming",
    "Workload",
    "add_arguments",
    "build_workload",
    "config_from_args",
    "error_breakdown",
    "fetch_models",
    "load_workload",
    "main",
    "make_client",
    "meets_slo",
    "parse_mix",
    "percentile",
    "print_report",
    "probe",
    "prompt_text",
    "read_stream",
    "resolve_slo",
    "run_load",
    "sample_from_model",
    "scale_events",
    "sparkline",
    "summarize_class",
]
