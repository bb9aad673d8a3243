"""The Slurm backend: every instance is one Slurm job (slurm/chirond-instance.sbatch), submitted,
watched and cancelled through `SlurmCli` (one place where Slurm's commands run, over a transport:
local subprocesses now, SSH later).

What `poll()` reports, per job this backend submitted:
  * squeue lists it: its state through `slurm.job_facts` (the state table), with host:port from the
    job's address file `<run_dir>/<job id>.addr.json`, read once the job runs until it is there.
  * squeue does not list it (finished jobs stay listed for MinJobAge, so this is rare): UNKNOWN first,
    never ended on one answer. Once two squeue answers at least `squeue_min_interval_s` apart have
    missed it, `sacct` is asked; without accounting (sacct: "accounting storage is disabled") the job
    is reported ENDED with detail "vanished from squeue": two misses over the interval are as sure as
    this cluster lets us be, and an instance that never ends would hold its model's slot forever.
  * an answer that predates the submission (squeue's answers are cached for the interval) reports
    the job PENDING "submitted".
  * squeue failing: every live job UNKNOWN (the daemon keeps what it knew).
ENDED jobs are reported in two consecutive polls, then forgotten (and their address file removed).

`cancel(job, grace_s)` lets the engine drain: `scancel --signal=TERM --batch` reaches the batch
shell alone, which forwards TERM to the engine (the template traps it) and exits with the engine's
status; after `grace_s` a plain `scancel` follows if the job is still there (TERM to every process
of the job, then SIGKILL after the site's KillWait). A pending job is plainly cancelled at once
(Slurm cannot signal a job that is not running). A plain `scancel` from outside also reaches the
engine with TERM, but its drain is bounded by KillWait.

`adopt(models)` runs once at start-up, before any submission: one squeue, and for every job of this
user whose name has chirond's prefix (the only jobs squeue's answer holds):
  * no chirond ownership tag in its comment (`chirond:<daemon id>:<instance id>`): not chirond's
    job, whatever its name says: left alone (logged).
  * a tag with another daemon id: another chirond deployment sharing this account: left alone, with
    a warning (never cancelled: this daemon cannot know whether that one still runs).
  * ended or ending (COMPLETED, CANCELLED, ..., COMPLETING): nothing to do.
  * this daemon's tag, and it can be adopted -- PENDING or RUNNING as the state table says, its name
    `chirond-<model>-<n>` matches the tag's instance id n, the model is configured (exactly one
    configured model has that name in a job name), and no job for instance n is adopted already --
    adopted: tracked from now on as if submitted by this process, returned to the daemon.
  * this daemon's tag but not adoptable -- the model is no longer configured (or two configured
    models share its job name), a second job for an instance id already adopted (the one further
    along is kept: running before pending, then the oldest), a name that disagrees with its tag, a
    state chirond does not know -- an orphan: cancelled (plain scancel, retried from poll() if it
    fails) and logged as a warning.
If squeue fails (three tries), adopt() raises BackendError: starting without knowing could double every job.

`stop()` cancels the jobs this process submitted or adopted (plain `scancel`: the daemon has already
let its requests finish) unless `keep_jobs_on_stop`, so a stopped daemon leaves no GPU job behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from chirond.cluster.backend import AdoptedJob, BackendError, JobFacts, JobState, LaunchSpec
from chirond.cluster.jobtemplate import (
    JobSpec,
    JobTemplateError,
    addr_path,
    parse_addr_json,
    parse_job_name,
    parse_ownership_tag,
    render_job,
    sanitize_model,
)
from chirond.cluster.slurm_cli import SlurmCli, SqueueResult
from chirond.cluster.slurm_job import PreflightError, make_job_spec, read_template, template_problem
from chirond.cluster.slurm_parse import STATE_TABLE, NodeInfo, SlurmJob, gres_count, job_facts
from chirond.cluster.ssh import SshTransport
from chirond.cluster.transport import LocalTransport, SlurmError, Transport
from chirond.config import SlurmBackendConfig

log = logging.getLogger(__name__)

UNKNOWN_FREE_GPUS = 1 << 20  # free_gpus() before sinfo has answered: do not hold launches back
SINFO_INTERVAL_S = 10.0  # free GPUs are a hint for the policy: refreshed at most this often
_ENDED_REPORTS = 2  # polls that report a job ENDED before it is forgotten (the protocol's "twice")
_DAEMON_ID = re.compile(r"[A-Za-z0-9-]+")
ADOPT_TRIES = 3  # squeue at start-up: tries before the daemon gives up (it must not guess)
ADOPT_RETRY_S = 2.0
_ENDING = frozenset({"COMPLETING", "STAGE_OUT"})  # running by the state table, but on their way out


@dataclass(slots=True, eq=False)
class _Job:
    job_id: str
    instance_id: int
    gpus: int
    submitted_at: float  # wall clock, after sbatch returned
    state: JobState = JobState.PENDING  # as last reported
    addr: tuple[str, int] | None = None
    bad_addr_logged: bool = False
    first_miss_at: float | None = None  # fetched_at_wall of the first squeue answer (in a row) without it
    last_miss_at: float | None = None  # ... and of the latest
    unknown: JobFacts | None = None  # the last UNKNOWN report while missing
    final: JobFacts | None = None  # ENDED: reported as is until forgotten
    ended_reports: int = 0
    kill_at: float | None = None  # cancel(): plain scancel at this wall time if still there
    restarts: int = 0  # squeue's restart_cnt when last seen: more means Slurm requeued it
    addr_started: float | None = None  # started_at of the address file read last (a requeued run writes a newer one)
    requeued: bool = False  # requeued since the last poll: report PENDING once, whatever squeue says now


def partition_problem(nodes: Iterable[NodeInfo], partition: str) -> str | None:
    """Why `partition` cannot take jobs, judging by sinfo's nodes; None when it has nodes."""
    nodes = list(nodes)
    if any(partition in n.partitions for n in nodes):
        return None
    known = sorted({p for n in nodes for p in n.partitions})
    return f"no partition {partition!r} in this cluster (sinfo lists: {', '.join(known) or 'none'})"


