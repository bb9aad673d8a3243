"""The sbatch job that hosts one engine: `render_job(spec)` fills `slurm/chirond-instance.sbatch`.

Pure: a `JobSpec` in, the script text and sbatch's command-line options out. Every value that
comes from configuration or a request is validated, then shell-quoted with `shlex.quote`; the one
verbatim part is `site_hooks`, lines an administrator writes in chirond's config (module loads,
`source venv/bin/activate`, apptainer), trusted like the config file itself.

The sbatch options travel on sbatch's command line rather than as `#SBATCH` lines, so no value is
ever parsed by sbatch's script scanner. Placeholders in the template are `@@NAME@@`; a template
that lacks one, or has one this module does not know, is refused (a custom template can therefore
not silently drop the site hooks or the engine's argv).

The contract with the script (slurm/README.md says why): it picks a free port, writes
`<run_dir>/<job id>.addr.json` = {"job_id", "instance_id", "host", "port", "node", "started_at"}
atomically before the engine starts, logs SIGUSR1, forwards SIGTERM to the engine, and exits with
the engine's status. `parse_addr_json` is chirond's side of that file.
"""

from __future__ import annotations

import functools
import json
import math
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chirond.engine_guard import MODULE_NAME, source

JOB_NAME_PREFIX = "chirond-"
PORT_PLACEHOLDER = "{port}"
# Package data, so an installed chirond has it; slurm/chirond-instance.sbatch links here.
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "data" / "chirond-instance.sbatch"

# Exit codes of the job script itself (before the engine runs); the engine's own status otherwise.
EXIT_NO_ADDR_FILE = 96  # could not write the address file
EXIT_BAD_HOST = 97  # host, node or job id not safe to put into JSON
EXIT_NO_PORT = 98  # no free port in the range on this node

_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # partition, account, qos, reservation, GPU type
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DAEMON_ID = re.compile(r"^[A-Za-z0-9-]+$")
_HOST = re.compile(r"^[A-Za-z0-9_.:-]+$")
_MEM = re.compile(r"^[0-9]+[KMGT]?$")
_PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")
_JOB_NAME = re.compile(rf"^{re.escape(JOB_NAME_PREFIX)}(.+)-([0-9]+)$")
_TAG = re.compile(r"^chirond:([A-Za-z0-9-]+):([0-9]+)$")
_MODEL_IN_NAME_MAX = 64


class JobTemplateError(ValueError):
    """A value that must not reach a job script; the message names the field."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One instance's job. `engine_argv` may contain `{port}` (also inside an element, such as
    `--port={port}`); the script replaces it with the port it picked."""

    model: str  # served model name; sanitised for the job name, quoted everywhere else
    instance_id: int
    daemon_id: str  # this daemon's uuid: the `--comment` ownership tag names it
    engine_argv: tuple[str, ...]
    run_dir: str  # absolute, on a filesystem both the job and chirond can read (or `cat` over SSH)
    partition: str = ""  # optional scheduler fields: omitted when empty
    account: str = ""
    qos: str = ""
    reservation: str = ""
    gpus: int = 1
    gpu_type: str = ""  # e.g. "a100"; "" = any type
    gpu_option: str = "gres"  # "gres": --gres=gpu[:TYPE]:N (any Slurm); "gpus": --gpus=[TYPE:]N (cons_tres)
    cpus_per_task: int | None = None
    mem: str = ""  # sbatch --mem, e.g. "64G"
    time_limit_s: float | None = None  # rounded up to whole minutes; None = the partition's default
    warn_before_s: int | None = 120  # --signal=B:USR1@N; Slurm checks about once a minute, so >= 60 helps
    output: str = ""  # default <run_dir>/<job name>-%j.log
    error: str = ""  # default: merged into output
    site_hooks: tuple[str, ...] = ()  # verbatim shell lines (admin-trusted)
    env: Mapping[str, str] = field(default_factory=dict)
    python: str = "python3"  # interpreter for the port probe, run after the site hooks (so a venv's works)
    port_range: tuple[int, int] = (20000, 29999)
    bind_host: str = "0.0.0.0"  # where the probe binds: the address the engine will listen on
    advertise_host: str = ""  # what chirond connects to; "" = the node's `hostname`
    requeue: bool = False  # chirond replaces failed instances itself; a requeued job would reuse its id


