"""What Slurm's commands print, read into values: pure functions (no I/O, no clock) tested against
recorded and reconstructed output (tests/data/slurm/), and the state table that maps Slurm's job
states to the backend's. The commands themselves run in chirond/cluster/slurm_cli.py. One module
of about 600 lines on purpose: the release-shape helpers below are shared by every parser.

Slurm's JSON changed shape between releases; the parsers take all of them:
  * 22.05 (openapi/v0.0.38): `job_state` is a string ("RUNNING", or a flag such as "COMPLETING"
    in its place), numbers and times are plain integers (0 = unset, null = infinite), `exit_code`
    is the raw wait(2) status (768 = exit code 3), nodes have `state` ("idle") and `state_flags`.
  * 23.02+ (data_parser v0.0.39 ...): `job_state` is a list (base state first, then flags such as
    "COMPLETING" or "REQUEUED"), many numbers become {"set", "infinite", "number"}, node `state`
    is a list ["IDLE", "DRAIN"].
  * 24.05+ (v0.0.41): `exit_code` is {"status": [...], "return_code": {...}, "signal": {"id": {...},
    "name": ...}}; `sinfo --json` prints grouped `sinfo` records instead of `nodes`.
Fields may be missing; unknown states are kept as they are and map to UNKNOWN, never to ended.

About 600 lines, kept in one module on purpose: every parser shares the dialect helpers at the
bottom (`_number`, `_text`, `_exit_code`, ...), and splitting them would only move imports around.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import signal as _signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chirond.cluster.backend import JobFacts, JobState
from chirond.cluster.transport import SlurmError

log = logging.getLogger(__name__)

# The squeue text format when --json is not available. The comment (%k) is last: it may hold '|'.
SQUEUE_TEXT_FORMAT = "%i|%T|%N|%b|%M|%l|%j|%R|%k"
SACCT_FIELDS = "JobID,JobName,User,State,ExitCode,Start,End,NodeList"
JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?(\+[0-9]+)?$")  # a job id as the commands take it


class SlurmParseError(SlurmError):
    """Output that is not what the command prints."""



# --- what Slurm tells us ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlurmJob:
    """One job as squeue (or sacct) reports it. Times are UNIX seconds; None = unset."""

    job_id: str
    name: str
    user: str  # "" when the output does not say (text format: squeue was asked for one user)
    state: str  # normalised: PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, ..., or the raw word if unknown
    state_raw: str  # as Slurm printed it, flags joined with ','
    reason: str = ""  # "" when Slurm says None
    nodes: str = ""
    batch_host: str = ""
    partition: str = ""
    comment: str = ""
    submit_time: float | None = None
    start_time: float | None = None  # for a pending job: the scheduler's expected start, if any
    end_time: float | None = None  # for a running job: the expected end
    time_limit_s: float | None = None  # None = unlimited (or not known)
    run_time_s: float | None = None  # text format only (%M)
    exit_code: int | None = None
    exit_signal: int | None = None
    gres: str = ""  # what it asked for per node (tres_per_node / %b), e.g. "gres/gpu:1"
    tres: str = ""  # what it was given (tres_alloc_str), else asked for (tres_req_str)
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    state: str  # base state: IDLE, MIXED, ALLOCATED, DOWN, ...
    flags: tuple[str, ...] = ()  # DRAIN, NOT_RESPONDING, MAINTENANCE, ...
    gpus_total: int = 0
    gpus_used: int = 0
    partitions: tuple[str, ...] = ()
    reason: str = ""
    gres: str = ""
    gres_used: str = ""

    @property
    def usable(self) -> bool:
        """Can a new job start here now?"""
        return self.state not in _NODE_DOWN_STATES and not set(self.flags) & _NODE_UNUSABLE_FLAGS

    @property
    def gpus_free(self) -> int:
        return max(0, self.gpus_total - self.gpus_used) if self.usable else 0


_NODE_BASE_STATES = frozenset({"UNKNOWN", "DOWN", "IDLE", "ALLOCATED", "ERROR", "MIXED", "FUTURE"})
_NODE_DOWN_STATES = frozenset({"UNKNOWN", "DOWN", "ERROR", "FUTURE"})
_NODE_UNUSABLE_FLAGS = frozenset({
    "DRAIN", "FAIL", "NOT_RESPONDING", "MAINTENANCE", "POWERED_DOWN", "POWERING_DOWN", "POWER_DOWN",
    "REBOOT_ISSUED", "REBOOT_REQUESTED", "INVALID_REG", "RESERVED",
})



# --- the state table --------------------------------------------------------------------------------

# Slurm state -> (what the backend reports, whether the end is a failure).
# Failures (True): the instance died under its work; chirond counts it against the model (backoff)
# and requeues the requests it held. Clean ends (False): chirond's own cancel, or the engine exiting
# 0; requests still held are requeued too, but nothing is counted. None: not ended.
STATE_TABLE: Mapping[str, tuple[JobState, bool | None]] = {
    "PENDING": (JobState.PENDING, None),
    "REQUEUED": (JobState.PENDING, None),  # requeued, will run again under the same job id
    "REQUEUE_HOLD": (JobState.PENDING, None),  # requeued and held: runs only when released
    "REQUEUE_FED": (JobState.PENDING, None),
    "SPECIAL_EXIT": (JobState.PENDING, None),  # held after a special exit code
    "RESV_DEL_HOLD": (JobState.PENDING, None),  # its reservation was deleted: held
    "CONFIGURING": (JobState.PENDING, None),  # nodes allocated but booting: no engine yet
    "POWER_UP_NODE": (JobState.PENDING, None),  # waiting for powered-down nodes
    "RUNNING": (JobState.RUNNING, None),
    "COMPLETING": (JobState.RUNNING, None),  # ending (epilog); the final state follows
    "STAGE_OUT": (JobState.RUNNING, None),
    "SIGNALING": (JobState.RUNNING, None),
    "RESIZING": (JobState.RUNNING, None),
    "SUSPENDED": (JobState.RUNNING, None),  # the process exists but is frozen: health checks decide
    "STOPPED": (JobState.RUNNING, None),
    "COMPLETED": (JobState.ENDED, False),
    "CANCELLED": (JobState.ENDED, False),  # usually chirond's own scancel
    "FAILED": (JobState.ENDED, True),
    "TIMEOUT": (JobState.ENDED, True),  # chirond should have replaced it before its limit
    "NODE_FAIL": (JobState.ENDED, True),
    "PREEMPTED": (JobState.ENDED, True),
    "BOOT_FAIL": (JobState.ENDED, True),
    "OUT_OF_MEMORY": (JobState.ENDED, True),
    "DEADLINE": (JobState.ENDED, True),
    "REVOKED": (JobState.ENDED, True),  # federation: runs on a sibling cluster, out of our reach
}
FAILURE_STATES = frozenset(s for s, (_, f) in STATE_TABLE.items() if f)
CLEAN_END_STATES = frozenset(s for s, (_, f) in STATE_TABLE.items() if f is False)

# Which flag names the job, when a list (23.02+) carries flags next to the base state: the order of
# Slurm's job_state_string(), so both dialects normalise to the same word.
_FLAG_PRECEDENCE = (
    "COMPLETING", "STAGE_OUT", "CONFIGURING", "POWER_UP_NODE", "RESIZING", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED", "RESV_DEL_HOLD", "SIGNALING",
)
_BASE_JOB_STATES = frozenset({
    "PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY",
})


def normalize_state(value: Any) -> tuple[str, str]:
    """(normalised state, raw) from a job_state string or list. A flag such as COMPLETING or
    REQUEUED wins over the base state, as in 22.05's single word."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,+\s]+", value.strip().upper()) if p]
    elif isinstance(value, list):
        parts = [str(p).strip().upper() for p in value if str(p).strip()]
    else:
        parts = []
    raw = ",".join(parts)
    for flag in _FLAG_PRECEDENCE:
        if flag in parts:
            return flag, raw
    for p in parts:
        if p in _BASE_JOB_STATES:
            return p, raw
    return (parts[0] if parts else ""), raw