class SlurmBackend:
    name = "slurm"

    def __init__(
        self,
        cfg: SlurmBackendConfig,
        state_dir: Path,
        cli: SlurmCli | None = None,
        clock: Callable[[], float] = time.time,
        *,
        ssh: SshTransport | None = None,
    ) -> None:
        """`ssh`: the transport to the login node when [backend.slurm.ssh] is set, made by the wiring
        (chirond/cluster/wiring.py), which hands the same one to the daemon for scrapes and tunnels;
        Slurm's commands then run over it, else on this machine. `stop()` closes it. `cli`: for tests."""
        self._cfg = cfg
        self._state_dir = Path(state_dir)
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir is not None else self._state_dir / "jobs"
        self._clock = clock
        self.ssh = ssh
        transport: Transport = ssh if ssh is not None else LocalTransport()
        self._cli = cli or SlurmCli(
            transport, cfg.user or (cfg.ssh.user if cfg.ssh else "") or getpass.getuser(),
            min_squeue_interval_s=cfg.squeue_min_interval_s, timeout_s=cfg.command_timeout_s, wall_clock=clock,
        )
        self.daemon_id: str | None = None  # read or made by start(); names this daemon's jobs (--comment)
        self._jobs: dict[str, _Job] = {}
        self._nodes: list[NodeInfo] | None = None  # last sinfo of the partition
        self._counted: set[str] = set()  # our jobs that were running at that sinfo (in its gres_used)
        self._sinfo_at = -math.inf
        self._template: str | None = None  # a custom job template's text (start() reads and checks it)

    @property
    def _local_files(self) -> bool:
        """Can the daemon read the run directory itself (rather than `cat` through the transport)?"""
        return isinstance(self._cli.transport, LocalTransport)

    # --- lifetime ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        if self._local_files:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.daemon_id = self._load_daemon_id()
        await self._load_template()
        await self._refresh_sinfo(force=True)
        if self._nodes == []:  # sinfo answered without nodes: an unknown partition stops us before any sbatch
            try:
                problem = partition_problem(await self._cli.sinfo(), self._cfg.partition)
            except SlurmError:
                problem = f"sinfo lists no nodes in partition {self._cfg.partition!r}"
            if problem is not None:
                raise BackendError(f"backend.slurm.partition: {problem}")
        log.info("slurm backend: daemon id %s, partition %s, run dir %s", self.daemon_id, self._cfg.partition,
                 self.run_dir)

    async def _load_template(self) -> None:
        """[backend.slurm].template: read and checked once (placeholders, bash -n), so a bad one
        stops the daemon before any sbatch rather than failing every launch."""
        problem = await asyncio.to_thread(template_problem, self._cfg, self.run_dir)
        if problem is not None:
            raise BackendError(problem)
        try:
            self._template = read_template(self._cfg)
        except PreflightError as e:
            raise BackendError(str(e)) from None

    async def stop(self) -> None:
        try:
            await self._stop_jobs()
        finally:
            if self.ssh is not None:
                await self.ssh.close()

    async def _stop_jobs(self) -> None:
        for j in self._jobs.values():
            if j.final is not None:
                self._remove_addr(j)
        live = [j for j in self._jobs.values() if j.final is None]
        if self._cfg.keep_jobs_on_stop:
            if live:
                log.info("keep_jobs_on_stop: leaving job(s) %s running", ", ".join(j.job_id for j in live))
            return
        for j in live:
            await self._scancel(j)

    def _load_daemon_id(self) -> str:
        """This daemon's id from `state_dir/daemon-id`, made once (a uuid4) so it survives restarts."""
        path = self._state_dir / "daemon-id"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = str(uuid.uuid4())
            tmp = path.with_name(f".daemon-id.{os.getpid()}")
            tmp.write_text(text + "\n")
            os.replace(tmp, path)
            return text
        if not _DAEMON_ID.fullmatch(text):
            raise BackendError(f"{path}: not a daemon id ({text[:40]!r}); remove the file to make a new one")
        return text

    # --- adopt -----------------------------------------------------------------------------------------

    async def adopt(self, models: Collection[str]) -> list[AdoptedJob]:
        """Take over this daemon's live jobs for configured `models`; cancel its other leftovers
        (the rules are in the module's docstring). Once, after start() and before any submit()."""
        if self.daemon_id is None:
            raise BackendError("the slurm backend is not started")
        for attempt in range(ADOPT_TRIES):
            try:
                sq = await self._cli.squeue()
                break
            except SlurmError as e:
                if attempt + 1 == ADOPT_TRIES:
                    raise BackendError(f"cannot tell which jobs an earlier run left (squeue failed {ADOPT_TRIES} "
                                       f"times: {e}); not starting, so that no job is doubled") from e
                log.warning("squeue failed (%s); asking again in %.0f s", e, ADOPT_RETRY_S)
                await asyncio.sleep(ADOPT_RETRY_S)
        by_job_name: dict[str, list[str]] = {}
        for m in models:
            with contextlib.suppress(JobTemplateError):
                by_job_name.setdefault(sanitize_model(m), []).append(m)
        ours: list[tuple[SlurmJob, int]] = []
        for job in sq.jobs.values():
            tag = parse_ownership_tag(job.comment)
            if tag is None:
                log.info("job %s (%s): no chirond ownership tag in its comment: not ours, left alone", job.job_id,
                         job.name)
            elif tag[0] != self.daemon_id:
                if STATE_TABLE.get(job.state, (JobState.UNKNOWN, None))[0] is not JobState.ENDED:
                    log.warning("job %s (%s) belongs to another chirond (daemon id %s) under this account: left "
                                "alone", job.job_id, job.name, tag[0])
            else:
                ours.append((job, tag[1]))
        # Of two jobs for one instance id, the one further along is kept: running first, then the oldest.
        ours.sort(key=lambda p: (STATE_TABLE.get(p[0].state, (JobState.UNKNOWN, None))[0] is not JobState.RUNNING,
                                 len(p[0].job_id), p[0].job_id))
        adopted: dict[int, AdoptedJob] = {}
        for job, iid in ours:
            state = STATE_TABLE.get(job.state, (JobState.UNKNOWN, None))[0]
            if state is JobState.ENDED or job.state in _ENDING:
                continue
            model, why = self._adoptable(job, iid, state, by_job_name, adopted)
            if model is None:
                await self._cancel_orphan(job, iid, why, sq.fetched_at_wall)
                continue
            adopted[iid] = await self._take_over(job, iid, model, state, sq.fetched_at_wall)
        return list(adopted.values())

    @staticmethod
    def _adoptable(job: SlurmJob, iid: int, state: JobState, by_job_name: dict[str, list[str]],
                   adopted: dict[int, AdoptedJob]) -> tuple[str | None, str]:
        """(the configured model, "") for a job of this daemon that can be adopted; (None, why) for an orphan."""
        if state not in (JobState.PENDING, JobState.RUNNING):
            return None, f"state {job.state_raw or job.state!r} is not one chirond knows"
        named = parse_job_name(job.name)
        if named is None or named[1] != iid:
            return None, f"its name {job.name!r} does not match its tag {job.comment!r}"
        models = by_job_name.get(named[0], [])
        if not models:
            return None, f"model {named[0]!r} is no longer configured"
        if len(models) > 1:
            return None, f"configured models {', '.join(models)} share the job name; cannot tell which it serves"
        if iid in adopted:
            return None, f"a second job for instance {iid} (job {adopted[iid].job_id} is adopted)"
        return models[0], ""

    async def _take_over(self, job: SlurmJob, iid: int, model: str, state: JobState, now: float) -> AdoptedJob:
        try:
            gpus = gres_count(job.gres)
        except ValueError:
            gpus = 0
        j = _Job(job.job_id, iid, gpus, job.submit_time or now, state=state, restarts=job.restarts)
        self._jobs[j.job_id] = j
        if state is JobState.RUNNING:
            self._counted.add(j.job_id)  # it held its GPUs when start()'s sinfo looked
            j.addr = await self._read_addr(j)
        host, port = j.addr if j.addr is not None else (None, None)
        log.info("adopted job %s: instance %d (%s), %s%s", j.job_id, iid, model, job.state,
                 f", engine at {host}:{port}" if host is not None else "")
        return AdoptedJob(j.job_id, iid, model, state, host, port)

    async def _cancel_orphan(self, job: SlurmJob, iid: int, why: str, now: float) -> None:
        log.warning("job %s (%s) is an orphan of this daemon: %s; cancelling it", job.job_id, job.name, why)
        j = _Job(job.job_id, iid, 0, job.submit_time or now)
        self._jobs[j.job_id] = j  # so that poll() retries a failed scancel and sees it end
        await self._scancel(j)

    # --- submit ---------------------------------------------------------------------------------------

    def job_spec(self, spec: LaunchSpec) -> JobSpec:
        """The job that runs `spec`, with this backend's Slurm settings."""
        if self.daemon_id is None:
            raise BackendError("the slurm backend is not started")
        return make_job_spec(self._cfg, self.run_dir, self.daemon_id, spec)

    async def submit(self, spec: LaunchSpec) -> str:
        try:
            script, args = render_job(self.job_spec(spec), self._template)
        except JobTemplateError as e:
            raise BackendError(f"instance {spec.instance_id}: {e}") from e
        try:
            job_id = await self._cli.sbatch(script, [*args, *self._cfg.extra_sbatch_args])
        except SlurmError as e:
            raise BackendError(f"instance {spec.instance_id}: {e}") from e
        self._jobs[job_id] = _Job(job_id, spec.instance_id, spec.gpus, self._clock())
        log.info("submitted job %s: instance %d (%s), %d GPU(s), partition %s", job_id, spec.instance_id,
                 spec.model, spec.gpus, self._cfg.partition)
        return job_id

    # --- poll -----------------------------------------------------------------------------------------

    async def poll(self) -> dict[str, JobFacts]:
        await self._refresh_sinfo()
        await self._kill_overdue()
        try:
            sq = await self._cli.squeue()
        except SlurmError as e:
            log.warning("squeue failed: %s", e)
            facts = {j.job_id: j.final or self._unknown(j, f"squeue failed: {e}") for j in self._jobs.values()}
        else:
            facts = {j.job_id: await self._facts(j, sq) for j in list(self._jobs.values())}
        for job_id, f in facts.items():
            self._record(self._jobs[job_id], f)
        return facts

    async def _facts(self, j: _Job, sq: SqueueResult) -> JobFacts:
        if j.final is not None:
            return j.final
        seen = sq.jobs.get(j.job_id)
        if seen is not None:
            j.first_miss_at = j.last_miss_at = None
            state = STATE_TABLE.get(seen.state, (JobState.UNKNOWN, None))[0]
            if seen.restarts > j.restarts or (state is JobState.PENDING and j.state is JobState.RUNNING):
                self._requeued(j, seen)
            if j.requeued:  # the daemon must see it leave RUNNING, even if it runs again already
                j.requeued = False
                if state is not JobState.ENDED:
                    return JobFacts(j.job_id, j.instance_id, JobState.PENDING,
                                    detail=f"requeued (restart {seen.restarts or 'count unknown'}): {seen.state}")
            if j.addr is None and state is JobState.RUNNING:
                j.addr = await self._read_addr(j)
            return job_facts(seen, j.instance_id, j.addr, sq.fetched_at_wall)
        if sq.fetched_at_wall <= j.submitted_at:  # an answer from before the submission (cached)
            return JobFacts(j.job_id, j.instance_id, JobState.PENDING, detail="submitted")
        return await self._missing(j, sq.fetched_at_wall)

    def _requeued(self, j: _Job, seen: SlurmJob) -> None:
        """Slurm put a job that ran back into its queue (scontrol requeue, preemption or node
        failure with --requeue; chirond submits --no-requeue, but extra_sbatch_args or an admin may
        change that): its engine is gone, its address with it. It keeps its job id; when it runs
        again it writes a new address file, and only a newer file than the last one is read."""
        log.warning("job %s (instance %d) was requeued (%s, restart %d): its engine is gone until it runs again",
                    j.job_id, j.instance_id, seen.state, seen.restarts)
        j.restarts = max(j.restarts, seen.restarts)
        j.addr, j.bad_addr_logged, j.requeued = None, False, True
        self._counted.discard(j.job_id)  # no longer holds its GPUs

    async def _missing(self, j: _Job, fetched_at: float) -> JobFacts:
        """A job squeue did not list: UNKNOWN until two answers over the interval missed it, then what
        accounting says, or ENDED "vanished from squeue" where there is none."""
        if j.last_miss_at == fetched_at and j.unknown is not None:
            return j.unknown  # the same (cached) answer again: nothing new to decide on
        j.last_miss_at = fetched_at
        if j.first_miss_at is None:
            j.first_miss_at = fetched_at
        # A second answer at least the interval after the first (the interval is > 0, so one answer never is).
        if fetched_at - j.first_miss_at < self._cfg.squeue_min_interval_s:
            return self._unknown(j, "missing from squeue")
        try:
            rows = await self._cli.sacct([j.job_id])
        except SlurmError as e:
            log.warning("job %s is missing from squeue and sacct failed: %s", j.job_id, e)
            return self._unknown(j, f"missing from squeue; sacct failed: {e}")
        if rows is None:
            return self._ended(j, "vanished from squeue (no accounting to say how it ended)")
        row = next((r for r in rows if r.job_id == j.job_id), None)
        if row is None:
            return self._ended(j, "vanished from squeue and not in accounting")
        return self._from_accounting(j, row)

    def _from_accounting(self, j: _Job, row: SlurmJob) -> JobFacts:
        f = job_facts(row, j.instance_id, j.addr, self._clock())
        if f.state is JobState.ENDED:
            return f
        return self._unknown(j, f"missing from squeue; accounting says {row.state}")

    def _unknown(self, j: _Job, detail: str) -> JobFacts:
        j.unknown = self._plain_facts(j, JobState.UNKNOWN, detail)
        return j.unknown

    def _ended(self, j: _Job, detail: str) -> JobFacts:
        return self._plain_facts(j, JobState.ENDED, detail)

    @staticmethod
    def _plain_facts(j: _Job, state: JobState, detail: str) -> JobFacts:
        host, port = j.addr if j.addr is not None else (None, None)
        return JobFacts(j.job_id, j.instance_id, state, host, port, detail=detail)

    def _record(self, j: _Job, f: JobFacts) -> None:
        """Keep what was reported; forget an ended job after its second report."""
        if f.state is not JobState.UNKNOWN:
            j.state = f.state
        if f.state is not JobState.ENDED:
            return
        if j.final is None:
            j.final = f
            log.info("job %s (instance %d) ended: %s", j.job_id, j.instance_id, f.detail)
        j.ended_reports += 1
        if j.ended_reports >= _ENDED_REPORTS:
            del self._jobs[j.job_id]
            self._remove_addr(j)

    async def _read_addr(self, j: _Job) -> tuple[str, int] | None:
        """host:port from the job's address file; None while it is not there (or not readable yet)."""
        path = addr_path(str(self.run_dir), j.job_id)
        try:
            if self._local_files:
                try:
                    text: str | None = Path(path).read_text()
                except FileNotFoundError:
                    text = None
            else:
                text = await self._cli.read_text(path)
            if text is None:
                return None
            a = parse_addr_json(text, j.job_id)
        except (OSError, SlurmError, ValueError) as e:
            if not j.bad_addr_logged:
                j.bad_addr_logged = True
                log.warning("job %s: cannot use its address file %s: %s", j.job_id, path, e)
            return None
        if j.addr_started is not None and a.started_at <= j.addr_started:
            return None  # written by the run before a requeue: wait for the new run's file
        j.addr_started = a.started_at
        log.info("job %s (instance %d) runs on %s, engine at %s:%d", j.job_id, j.instance_id, a.node, a.host, a.port)
        return a.host, a.port

    def _remove_addr(self, j: _Job) -> None:
        if self._local_files:  # over SSH the file stays (it is small); its job id is never reused
            with contextlib.suppress(OSError):
                Path(addr_path(str(self.run_dir), j.job_id)).unlink()

    # --- cancel ---------------------------------------------------------------------------------------

    async def cancel(self, job_id: str, grace_s: float) -> None:
        """TERM to the batch shell (which forwards it to the engine) now; a plain scancel after
        `grace_s` (from poll()) if the job is still there. Pending jobs are cancelled at once.
        Unknown or ended jobs are ignored, so a repeated cancel is harmless."""
        j = self._jobs.get(job_id)
        if j is None or j.final is not None:
            return
        deadline = self._clock() + max(0.0, grace_s)
        if j.kill_at is not None:  # already asked: only bring the plain scancel forward
            j.kill_at = min(j.kill_at, deadline)
            return
        j.kill_at = deadline
        if j.state is JobState.RUNNING:
            try:
                if await self._cli.scancel(job_id, "TERM", batch=True):
                    log.info("job %s: TERM to its batch shell; scancel in %.0f s if still there", job_id, grace_s)
                    return
            except SlurmError as e:  # e.g. "Job can not be altered now": it has not started after all
                log.info("job %s: cannot signal it (%s); cancelling it", job_id, e)
        await self._scancel(j)

    async def _kill_overdue(self) -> None:
        now = self._clock()
        for j in list(self._jobs.values()):
            if j.final is None and j.kill_at is not None and now >= j.kill_at:
                log.warning("job %s still there after its grace period: scancel", j.job_id)
                await self._scancel(j)

    async def _scancel(self, j: _Job) -> None:
        """Plain scancel. Failures are logged, and retried from poll() while the job is there."""
        try:
            await self._cli.scancel(j.job_id)
        except (SlurmError, ValueError) as e:
            log.warning("scancel %s failed: %s", j.job_id, e)
            j.kill_at = self._clock()  # retried by the next poll
            return
        j.kill_at = math.inf  # done; squeue tells when it has ended

    # --- free GPUs ------------------------------------------------------------------------------------

    async def _refresh_sinfo(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._sinfo_at < SINFO_INTERVAL_S:
            return
        self._sinfo_at = now
        try:
            nodes = await self._cli.sinfo(self._cfg.partition)
        except SlurmError as e:
            log.warning("sinfo failed (free GPUs unknown until it answers): %s", e)
            return
        self._nodes = nodes
        self._counted = {j.job_id for j in self._jobs.values() if j.state is JobState.RUNNING}

    def free_gpus(self) -> int:
        """GPUs on usable nodes of the partition that no job held at the last sinfo, less those of our
        jobs that sinfo did not count (queued, or started since). A large number before sinfo answers."""
        if self._nodes is None:
            return UNKNOWN_FREE_GPUS
        free = sum(n.gpus_free for n in self._nodes)
        ours = sum(j.gpus for j in self._jobs.values() if j.final is None and j.job_id not in self._counted)
        return max(0, free - ours)
