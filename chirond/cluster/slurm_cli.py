"""Slurm's commands for one user's chirond jobs: `SlurmCli` builds each argv, runs it through the
one `_call` over a `Transport` (chirond/cluster/transport.py: here, or over SSH to a login node),
and reads the output with the pure parsers of chirond/cluster/slurm_parse.py.

A job missing from squeue is unknown, not finished (finished jobs stay listed for MinJobAge, 300 s by
default): `SqueueResult` only reports what squeue said; the backend decides what absence means.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from chirond.cluster.jobtemplate import JOB_NAME_PREFIX
from chirond.cluster.slurm_parse import (
    JOB_ID,
    SACCT_FIELDS,
    SQUEUE_TEXT_FORMAT,
    NodeInfo,
    SlurmJob,
    accounting_disabled,
    json_unsupported,
    no_accounting_database,
    parse_sacct_text,
    parse_sbatch_parsable,
    parse_sinfo_json,
    parse_squeue_json,
    parse_squeue_text,
)
from chirond.cluster.transport import CommandResult, SlurmError, Transport, show_argv

log = logging.getLogger(__name__)

_SIGNAL = re.compile(r"^(SIG)?[A-Z0-9]+$")
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, slots=True)
class SqueueResult:
    jobs: Mapping[str, SlurmJob]  # chirond's jobs (user and name prefix match), by job id
    fetched_at: float  # monotonic clock, for the cache
    fetched_at_wall: float  # time.time() when squeue answered: the `now` for job_facts
    source: str  # "json" or "text"



class SlurmCli:
    """Slurm's commands for one user's chirond jobs. Constructing it runs nothing."""

    def __init__(
        self,
        transport: Transport,
        user: str,
        *,
        name_prefix: str = JOB_NAME_PREFIX,
        min_squeue_interval_s: float = 2.0,
        timeout_s: float = 30.0,
        use_json: bool | None = None,  # None: JSON, falling back to text once if squeue has no --json
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.user = user
        self.name_prefix = name_prefix
        self.min_squeue_interval_s = min_squeue_interval_s
        self.timeout_s = timeout_s
        self.calls: Counter[str] = Counter()  # commands run, by name (for benchmarks)
        self.squeue_cache_hits = 0
        self._use_json = use_json
        self._clock = clock
        self._wall_clock = wall_clock
        self._squeue_lock = asyncio.Lock()
        self._cached: SqueueResult | None = None

    async def _call(
        self, argv: Sequence[str], *, input: bytes | None = None, timeout_s: float | None = None
    ) -> CommandResult:
        """The one place a Slurm command runs."""
        self.calls[argv[0]] += 1
        res = await self.transport.run(argv, self.timeout_s if timeout_s is None else timeout_s, input=input)
        log.debug("%s -> %d in %.3fs", show_argv(argv), res.returncode, res.duration_s)
        return res

    @staticmethod
    def _fail(res: CommandResult, what: str) -> SlurmError:
        err = res.stderr.strip() or res.stdout.strip() or "no output"
        return SlurmError(f"{what} failed (exit {res.returncode}): {err}", argv=res.argv, returncode=res.returncode,
                          stderr=res.stderr)

    async def sbatch(self, script: str, args: Sequence[str]) -> str:
        """Submit `script` (on stdin) with options `args`; returns the job id."""
        bad = [a for a in args if not a.startswith("--")]
        if bad:  # a bare word would be taken as the script file, and the script on stdin ignored
            raise ValueError(f"sbatch options must be --long=value, got {bad!r}")
        res = await self._call(["sbatch", "--parsable", *args], input=script.encode())
        if res.returncode != 0:
            raise self._fail(res, "sbatch")
        return parse_sbatch_parsable(res.stdout)

    async def sbatch_test(self, script: str, args: Sequence[str]) -> str:
        """`sbatch --test-only`: would the scheduler take this job (partition, account, QoS,
        reservation, GRES, time limit)? Submits nothing. Returns Slurm's estimate ("Job 12 to start
        at ... on nodes gpu01 in partition a100"); raises SlurmError with its refusal."""
        bad = [a for a in args if not a.startswith("--")]
        if bad:
            raise ValueError(f"sbatch options must be --long=value, got {bad!r}")
        res = await self._call(["sbatch", "--test-only", *args], input=script.encode())
        if res.returncode != 0:
            raise self._fail(res, "sbatch --test-only")
        out = " ".join((res.stderr.strip() or res.stdout.strip()).split())  # 22.05 answers on stderr
        return out.removeprefix("sbatch: ")

    async def account_exists(self, account: str) -> bool | None:
        """Is `account` in Slurm's accounting database? None when this cluster keeps none (no
        slurmdbd): then only sbatch can judge an account. Raises SlurmError when sacctmgr fails."""
        if not _SLURM_NAME.match(account):
            raise ValueError(f"not a Slurm account name: {account!r}")
        res = await self._call(["sacctmgr", "-n", "-P", "show", "account", account, "format=Account"])
        if res.returncode != 0:
            if no_accounting_database(res.stderr):
                return None
            raise self._fail(res, "sacctmgr show account")
        return any(line.strip().lower() == account.lower() for line in res.stdout.splitlines())

    async def squeue(self) -> SqueueResult:
        """chirond's jobs, from ONE squeue for all of them. Within `min_squeue_interval_s` of the
        last answer the cached one is returned (concurrent callers share one call), so slurmctld
        sees at most one squeue per interval however many loops ask."""
        async with self._squeue_lock:
            cached = self._cached
            if cached is not None and self._clock() - cached.fetched_at < self.min_squeue_interval_s:
                self.squeue_cache_hits += 1
                return cached
            jobs, source = await self._squeue_once()
            mine = {j.job_id: j for j in jobs
                    if j.name.startswith(self.name_prefix) and (not j.user or not self.user or j.user == self.user)}
            self._cached = SqueueResult(mine, self._clock(), self._wall_clock(), source)
            return self._cached

    def _who(self) -> list[str]:
        return ["-u", self.user] if self.user else ["--me"]

    async def _squeue_once(self) -> tuple[list[SlurmJob], str]:
        if self._use_json is not False:
            # Older releases ignore filters with --json; ours are re-applied in squeue() anyway.
            res = await self._call(["squeue", "--json", "-t", "all", *self._who()])
            if res.returncode == 0:
                self._use_json = True
                return parse_squeue_json(res.stdout), "json"
            if self._use_json is None and json_unsupported(res.stderr):
                log.warning("squeue cannot print JSON (%s); using its text format", res.stderr.strip())
                self._use_json = False
            else:
                raise self._fail(res, "squeue --json")
        res = await self._call(["squeue", "-h", "-t", "all", *self._who(), "-o", SQUEUE_TEXT_FORMAT])
        if res.returncode != 0:
            raise self._fail(res, "squeue")
        return parse_squeue_text(res.stdout), "text"

    async def sinfo(self, partition: str | None = None) -> list[NodeInfo]:
        """Nodes (of `partition`, when given) with their GPU counts and state."""
        argv = ["sinfo", "--json"] + (["-p", partition] if partition else [])
        res = await self._call(argv)
        if res.returncode != 0:
            raise self._fail(res, "sinfo --json")
        nodes = parse_sinfo_json(res.stdout)
        if partition:  # some releases ignore -p with --json
            nodes = [n for n in nodes if not n.partitions or partition in n.partitions]
        return nodes

    async def scancel(self, job_id: str, signal: str | None = None, *, batch: bool = False) -> bool:
        """Cancel `job_id`, or with `signal` only signal it (`batch`: only its batch shell, which
        forwards TERM to the engine). False when Slurm says the job is already gone."""
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a Slurm job id: {job_id!r}")
        argv = ["scancel"]
        if signal is not None:
            if not _SIGNAL.match(signal):
                raise ValueError(f"not a signal name: {signal!r}")
            argv.append(f"--signal={signal}")
        if batch:
            argv.append("--batch")
        res = await self._call([*argv, job_id])
        if re.search(r"already completing or completed|invalid job id", res.stderr, re.IGNORECASE):
            return False
        if res.returncode != 0:
            raise self._fail(res, "scancel")
        return True

    async def sacct(self, job_ids: Iterable[str]) -> list[SlurmJob] | None:
        """Final states from accounting; None when this cluster keeps no accounting."""
        ids = list(job_ids)
        bad = [i for i in ids if not JOB_ID.match(i)]
        if bad:
            raise ValueError(f"not Slurm job ids: {bad!r}")
        if not ids:
            return []
        res = await self._call(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", SACCT_FIELDS])
        if res.returncode != 0:
            if accounting_disabled(res.stderr):
                return None
            raise self._fail(res, "sacct")
        return parse_sacct_text(res.stdout)

    async def read_text(self, path: str) -> str | None:
        """A small file (a job's address file) through the transport; None when it does not exist."""
        res = await self._call(["cat", "--", path])
        if res.returncode != 0:
            if "no such file" in res.stderr.lower():
                return None
            raise self._fail(res, f"cat {path}")
        return res.stdout