def is_failure(state: str) -> bool | None:
    """True for ends that should count as an instance failure, False for clean ends, None when the
    job has not ended (or the state is unknown)."""
    return STATE_TABLE.get(state, (JobState.UNKNOWN, None))[1]


def job_facts(job: SlurmJob, instance_id: int, addr: tuple[str, int] | None, now: float) -> JobFacts:
    """The backend's view of a Slurm job. `addr` comes from the job's address file (None until it
    is read); `now` is time.time() when squeue answered."""
    backend_state, _ = STATE_TABLE.get(job.state, (JobState.UNKNOWN, None))
    host, port = addr if addr is not None else (None, None)
    started_at = job.start_time
    if started_at is None and job.run_time_s is not None and backend_state is JobState.RUNNING:
        started_at = now - job.run_time_s  # text format: only the elapsed time is known
    if backend_state is JobState.PENDING:
        started_at = None  # start_time of a pending job is only the scheduler's guess
    ends_at = None
    if started_at is not None and job.time_limit_s is not None:
        ends_at = started_at + job.time_limit_s
        if backend_state is JobState.RUNNING and job.end_time is not None and job.end_time > started_at:
            ends_at = job.end_time  # Slurm's own expectation (accounts for suspension and limit changes)

    if backend_state is JobState.PENDING:
        bits = [job.reason or "waiting"]
        if job.state != "PENDING":
            bits.insert(0, job.state)
        detail = ": ".join(bits)
        if job.start_time is not None and job.start_time > now:
            detail += f" (expected start in {job.start_time - now:.0f}s)"
    elif backend_state is JobState.RUNNING:
        detail = job.state if job.state != "RUNNING" else ""
    elif backend_state is JobState.ENDED:
        detail = job.state + describe_exit(job.exit_code, job.exit_signal, prefix=": ")
        if job.reason:
            detail += f" ({job.reason})"
    else:
        detail = f"unrecognised Slurm state {job.state_raw!r}"
    return JobFacts(job.job_id, instance_id, backend_state, host, port, started_at, ends_at, detail)