@dataclass(frozen=True, slots=True)
class JobAddress:
    """The address file a job writes before its engine starts."""

    job_id: str
    host: str
    port: int
    node: str
    started_at: float
    instance_id: int | None = None


def sanitize_model(model: str) -> str:
    """The model name as it may appear in a job name: runs of anything outside [A-Za-z0-9_.-]
    (and of '-') become one '-', at most 64 characters. Raises when nothing usable is left."""
    s = re.sub(r"[^A-Za-z0-9_.]+", "-", re.sub(r"[^A-Za-z0-9_.-]", "-", model))
    s = s.strip("-.")[:_MODEL_IN_NAME_MAX].strip("-.")
    if not s:
        raise JobTemplateError(f"model: {model!r} has no characters usable in a Slurm job name")
    return s


def job_name(model: str, instance_id: int) -> str:
    return f"{JOB_NAME_PREFIX}{sanitize_model(model)}-{instance_id}"


def parse_job_name(name: str) -> tuple[str, int] | None:
    """(sanitised model, instance id) from a chirond job name; None for any other name."""
    m = _JOB_NAME.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def ownership_tag(daemon_id: str, instance_id: int) -> str:
    """The `--comment` that marks a job as this daemon's instance `instance_id`."""
    if not _DAEMON_ID.match(daemon_id):
        raise JobTemplateError(f"daemon_id: {daemon_id!r} must match {_DAEMON_ID.pattern}")
    return f"chirond:{daemon_id}:{instance_id}"


def parse_ownership_tag(comment: str) -> tuple[str, int] | None:
    """(daemon id, instance id) from a job's comment; None when it is not a chirond tag."""
    m = _TAG.match(comment.strip())
    return (m.group(1), int(m.group(2))) if m else None


def addr_path(run_dir: str, job_id: str) -> str:
    """Where job `job_id` writes its address (a POSIX path: it may be read over SSH)."""
    return posixpath.join(run_dir, f"{job_id}.addr.json")


