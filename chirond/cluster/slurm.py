"""Slurm's command line, by its old address. The code lives in three modules:

  * chirond/cluster/transport.py: the one place commands run (`Transport`, `LocalTransport`) and
    the errors (`SlurmError`, `TransportError`, `CommandResult`);
  * chirond/cluster/slurm_parse.py: pure parsers of squeue/sinfo/sacct/sbatch output (22.05 and
    23.02+ JSON shapes, text formats) and the state table;
  * chirond/cluster/slurm_cli.py: `SlurmCli`, which builds argv and calls the transport and parsers.

New code imports from those; this module only re-exports their public names.
"""

from __future__ import annotations

from chirond.cluster.slurm_cli import SlurmCli, SqueueResult
from chirond.cluster.slurm_parse import (
    CLEAN_END_STATES,
    FAILURE_STATES,
    SACCT_FIELDS,
    SQUEUE_TEXT_FORMAT,
    STATE_TABLE,
    NodeInfo,
    SlurmJob,
    SlurmParseError,
    accounting_disabled,
    describe_exit,
    expand_hostlist,
    gres_count,
    is_failure,
    job_facts,
    json_unsupported,
    no_accounting_database,
    normalize_state,
    parse_duration,
    parse_sacct_text,
    parse_sbatch_parsable,
    parse_sinfo_json,
    parse_squeue_json,
    parse_squeue_text,
)
from chirond.cluster.transport import CommandResult, LocalTransport, SlurmError, Transport, TransportError

__all__ = [
    "CLEAN_END_STATES",
    "FAILURE_STATES",
    "SACCT_FIELDS",
    "SQUEUE_TEXT_FORMAT",
    "STATE_TABLE",
    "CommandResult",
    "LocalTransport",
    "NodeInfo",
    "SlurmCli",
    "SlurmError",
    "SlurmJob",
    "SlurmParseError",
    "SqueueResult",
    "Transport",
    "TransportError",
    "accounting_disabled",
    "describe_exit",
    "expand_hostlist",
    "gres_count",
    "is_failure",
    "job_facts",
    "json_unsupported",
    "no_accounting_database",
    "normalize_state",
    "parse_duration",
    "parse_sacct_text",
    "parse_sbatch_parsable",
    "parse_sinfo_json",
    "parse_squeue_json",
    "parse_squeue_text",
]