def describe_exit(code: int | None, sig: int | None, prefix: str = "") -> str:
    if sig:
        try:
            return f"{prefix}killed by {_signal.Signals(sig).name}"
        except ValueError:
            return f"{prefix}killed by signal {sig}"
    if code is not None:
        return f"{prefix}exit code {code}"
    return ""


# --- pure parsers -----------------------------------------------------------------------------------


def parse_sbatch_parsable(stdout: str) -> str:
    """The job id from `sbatch --parsable`: "jobid" or "jobid;cluster" (the last non-empty line)."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise SlurmParseError("sbatch --parsable printed nothing")
    job_id = lines[-1].split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise SlurmParseError(f"sbatch --parsable printed {lines[-1]!r}, not a job id")
    return job_id


def parse_squeue_json(text: str) -> list[SlurmJob]:
    """Every job in `squeue --json` output (any dialect)."""
    doc = _load_json(text, "squeue --json")
    jobs = doc.get("jobs")
    if not isinstance(jobs, list):
        raise SlurmParseError("squeue --json output has no 'jobs' list")
    out = []
    for j in jobs:
        if not isinstance(j, dict):
            continue
        job_id = _job_id(j.get("job_id"))
        if job_id is None:
            continue
        state, raw = normalize_state(j.get("job_state"))
        code, sig = _exit_code(j.get("exit_code")) if _ending(state) else (None, None)
        limit_min = _number(j.get("time_limit"))
        out.append(SlurmJob(
            job_id=job_id,
            name=_text(j.get("name")),
            user=_text(j.get("user_name")),
            state=state,
            state_raw=raw,
            reason=_reason(j.get("state_reason")),
            nodes=_text(j.get("nodes")),
            batch_host=_text(j.get("batch_host")),
            partition=_text(j.get("partition")),
            comment=_text(j.get("comment")),
            submit_time=_timestamp(j.get("submit_time")),
            start_time=_timestamp(j.get("start_time")),
            end_time=_timestamp(j.get("end_time")),
            time_limit_s=None if limit_min is None or math.isinf(limit_min) else limit_min * 60.0,
            exit_code=code,
            exit_signal=sig,
            gres=_text(j.get("tres_per_node")) or _text(j.get("tres_per_job")) or _text(j.get("gres_detail")),
            tres=_text(j.get("tres_alloc_str")) or _text(j.get("tres_req_str")),
            restarts=int(_number(j.get("restart_cnt")) or 0),
        ))
    return out


def parse_squeue_text(text: str) -> list[SlurmJob]:
    """`squeue -h -o '%i|%T|%N|%b|%M|%l|%j|%R|%k'` lines (the comment, %k, may be left out)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", 8)
        if len(fields) == 8:
            fields.append("")
        if len(fields) != 9 or not JOB_ID.match(fields[0].strip()):
            log.debug("squeue line not understood: %r", line)
            continue
        job_id, state_word, nodes, gres, used, limit, name, reason_or_nodes, comment = (f.strip() for f in fields)
        state, raw = normalize_state(state_word)
        reason = ""
        if reason_or_nodes.startswith("(") and reason_or_nodes.endswith(")"):
            # "(ReqNodeNotAvail, UnavailableNodes:gpu02)": the reason code, as JSON's state_reason has it
            reason = _reason(reason_or_nodes[1:-1].split(",")[0])
        elif not nodes:
            nodes = reason_or_nodes
        out.append(SlurmJob(
            job_id=job_id, name=name, user="", state=state, state_raw=raw, reason=reason, nodes=nodes,
            comment="" if comment == "(null)" else comment, time_limit_s=parse_duration(limit),
            run_time_s=parse_duration(used), gres="" if gres in ("N/A", "(null)") else gres,
        ))
    return out