def parse_addr_json(text: str, job_id: str | None = None) -> JobAddress:
    """The address file's contents. Raises ValueError when it is not the script's JSON, or names
    another job than `job_id` (a stale file)."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"address file is not JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError("address file is not a JSON object")
    try:
        addr = JobAddress(
            job_id=str(d["job_id"]),
            host=str(d["host"]),
            port=int(d["port"]),
            node=str(d.get("node", "")),
            started_at=float(d["started_at"]),
            instance_id=None if d.get("instance_id") is None else int(d["instance_id"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"address file lacks or garbles a field: {e!r}") from e
    if not addr.host or not 0 < addr.port < 65536:
        raise ValueError(f"address file has no usable host:port ({addr.host!r}:{addr.port})")
    if job_id is not None and addr.job_id != job_id:
        raise ValueError(f"address file names job {addr.job_id}, not {job_id}")
    return addr


@functools.cache
def default_template() -> str:
    """slurm/chirond-instance.sbatch, read once."""
    return TEMPLATE_PATH.read_text()


def render_job(spec: JobSpec, template: str | None = None) -> tuple[str, list[str]]:
    """(script text, sbatch options) for `spec`. The options go on sbatch's command line (the
    caller adds --parsable and passes the script on stdin). Raises JobTemplateError naming the
    field for any value that is not allowed."""
    name = job_name(spec.model, spec.instance_id)
    args = _sbatch_args(spec, name)
    values = _script_values(spec)
    text = default_template() if template is None else template
    missing = sorted(set(values) - set(_PLACEHOLDER.findall(text)))
    if missing:
        raise JobTemplateError(f"template: lacks placeholder(s) {', '.join('@@' + m + '@@' for m in missing)}")

    def fill(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise JobTemplateError(f"template: unknown placeholder @@{m.group(1)}@@")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(fill, text), args


# --- internals -------------------------------------------------------------------------------------


def _check_text(fname: str, value: str, *, allow_newline: bool = False) -> str:
    # NUL cannot live in a shell word or argv element at all; newlines are fine inside single quotes
    # but not in sbatch options or in site-hook lines (one line each).
    if "\0" in value:
        raise JobTemplateError(f"{fname}: contains a NUL byte")
    if not allow_newline and ("\n" in value or "\r" in value):
        raise JobTemplateError(f"{fname}: contains a line break")
    return value


def _check_slurm_name(fname: str, value: str) -> str:
    if value and not _SLURM_NAME.match(value):
        raise JobTemplateError(f"{fname}: {value!r} must match {_SLURM_NAME.pattern}")
    return value


def _check_path(fname: str, value: str, *, patterns: bool) -> str:
    _check_text(fname, value)
    if not value.startswith("/"):
        raise JobTemplateError(f"{fname}: {value!r} must be an absolute path")
    if not patterns and "%" in value:  # Slurm would expand %j, %x, ... in the log file names built on it
        raise JobTemplateError(f"{fname}: {value!r} must not contain '%'")
    return value


def _sbatch_args(spec: JobSpec, name: str) -> list[str]:
    if not isinstance(spec.instance_id, int) or spec.instance_id < 0:
        raise JobTemplateError(f"instance_id: {spec.instance_id!r} must be an integer >= 0")
    run_dir = _check_path("run_dir", spec.run_dir, patterns=False)
    args = [f"--job-name={name}", f"--comment={ownership_tag(spec.daemon_id, spec.instance_id)}"]
    for fname in ("partition", "account", "qos", "reservation"):
        value = _check_slurm_name(fname, getattr(spec, fname))
        if value:
            args.append(f"--{fname}={value}")
    args += ["--nodes=1", "--ntasks=1"]
    if spec.cpus_per_task is not None:
        if not isinstance(spec.cpus_per_task, int) or spec.cpus_per_task < 1:
            raise JobTemplateError(f"cpus_per_task: {spec.cpus_per_task!r} must be an integer >= 1")
        args.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.mem:
        if not _MEM.match(spec.mem):
            raise JobTemplateError(f"mem: {spec.mem!r} must match {_MEM.pattern} (megabytes, or K/M/G/T)")
        args.append(f"--mem={spec.mem}")
    args += _gpu_args(spec)
    if spec.time_limit_s is not None:
        limit = spec.time_limit_s
        if not (isinstance(limit, int | float) and math.isfinite(limit)) or limit <= 0:
            raise JobTemplateError(f"time_limit_s: {spec.time_limit_s!r} must be a positive number of seconds")
        args.append(f"--time={math.ceil(spec.time_limit_s / 60)}")  # minutes: Slurm's granularity
    if spec.warn_before_s is not None:
        if not isinstance(spec.warn_before_s, int) or not 0 < spec.warn_before_s <= 65535:
            raise JobTemplateError(f"warn_before_s: {spec.warn_before_s!r} must be an integer in 1..65535")
        # B: the batch shell only (our trap); without it the signal goes to job steps and kills them.
        args.append(f"--signal=B:USR1@{spec.warn_before_s}")
    output = spec.output or posixpath.join(run_dir, f"{name}-%j.log")
    args.append(f"--output={_check_path('output', output, patterns=True)}")
    if spec.error:
        args.append(f"--error={_check_path('error', spec.error, patterns=True)}")
    args.append(f"--chdir={run_dir}")
    args.append("--requeue" if spec.requeue else "--no-requeue")
    return args


def _gpu_args(spec: JobSpec) -> list[str]:
    if not isinstance(spec.gpus, int) or spec.gpus < 0:
        raise JobTemplateError(f"gpus: {spec.gpus!r} must be an integer >= 0")
    gpu_type = _check_slurm_name("gpu_type", spec.gpu_type)
    if spec.gpu_option not in ("gres", "gpus"):
        raise JobTemplateError(f"gpu_option: {spec.gpu_option!r} must be 'gres' or 'gpus'")
    if spec.gpus == 0:
        return []
    if spec.gpu_option == "gres":
        return [f"--gres=gpu:{gpu_type + ':' if gpu_type else ''}{spec.gpus}"]
    return [f"--gpus={gpu_type + ':' if gpu_type else ''}{spec.gpus}"]


def _quote_arg(fname: str, arg: str) -> str:
    """One argv element as a shell word; each `{port}` becomes "$CHIROND_PORT" (the rest quoted)."""
    _check_text(fname, arg, allow_newline=True)
    pieces = arg.split(PORT_PLACEHOLDER)
    return '"$CHIROND_PORT"'.join(shlex.quote(p) if p else "" for p in pieces) or "''"


def _script_values(spec: JobSpec) -> dict[str, str]:
    if not spec.engine_argv:
        raise JobTemplateError("engine_argv: empty")
    engine = "\n".join(f"  {_quote_arg(f'engine_argv[{i}]', a)}" for i, a in enumerate(spec.engine_argv))

    env_lines = []
    for k in sorted(spec.env):
        if not _ENV_NAME.match(k):
            raise JobTemplateError(f"env: variable name {k!r} must match {_ENV_NAME.pattern}")
        env_lines.append(f"export {k}={shlex.quote(_check_text(f'env[{k}]', spec.env[k], allow_newline=True))}")

    hooks = [_check_text(f"site_hooks[{i}]", h) for i, h in enumerate(spec.site_hooks)]

    lo, hi = spec.port_range
    if not (isinstance(lo, int) and isinstance(hi, int) and 1024 <= lo <= hi <= 65535):
        raise JobTemplateError(f"port_range: {spec.port_range!r} must be (lo, hi) with 1024 <= lo <= hi <= 65535")
    if not _HOST.match(spec.bind_host):
        raise JobTemplateError(f"bind_host: {spec.bind_host!r} must match {_HOST.pattern}")
    if spec.advertise_host and not _HOST.match(spec.advertise_host):
        raise JobTemplateError(f"advertise_host: {spec.advertise_host!r} must match {_HOST.pattern}")
    if not spec.model:
        raise JobTemplateError("model: empty")
    return {
        "INSTANCE_ID": str(spec.instance_id),
        "MODEL": shlex.quote(_check_text("model", spec.model)),
        "RUN_DIR": shlex.quote(spec.run_dir),
        "PYTHON": shlex.quote(_check_text("python", spec.python) or "python3"),
        "PORT_MIN": str(lo),
        "PORT_MAX": str(hi),
        "BIND_HOST": shlex.quote(spec.bind_host),
        "ADVERTISE_HOST": shlex.quote(spec.advertise_host),
        "ENV": "\n".join(env_lines) or "# (none)",
        "SITE_HOOKS": "\n".join(hooks) or "# (none)",
        "ENGINE_ARGV": engine,
        "ENGINE_GUARD": _guard_lines(),
    }


_GUARD_EOF = "CHIROND_ENGINE_GUARD_PY"


def _guard_lines() -> str:
    """Shell lines that write chirond's engine guard into `<run_dir>/.guard-<job id>/` and put that
    folder first on PYTHONPATH (after the site hooks, which may set PYTHONPATH themselves)."""
    text = source()
    if _GUARD_EOF in text:  # cannot happen unless someone edits the module carelessly
        raise JobTemplateError(f"engine guard: its source contains the here-document end {_GUARD_EOF}")
    return "\n".join([
        'chirond_guard=$CHIROND_RUN_DIR/.guard-$chirond_job_id',
        f'if ! mkdir -p -- "$chirond_guard" || ! cat >"$chirond_guard/{MODULE_NAME}.py" <<\'{_GUARD_EOF}\'',
        text.rstrip("\n"),
        _GUARD_EOF,
        'then',
        '  chirond_log "cannot write the engine guard into $chirond_guard"',
        f'  exit {EXIT_NO_ADDR_FILE}',
        'fi',
        'export PYTHONPATH="$chirond_guard${PYTHONPATH:+:$PYTHONPATH}"',
    ])