def parse_sinfo_json(text: str) -> list[NodeInfo]:
    """Nodes from `sinfo --json`: 22.05/23.02 print a `nodes` list; 23.11+ print grouped `sinfo`
    records (one per group of alike nodes and partition), expanded here to one NodeInfo per node."""
    doc = _load_json(text, "sinfo --json")
    by_name: dict[str, NodeInfo] = {}

    def add(n: NodeInfo) -> None:
        old = by_name.get(n.name)
        if old is None:
            by_name[n.name] = n
        else:  # the same node listed under several partitions
            parts = old.partitions + tuple(p for p in n.partitions if p not in old.partitions)
            by_name[n.name] = NodeInfo(old.name, old.state, old.flags, old.gpus_total, old.gpus_used, parts,
                                       old.reason, old.gres, old.gres_used)

    if isinstance(doc.get("nodes"), list):
        for d in doc["nodes"]:
            if not isinstance(d, dict) or not _text(d.get("name")):
                continue
            state, flags = _node_state(d.get("state"), d.get("state_flags"))
            gres, used = _text(d.get("gres")), _text(d.get("gres_used"))
            parts = d.get("partitions")
            add(NodeInfo(
                name=_text(d.get("name")), state=state, flags=flags,
                gpus_total=gres_count(gres), gpus_used=gres_count(used),
                partitions=tuple(_text(p) for p in parts) if isinstance(parts, list) else _csv(parts),
                reason=_text(d.get("reason")), gres=gres, gres_used=used,
            ))
    elif isinstance(doc.get("sinfo"), list):
        for rec in doc["sinfo"]:
            if not isinstance(rec, dict):
                continue
            node, nodes = _dict(rec.get("node")), _dict(rec.get("nodes"))
            state, flags = _node_state(node.get("state"), None)
            gres_d, part_d, reason_d = _dict(rec.get("gres")), rec.get("partition"), rec.get("reason")
            gres, used = _text(gres_d.get("total")), _text(gres_d.get("used"))
            part = _text(part_d.get("name")) if isinstance(part_d, dict) else _text(part_d)
            reason = _text(reason_d.get("description")) if isinstance(reason_d, dict) else _text(reason_d)
            names = nodes.get("nodes")
            for name in expand_hostlist(names if isinstance(names, list) else _text(names)):
                add(NodeInfo(name=name, state=state, flags=flags, gpus_total=gres_count(gres),
                             gpus_used=gres_count(used), partitions=(part.rstrip("*"),) if part else (),
                             reason=reason, gres=gres, gres_used=used))
    else:
        raise SlurmParseError("sinfo --json output has neither a 'nodes' nor an 'sinfo' list")
    return list(by_name.values())


def parse_sacct_text(text: str) -> list[SlurmJob]:
    """`sacct -P` lines: without a header (`-n`) in SACCT_FIELDS order, or with sacct's header line
    (any order, other fields ignored)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    columns = SACCT_FIELDS.lower().split(",")
    if lines and lines[0].lower().startswith("jobid|"):
        columns = lines.pop(0).lower().split("|")
    out = []
    for line in lines:
        f = dict(zip(columns, line.split("|"), strict=False))
        job_id = f.get("jobid", "").strip()
        if not JOB_ID.match(job_id) or "state" not in f:
            continue
        state, raw = normalize_state(f["state"].split(" by ")[0])  # "CANCELLED by 1000"
        code, sig = _exit_code(f.get("exitcode", "").strip()) if _ending(state) else (None, None)
        nodes = f.get("nodelist", "")
        out.append(SlurmJob(
            job_id=job_id, name=f.get("jobname", ""), user=f.get("user", ""), state=state, state_raw=raw,
            nodes="" if nodes == "None assigned" else nodes, partition=f.get("partition", ""),
            start_time=_sacct_time(f.get("start", "")), end_time=_sacct_time(f.get("end", "")),
            exit_code=code, exit_signal=sig,
        ))
    return out


def parse_duration(text: str) -> float | None:
    """Seconds from Slurm's [D-]HH:MM:SS, MM:SS or minutes; None for UNLIMITED, INVALID, N/A, ''."""
    t = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t)
    if not m:
        return None
    days = int(m.group(1) or 0)
    nums = [int(x) for x in m.group(2, 3, 4) if x is not None]
    if m.group(1) is not None:  # D-HH[:MM[:SS]]
        nums += [0] * (3 - len(nums))
        h, mi, s = nums
    elif len(nums) == 1:  # plain minutes
        h, mi, s = 0, nums[0], 0
    elif len(nums) == 2:  # MM:SS
        h, mi, s = 0, nums[0], nums[1]
    else:
        h, mi, s = nums
    return float(((days * 24 + h) * 60 + mi) * 60 + s)


def gres_count(gres: str, name: str = "gpu") -> int:
    """How many `name` a GRES string holds: "gpu:a100:8(S:0-1)" -> 8, "gres/gpu:2" -> 2,
    "gpu:a100:2(IDX:0-1),gpu:v100:1(IDX:0)" -> 3, "(null)" -> 0."""
    total = 0
    for item in _split_top(gres):
        item = re.sub(r"\(.*\)$", "", item.strip())
        if item.startswith(("gres/", "gres:")):
            item = item[5:]
        parts = item.split(":")
        if parts[0] != name:
            continue
        total += int(parts[-1]) if parts[-1].isdigit() else 1  # "gpu" or "gpu:a100" alone means one
    return total


def expand_hostlist(value: str | Iterable[str]) -> list[str]:
    """Node names from a Slurm hostlist ("gpu[01-03,07],login1") or a list of such strings."""
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in _split_top(str(item), open_="[", close="]"):
            out += _expand_one(part.strip())
    return [n for n in out if n]


def json_unsupported(stderr: str) -> bool:
    """Does this squeue/sinfo stderr say it cannot print JSON at all (an old release, or one built
    without the JSON serializer plugin)?"""
    s = stderr.lower()
    if "json" in s and re.search(r"unrecognized option|invalid option|unknown option|not supported", s):
        return True
    return bool(re.search(r"(serializer|data_parser|openapi)\S*.*(not found|unable to load|cannot|failed to load)", s))


def no_accounting_database(stderr: str) -> bool:
    """Does this sacctmgr stderr say the cluster has no accounting database (no slurmdbd)?"""
    s = stderr.lower()
    return "not running a supported accounting_storage plugin" in s or accounting_disabled(s)


def accounting_disabled(stderr: str) -> bool:
    return "accounting storage is disabled" in stderr.lower()


# --- helpers for the parsers ------------------------------------------------------------------------


def _load_json(text: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise SlurmParseError(f"{what} printed something that is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise SlurmParseError(f"{what} printed JSON that is not an object")
    errors = [e for e in doc.get("errors") or [] if e]
    if errors:
        msgs = "; ".join(_text(e.get("description") or e.get("error")) if isinstance(e, dict) else str(e)
                         for e in errors)
        raise SlurmError(f"{what} reported errors: {msgs}")
    return doc


def _ending(state: str) -> bool:
    """Is the exit code meaningful yet? (Slurm prints 0 or "pending" before the job ends.)"""
    return state == "COMPLETING" or STATE_TABLE.get(state, (JobState.UNKNOWN, None))[0] is JobState.ENDED


def _number(v: Any) -> float | None:
    """A number in any dialect: plain (22.05), {"set", "infinite", "number"} (23.02+), numeric
    string. Infinite -> math.inf; unset, null, absent or garbage -> None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, dict):
        if v.get("infinite"):
            return math.inf
        if v.get("set") is False:
            return None
        return _number(v.get("number"))
    if isinstance(v, str) and re.fullmatch(r"-?\d+(\.\d+)?", v.strip()):
        return float(v)
    return None


def _timestamp(v: Any) -> float | None:
    t = _number(v)
    return None if t is None or t <= 0 or math.isinf(t) else t  # 0 = unset in every dialect


def _job_id(v: Any) -> str | None:
    if isinstance(v, str):
        return v.strip() if JOB_ID.match(v.strip()) else None
    n = _number(v)
    return None if n is None or math.isinf(n) or n <= 0 else str(int(n))


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return ",".join(_text(x) for x in v)
    if isinstance(v, dict):
        return ""
    return str(v)


def _reason(v: Any) -> str:
    r = _text(v).strip()
    return "" if r in ("None", "none", "(null)") else r


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _csv(v: Any) -> tuple[str, ...]:
    return tuple(p for p in _text(v).split(",") if p)


def _exit_code(v: Any) -> tuple[int | None, int | None]:
    """(exit code, signal). Plain integers are wait(2) statuses (22.05/23.x job_info); 24.05+
    spells it out: {"status": [...], "return_code": {...}, "signal": {"id": {...}, "name": ...}}."""
    if v is None:
        return None, None
    if isinstance(v, dict) and ("return_code" in v or "signal" in v or "status" in v):
        flags = [_text(s).upper() for s in (v["status"] if isinstance(v.get("status"), list) else [v.get("status")])]
        if "PENDING" in flags or "INVALID" in flags:
            return None, None
        rc = _number(v.get("return_code"))
        sig_d = _dict(v.get("signal"))
        sig = _number(sig_d.get("id"))
        if sig is None and sig_d.get("name"):
            with contextlib.suppress(KeyError):
                name = _text(sig_d["name"]).upper()
                sig = float(_signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        return (None if rc is None or math.isinf(rc) else int(rc),
                None if sig is None or math.isinf(sig) or sig <= 0 else int(sig))
    if isinstance(v, str) and re.fullmatch(r"\d+:\d+", v):  # "3:0" as scontrol and sacct print it
        code, sig_s = v.split(":")
        return int(code), (int(sig_s) or None)
    n = _number(v)
    if n is None or math.isinf(n):
        return None, None
    status = int(n)
    return (status >> 8) & 0xFF, (status & 0x7F) or None


def _node_state(state: Any, state_flags: Any) -> tuple[str, tuple[str, ...]]:
    if isinstance(state, list):
        parts = [_text(p).upper() for p in state]
    else:
        parts = [p for p in re.split(r"[+,\s]+", _text(state).upper()) if p]
    if isinstance(state_flags, list):
        parts += [_text(p).upper() for p in state_flags]
    base = next((p for p in parts if p in _NODE_BASE_STATES), parts[0] if parts else "UNKNOWN")
    flags = tuple(dict.fromkeys(p for p in parts if p != base))
    # 22.05 may spell a drained node's base state "DRAINED"/"DRAINING" in some outputs
    if base in ("DRAINED", "DRAINING", "DRAIN"):
        base, flags = "IDLE", ("DRAIN", *flags)
    return base, flags


def _split_top(text: str, open_: str = "(", close: str = ")") -> list[str]:
    """Split on commas outside brackets: "gpu:2(IDX:0,2),gpu:1" -> ["gpu:2(IDX:0,2)", "gpu:1"]."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == open_:
            depth += 1
        elif ch == close:
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [p for p in out if p.strip() and p.strip() != "(null)"]


def _expand_one(pattern: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end():]
    names = []
    for r in m.group(1).split(","):
        lo, _, hi = r.partition("-")
        if hi and lo.isdigit() and hi.isdigit():
            width = len(lo)
            names += [f"{head}{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
        else:
            names.append(f"{head}{r}")
    return [n for name in names for n in _expand_one(name + tail)]


def _sacct_time(v: str) -> float | None:
    v = v.strip()
    if not v or v in ("Unknown", "None"):
        return None
    try:
        return datetime.fromisoformat(v).timestamp()  # sacct prints local time without a zone
    except ValueError:
        return None
