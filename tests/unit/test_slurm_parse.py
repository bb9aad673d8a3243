"""chirond.cluster.slurm: the pure parsers against Slurm output in three JSON dialects (22.05,
23.02, 24.05; reconstructed, see tests/data/slurm/reconstructed/README.md) and recorded 22.05 output
(tests/data/slurm/22.05/, when present); the state table; SlurmCli over a scripted transport (one
squeue per interval, JSON-to-text fallback, argv); LocalTransport against real processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from chirond.cluster.backend import JobState
from chirond.cluster.slurm import (
    CLEAN_END_STATES,
    FAILURE_STATES,
    SQUEUE_TEXT_FORMAT,
    STATE_TABLE,
    CommandResult,
    SlurmCli,
    SlurmError,
    SlurmJob,
    SlurmParseError,
    accounting_disabled,
    expand_hostlist,
    gres_count,
    is_failure,
    job_facts,
    json_unsupported,
    normalize_state,
    parse_duration,
    parse_sacct_text,
    parse_sbatch_parsable,
    parse_sinfo_json,
    parse_squeue_json,
    parse_squeue_text,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
RECON = DATA / "reconstructed"
RECORDED = DATA / "22.05"
DIALECTS = ["22.05", "23.02", "24.05"]
T0 = 1717000000
USER = "chirond-test"

# job id -> (state, reason, time limit s, exit code, signal, start, end, nodes); the same in every dialect.
EXPECTED: dict[str, tuple[Any, ...]] = {
    "101": ("RUNNING", "", 3600.0, None, None, T0, T0 + 3600, "gpu01"),
    "102": ("PENDING", "Resources", 3600.0, None, None, T0 + 900, T0 + 4500, ""),
    "103": ("COMPLETING", "", 3600.0, 0, None, T0 - 240, T0 + 200, "gpu02"),
    "104": ("FAILED", "NonZeroExitCode", 7200.0, 3, None, T0 - 590, T0 - 500, "gpu02"),
    "105": ("TIMEOUT", "TimeLimit", 60.0, 0, 15, T0 - 880, T0 - 812, "gpu01"),
    "106": ("CANCELLED", "", 3600.0, 0, 15, T0 - 390, T0 - 30, "gpu02"),
    "107": ("NODE_FAIL", "NodeDown", 3600.0, 0, 9, T0 - 690, T0 - 100, "gpu03"),
    "108": ("RUNNING", "", 3600.0, None, None, T0 - 40, T0 + 3560, "gpu01"),
    "109": ("RUNNING", "", 3600.0, None, None, T0 - 45, T0 + 3555, "gpu01"),
    "110": ("REQUEUED", "ReqNodeNotAvail", None, None, None, None, None, ""),
}
OURS = {"101", "102", "103", "104", "105", "106", "107", "110"}  # 108: not chirond's name; 109: alice's


def fixture(name: str) -> str:
    return (RECON / name).read_text()


# --- squeue JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_squeue_json_dialects(dialect: str) -> None:
    jobs = {j.job_id: j for j in parse_squeue_json(fixture(f"squeue-{dialect}.json"))}
    assert set(jobs) == set(EXPECTED)
    for job_id, (state, reason, limit, code, sig, start, end, nodes) in EXPECTED.items():
        j = jobs[job_id]
        got = (j.state, j.reason, j.time_limit_s, j.exit_code, j.exit_signal, j.start_time, j.end_time, j.nodes)
        assert got == (state, reason, limit, code, sig, start, end, nodes), job_id
    j = jobs["101"]
    assert (j.name, j.user, j.partition, j.batch_host) == ("chirond-llama-8b-1", USER, "a100", "gpu01")
    assert j.comment == "chirond:0f1e2d3c-aaaa-bbbb-cccc-000000000001:1"
    assert j.submit_time == T0 - 60
    assert "gpu:a100:1" in j.gres and "gres/gpu=1" in j.tres
    assert jobs["109"].user == "alice"
    assert jobs["110"].restarts == 1


def test_squeue_json_raw_states_differ_by_dialect() -> None:
    raw = {d: {j.job_id: j.state_raw for j in parse_squeue_json(fixture(f"squeue-{d}.json"))} for d in DIALECTS}
    assert raw["22.05"]["103"] == "COMPLETING" and raw["24.05"]["103"] == "COMPLETED,COMPLETING"
    assert raw["22.05"]["110"] == "REQUEUED" and raw["23.02"]["110"] == "PENDING,REQUEUED"


@pytest.mark.parametrize(("value", "state"), [
    ("RUNNING", "RUNNING"),
    ("running", "RUNNING"),
    (["RUNNING"], "RUNNING"),
    (["COMPLETED", "COMPLETING"], "COMPLETING"),
    (["CANCELLED", "COMPLETING"], "COMPLETING"),
    (["PENDING", "REQUEUED"], "REQUEUED"),
    (["PENDING", "REQUEUE_HOLD"], "REQUEUE_HOLD"),
    (["RUNNING", "CONFIGURING"], "CONFIGURING"),
    (["FAILED", "LAUNCH_FAILED"], "FAILED"),
    (["LAUNCH_FAILED", "FAILED"], "FAILED"),
    ("CANCELLED by 1001", "CANCELLED"),
    (["SOMETHING_NEW"], "SOMETHING_NEW"),
    ([], ""),
    (None, ""),
    (42, ""),
])
def test_normalize_state(value: Any, state: str) -> None:
    assert normalize_state(value)[0] == state


def one_job(**fields: Any) -> SlurmJob:
    doc = {"jobs": [{"job_id": 5, "name": "chirond-m-1", **fields}]}
    (job,) = parse_squeue_json(json.dumps(doc))
    return job


@pytest.mark.parametrize(("exit_code", "expect"), [
    (768, (3, None)),  # wait status: exit 3
    (9, (0, 9)),  # killed by SIGKILL
    (0, (0, None)),
    ({"set": True, "infinite": False, "number": 256}, (1, None)),
    ("2:0", (2, None)),
    ({"status": ["ERROR"], "return_code": {"set": True, "number": 1}, "signal": {"id": {"set": False}}}, (1, None)),
    ({"status": "SIGNALED", "return_code": 0, "signal": {"name": "KILL"}}, (0, 9)),
    ({"status": ["PENDING"], "return_code": {"set": False}}, (None, None)),
    ("garbage", (None, None)),
    (None, (None, None)),
])
def test_exit_code_dialects(exit_code: Any, expect: tuple[int | None, int | None]) -> None:
    job = one_job(job_state="FAILED", exit_code=exit_code)
    assert (job.exit_code, job.exit_signal) == expect


def test_exit_code_is_none_until_the_job_ends() -> None:
    assert one_job(job_state="RUNNING", exit_code=768).exit_code is None
    assert one_job(job_state=["COMPLETED", "COMPLETING"], exit_code=768).exit_code == 3


def test_squeue_json_tolerates_missing_and_odd_fields() -> None:
    job = one_job()
    assert (job.job_id, job.state, job.reason, job.time_limit_s, job.start_time, job.user) == ("5", "", "", None,
                                                                                               None, "")
    assert one_job(time_limit=None).time_limit_s is None  # 22.05: null = UNLIMITED
    assert one_job(time_limit={"set": False, "infinite": True, "number": 0}).time_limit_s is None
    assert one_job(time_limit={"set": False, "infinite": False, "number": 0}).time_limit_s is None
    assert one_job(time_limit="30").time_limit_s == 1800
    assert one_job(start_time=0).start_time is None
    assert one_job(start_time={"set": True, "infinite": False, "number": 0}).start_time is None
    assert one_job(state_reason="None").reason == ""
    assert one_job(state_reason=["Resources"]).reason == "Resources"
    assert one_job(time_limit=True).time_limit_s is None  # a bool is not a number
    docs = {"jobs": [{"job_id": {"set": True, "number": 7}}, {"job_id": "8"}, {"name": "no id"}, "junk",
                     {"job_id": {"set": False, "number": 0}}, {"job_id": "12;x"}]}
    assert [j.job_id for j in parse_squeue_json(json.dumps(docs))] == ["7", "8"]


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"jobs": {}}', '{"meta": {}}'])
def test_squeue_json_garbage(text: str) -> None:
    with pytest.raises(SlurmParseError):
        parse_squeue_json(text)


def test_squeue_json_errors_are_raised() -> None:
    with pytest.raises(SlurmError, match="Unable to contact slurm controller"):
        parse_squeue_json(json.dumps({"jobs": [], "errors": [{"error": "Unable to contact slurm controller",
                                                              "errno": 1007}]}))
    with pytest.raises(SlurmError, match="Invalid user"):
        parse_squeue_json(json.dumps({"jobs": [], "errors": [{"description": "Invalid user", "error_number": 2}]}))


# --- the state table and JobFacts -------------------------------------------------------------------


def test_state_table_failures_and_clean_ends() -> None:
    assert {"FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "OUT_OF_MEMORY"} <= FAILURE_STATES
    assert {"COMPLETED", "CANCELLED"} == CLEAN_END_STATES
    assert is_failure("TIMEOUT") is True and is_failure("CANCELLED") is False
    assert is_failure("RUNNING") is None and is_failure("NEW_STATE") is None
    for state, (backend, failure) in STATE_TABLE.items():
        assert (failure is None) == (backend is not JobState.ENDED), state


def facts_by_id(dialect: str, now: float) -> dict[str, Any]:
    jobs = parse_squeue_json(fixture(f"squeue-{dialect}.json"))
    return {j.job_id: job_facts(j, int(j.job_id) - 100, ("10.0.0.1", 20001), now) for j in jobs}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_job_facts(dialect: str) -> None:
    f = facts_by_id(dialect, now=T0 + 300)
    assert (f["101"].state, f["101"].host, f["101"].port, f["101"].instance_id) == (JobState.RUNNING, "10.0.0.1",
                                                                                     20001, 1)
    assert (f["101"].started_at, f["101"].ends_at, f["101"].detail) == (T0, T0 + 3600, "")
    assert f["102"].state is JobState.PENDING
    assert f["102"].started_at is None and f["102"].ends_at is None
    assert f["102"].detail == "Resources (expected start in 600s)"
    assert (f["103"].state, f["103"].detail) == (JobState.RUNNING, "COMPLETING")
    assert (f["104"].state, f["104"].detail) == (JobState.ENDED, "FAILED: exit code 3 (NonZeroExitCode)")
    assert f["105"].detail == "TIMEOUT: killed by SIGTERM (TimeLimit)"
    assert f["105"].ends_at == T0 - 880 + 60
    assert f["106"].detail == "CANCELLED: killed by SIGTERM"
    assert f["107"].detail == "NODE_FAIL: killed by SIGKILL (NodeDown)"
    assert (f["110"].state, f["110"].detail) == (JobState.PENDING, "REQUEUED: ReqNodeNotAvail")


def test_unknown_states_are_unknown_never_ended() -> None:
    for state in (["SOMETHING_NEW"], "", None):
        facts = job_facts(one_job(job_state=state), 1, None, T0)
        assert facts.state is JobState.UNKNOWN
        assert facts.detail.startswith("unrecognised Slurm state")


def test_job_facts_without_address_and_from_text() -> None:
    (job,) = [j for j in parse_squeue_text(fixture("squeue-22.05.txt")) if j.job_id == "101"]
    facts = job_facts(job, 1, None, now=T0 + 300)
    assert (facts.host, facts.port) == (None, None)
    assert facts.started_at == T0  # now - elapsed (5:00)
    assert facts.ends_at == T0 + 3600


# --- squeue text, sacct -----------------------------------------------------------------------------


def test_squeue_text() -> None:
    jobs = {j.job_id: j for j in parse_squeue_text(fixture("squeue-22.05.txt"))}
    assert set(jobs) == set(EXPECTED) - {"109"}  # squeue -u filtered alice's job
    for job_id, j in jobs.items():
        state, reason, limit, *_ , nodes = EXPECTED[job_id]
        assert (j.state, j.reason, j.time_limit_s, j.nodes) == (state, reason, limit, nodes), job_id
    assert jobs["105"].run_time_s == 68 and jobs["103"].run_time_s == 440
    assert jobs["108"].comment == "" and jobs["101"].comment.startswith("chirond:")


def test_squeue_text_edge_cases() -> None:
    text = ("\n"
            "not|enough|fields\n"
            "abc|RUNNING|n1|N/A|1:00|5|chirond-x-1|n1|\n"
            "77|RUNNING|n1|N/A|1-02:03:04|UNLIMITED|chirond-x-1|n1|a|comment|with|bars\n")
    (job,) = parse_squeue_text(text)
    assert (job.job_id, job.comment, job.gres, job.time_limit_s) == ("77", "a|comment|with|bars", "", None)
    assert job.run_time_s == ((24 + 2) * 60 + 3) * 60 + 4


@pytest.mark.parametrize(("text", "seconds"), [
    ("0:00", 0), ("5:00", 300), ("1:00:00", 3600), ("1-00:00:00", 86400), ("2-03", 2 * 86400 + 3 * 3600),
    ("2-03:04", 2 * 86400 + 3 * 3600 + 4 * 60), ("90", 5400), ("UNLIMITED", None), ("INVALID", None),
    ("N/A", None), ("", None),
])
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_sacct_text() -> None:
    jobs = {j.job_id: j for j in parse_sacct_text(fixture("sacct-22.05.txt") + "garbage line\n")}
    assert jobs["104"].state == "FAILED" and (jobs["104"].exit_code, jobs["104"].exit_signal) == (3, None)
    assert jobs["106"].state == "CANCELLED" and jobs["106"].exit_signal == 15
    assert jobs["103"].state == "COMPLETED"
    assert jobs["102"].nodes == "" and jobs["102"].start_time is None and jobs["102"].exit_code is None
    assert jobs["104"].start_time == datetime.fromisoformat("2024-05-29T16:16:50").timestamp()
    assert accounting_disabled("sacct: error: Slurm accounting storage is disabled\n")
    assert not accounting_disabled("sacct: error: Problem talking to the database: Connection refused")


# --- sinfo ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sinfo_dialects(dialect: str) -> None:
    nodes = {n.name: n for n in parse_sinfo_json(fixture(f"sinfo-{dialect}.json"))}
    assert set(nodes) == {"gpu01", "gpu02", "gpu03", "gpu04", "cpu01"}
    assert (nodes["gpu01"].state, nodes["gpu01"].gpus_total, nodes["gpu01"].gpus_used) == ("MIXED", 4, 2)
    assert nodes["gpu02"].partitions == ("a100", "debug")  # 24.05: merged from two records
    assert (nodes["gpu03"].state, nodes["gpu03"].flags, nodes["gpu03"].reason) == ("IDLE", ("DRAIN",), "maintenance")
    assert (nodes["gpu04"].state, nodes["gpu04"].flags) == ("DOWN", ("NOT_RESPONDING",))
    assert [n.usable for n in nodes.values()] == [True, True, False, False, True]
    assert {n: x.gpus_free for n, x in nodes.items()} == {"gpu01": 2, "gpu02": 4, "gpu03": 0, "gpu04": 0, "cpu01": 0}


def test_sinfo_garbage() -> None:
    with pytest.raises(SlurmParseError):
        parse_sinfo_json('{"meta": {}}')
    nodes = parse_sinfo_json(json.dumps({"nodes": [{"name": "n1"}, {"state": "idle"}, "junk"]}))
    assert [(n.name, n.state, n.gpus_total) for n in nodes] == [("n1", "UNKNOWN", 0)]
    assert not nodes[0].usable


@pytest.mark.parametrize(("gres", "count"), [
    ("gpu:a100:8(S:0-1)", 8), ("gpu:8", 8), ("gpu", 1), ("gpu:a100", 1), ("gres/gpu:2", 2), ("gres:gpu:a100:1", 1),
    ("gpu:a100:2(IDX:0,2),gpu:v100:1(IDX:0)", 3), ("gpu:a100:0(IDX:N/A)", 0), ("(null)", 0), ("", 0),
    ("mps:100,gpu:4", 4), ("shard:8", 0),
])
def test_gres_count(gres: str, count: int) -> None:
    assert gres_count(gres) == count


@pytest.mark.parametrize(("hostlist", "names"), [
    ("gpu01", ["gpu01"]),
    ("gpu[01-03]", ["gpu01", "gpu02", "gpu03"]),
    ("gpu[01-02,07],login1", ["gpu01", "gpu02", "gpu07", "login1"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    (["gpu01", "gpu[08-09]"], ["gpu01", "gpu08", "gpu09"]),
    ("", []),
])
def test_expand_hostlist(hostlist: str | list[str], names: list[str]) -> None:
    assert expand_hostlist(hostlist) == names


# --- sbatch, capability errors ----------------------------------------------------------------------


@pytest.mark.parametrize(("stdout", "job_id"), [("123\n", "123"), ("123;cluster\n", "123"), ("\n456\n\n", "456")])
def test_sbatch_parsable(stdout: str, job_id: str) -> None:
    assert parse_sbatch_parsable(stdout) == job_id


@pytest.mark.parametrize("stdout", ["", "\n", "Submitted batch job 12\n", "abc;cluster"])
def test_sbatch_parsable_garbage(stdout: str) -> None:
    with pytest.raises(SlurmParseError):
        parse_sbatch_parsable(stdout)


@pytest.mark.parametrize(("stderr", "unsupported"), [
    ("squeue: unrecognized option '--json'\nTry \"squeue --help\" for more information\n", True),
    ("squeue: invalid option -- json", True),
    ("squeue: error: serializer/json plugin not found\n", True),
    ("squeue: error: Unable to load plugin data_parser/v0.0.38: cannot open shared object\n", True),
    ("squeue: error: data_parser/v0.0.39 plugin: unable to load\n", True),
    ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", False),
    ("", False),
])
def test_json_unsupported(stderr: str, unsupported: bool) -> None:
    assert json_unsupported(stderr) is unsupported


# --- SlurmCli over a scripted transport -------------------------------------------------------------


class Scripted:
    """A transport that answers from a script of (rc, stdout, stderr) per command name."""

    def __init__(self, answers: dict[str, list[tuple[int, str, str]]], delay: float = 0.0) -> None:
        self.answers = answers
        self.delay = delay
        self.calls: list[tuple[tuple[str, ...], bytes | None]] = []

    async def run(self, argv: Sequence[str], timeout_s: float, input: bytes | None = None) -> CommandResult:
        self.calls.append((tuple(argv), input))
        if self.delay:
            await asyncio.sleep(self.delay)
        queue = self.answers[argv[0]]
        rc, out, err = queue.pop(0) if len(queue) > 1 else queue[0]
        return CommandResult(tuple(argv), rc, out, err, self.delay)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def cli(answers: dict[str, list[tuple[int, str, str]]], **kw: Any) -> tuple[SlurmCli, Scripted, Clock]:
    transport, clock = Scripted(answers, kw.pop("delay", 0.0)), Clock()
    return SlurmCli(transport, USER, min_squeue_interval_s=2.0, clock=clock, wall_clock=lambda: T0 + 1.0, **kw), \
        transport, clock


async def test_squeue_filters_to_our_jobs_and_caches() -> None:
    c, t, clock = cli({"squeue": [(0, fixture("squeue-22.05.json"), "")]})
    r = await c.squeue()
    assert set(r.jobs) == OURS and r.source == "json" and r.fetched_at_wall == T0 + 1.0
    assert t.calls[0][0] == ("squeue", "--json", "-t", "all", "-u", USER)
    clock.t += 1.9
    assert await c.squeue() is r
    assert (len(t.calls), c.calls["squeue"], c.squeue_cache_hits) == (1, 1, 1)
    clock.t += 0.2
    assert await c.squeue() is not r
    assert len(t.calls) == 2


async def test_concurrent_squeue_callers_share_one_call() -> None:
    c, t, _ = cli({"squeue": [(0, fixture("squeue-24.05.json"), "")]}, delay=0.05)
    results = await asyncio.gather(*(c.squeue() for _ in range(10)))
    assert len(t.calls) == 1 and all(r is results[0] for r in results)
    assert c.squeue_cache_hits == 9


async def test_squeue_falls_back_to_text_once_when_json_is_unsupported() -> None:
    c, t, clock = cli({"squeue": [(1, "", "squeue: unrecognized option '--json'\n"),
                                  (0, fixture("squeue-22.05.txt"), "")]})
    r = await c.squeue()
    assert r.source == "text" and set(r.jobs) == OURS
    assert t.calls[1][0] == ("squeue", "-h", "-t", "all", "-u", USER, "-o", SQUEUE_TEXT_FORMAT)
    clock.t += 5
    await c.squeue()
    assert [a[0][1] for a in t.calls] == ["--json", "-h", "-h"]  # JSON is not tried again


async def test_squeue_failure_raises_and_is_not_cached() -> None:
    err = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
    c, t, _ = cli({"squeue": [(1, "", err), (0, fixture("squeue-23.02.json"), "")]})
    with pytest.raises(SlurmError, match="Unable to contact slurm controller") as e:
        await c.squeue()
    assert e.value.returncode == 1 and e.value.argv[0] == "squeue"
    r = await c.squeue()  # no interval to wait out after a failure
    assert set(r.jobs) == OURS and len(t.calls) == 2


async def test_squeue_without_a_user_asks_for_me() -> None:
    transport = Scripted({"squeue": [(0, fixture("squeue-22.05.json"), "")]})
    r = await SlurmCli(transport, "").squeue()
    assert transport.calls[0][0][-1] == "--me"
    assert set(r.jobs) == OURS | {"109"}  # no user to filter on: name prefix only


async def test_sbatch() -> None:
    c, t, _ = cli({"sbatch": [(0, "4242;cluster\n", ""), (1, "", "sbatch: error: Batch job submission failed: "
                                                                "Invalid partition name specified\n")]})
    assert await c.sbatch("#!/bin/bash\ntrue\n", ["--job-name=chirond-m-1", "--partition=a100"]) == "4242"
    argv, stdin = t.calls[0]
    assert argv == ("sbatch", "--parsable", "--job-name=chirond-m-1", "--partition=a100")
    assert stdin == b"#!/bin/bash\ntrue\n"
    with pytest.raises(SlurmError, match="Invalid partition name specified"):
        await c.sbatch("#!/bin/bash\n", ["--partition=nope"])
    with pytest.raises(ValueError, match="--long=value"):
        await c.sbatch("#!/bin/bash\n", ["script.sh"])
    assert c.calls["sbatch"] == 2


async def test_scancel() -> None:
    c, t, _ = cli({"scancel": [(0, "", ""), (0, "", ""),
                               (1, "", "scancel: error: Kill job error on job id 9: Invalid job id specified\n"),
                               (0, "", "scancel: error: Kill job error on job id 9: Job/step already completing "
                                       "or completed\n"),
                               (1, "", "scancel: error: Unable to contact slurm controller\n")]})
    assert await c.scancel("9") is True
    assert await c.scancel("9", "TERM", batch=True) is True
    assert [a for a, _ in t.calls] == [("scancel", "9"), ("scancel", "--signal=TERM", "--batch", "9")]
    assert await c.scancel("9") is False
    assert await c.scancel("9") is False
    with pytest.raises(SlurmError):
        await c.scancel("9")
    for bad_id, sig in (("9; rm", None), ("", None), ("9", "TERM; id")):
        with pytest.raises(ValueError):
            await c.scancel(bad_id, sig)


async def test_sacct_and_sinfo_and_read_text() -> None:
    c, t, _ = cli({
        "sacct": [(0, fixture("sacct-22.05.txt"), ""), (1, "", "sacct: error: Slurm accounting storage is disabled\n")],
        "sinfo": [(0, fixture("sinfo-24.05.json"), "")],
        "cat": [(0, '{"x": 1}', ""), (1, "", "cat: /run/9.addr.json: No such file or directory\n"),
                (1, "", "cat: /run: Permission denied\n")],
    })
    jobs = await c.sacct(["104", "106"])
    assert jobs is not None and {j.job_id for j in jobs} >= {"104", "106"}
    assert t.calls[0][0][:6] == ("sacct", "-X", "-n", "-P", "-j", "104,106")
    assert await c.sacct(["104"]) is None
    assert await c.sacct([]) == []
    with pytest.raises(ValueError):
        await c.sacct(["1,2"])
    nodes = await c.sinfo("debug")
    assert [n.name for n in nodes] == ["gpu02"]
    assert t.calls[-1][0] == ("sinfo", "--json", "-p", "debug")
    assert await c.read_text("/run/9.addr.json") == '{"x": 1}'
    assert t.calls[-1][0] == ("cat", "--", "/run/9.addr.json")
    assert await c.read_text("/run/9.addr.json") is None
    with pytest.raises(SlurmError, match="Permission denied"):
        await c.read_text("/run/9.addr.json")


# --- recorded 22.05 output (tests/data/slurm/22.05/, recorded on the loopback cluster) -------------

RECORDED_FILES = sorted(p for p in RECORDED.glob("*") if p.name.startswith(("squeue", "sinfo", "sacct", "sbatch"))) \
    if RECORDED.is_dir() else []
needs_recording = pytest.mark.skipif(not (RECORDED / "squeue-all.json").exists(),
                                     reason="no recorded output in tests/data/slurm/22.05/")


@pytest.mark.skipif(not RECORDED_FILES, reason="no recorded output in tests/data/slurm/22.05/")
@pytest.mark.parametrize("path", RECORDED_FILES, ids=lambda p: p.name)
def test_every_recorded_file_parses(path: Path) -> None:
    """Whatever gets re-recorded later: every job's state is one the table knows."""
    text = path.read_text()
    if path.name.startswith("squeue") and path.suffix == ".json":
        jobs = parse_squeue_json(text)
        assert jobs
        for j in jobs:
            assert j.job_id.isdigit() and j.state in STATE_TABLE, j
            assert job_facts(j, 0, None, time.time()).state is not JobState.UNKNOWN
    elif path.name.startswith("squeue"):
        jobs = parse_squeue_text(text)
        assert jobs and all(j.state in STATE_TABLE for j in jobs)
    elif path.name.startswith("sinfo"):
        nodes = parse_sinfo_json(text)
        assert nodes and all(n.name and n.state for n in nodes)
    elif path.name.startswith("sacct"):
        assert all(j.state in STATE_TABLE for j in parse_sacct_text(text))
    else:
        assert parse_sbatch_parsable(text).isdigit()


def recorded_by_name(parse: Any, name: str) -> dict[str, SlurmJob]:
    return {j.name: j for j in parse((RECORDED / name).read_text())}


@needs_recording
def test_recorded_2205_squeue() -> None:
    """Job ids change with every recording; names are fixed by record.sh (see its README)."""
    jobs = recorded_by_name(parse_squeue_json, "squeue-all.json")
    running = jobs["chirond-llama-8b-7"]
    now = running.start_time
    assert now is not None
    facts = {name: job_facts(j, 0, None, now) for name, j in jobs.items()}
    assert {name: (j.state, j.user) for name, j in jobs.items() if name.startswith("chirond-")} == {
        "chirond-llama-8b-4": ("COMPLETED", USER), "chirond-llama-8b-5": ("FAILED", USER),
        "chirond-llama-8b-6": ("CANCELLED", USER), "chirond-llama-8b-7": ("RUNNING", USER),
        "chirond-llama-8b-8": ("PENDING", USER), "chirond-llama-70b-2": ("PENDING", USER),
    }
    assert facts["chirond-llama-8b-4"].detail == "COMPLETED: exit code 0"
    assert facts["chirond-llama-8b-5"].detail == "FAILED: exit code 3 (NonZeroExitCode)"
    assert facts["chirond-llama-8b-6"].detail == "CANCELLED: killed by SIGTERM"
    r = facts["chirond-llama-8b-7"]
    assert (r.state, r.started_at, r.ends_at, r.detail) == (JobState.RUNNING, now, now + 3600, "")
    assert running.comment.startswith("chirond:") and running.batch_host == "gpu01"
    assert facts["chirond-llama-8b-8"].detail == "ReqNodeNotAvail"
    assert facts["chirond-llama-70b-2"].state is JobState.PENDING
    assert facts["chirond-llama-70b-2"].detail.startswith("Resources")
    assert jobs["chirond-llama-8b-5"].time_limit_s == 1800 and jobs["chirond-llama-70b-2"].gres == "gres:gpu:a100:4"


@needs_recording
def test_recorded_2205_text_agrees_with_json() -> None:
    by_json = recorded_by_name(parse_squeue_json, "squeue-all.json")
    by_text = recorded_by_name(parse_squeue_text, "squeue-format.txt")
    assert set(by_text) == set(by_json)
    for name, t in by_text.items():
        j = by_json[name]
        assert (t.job_id, t.state, t.reason, t.time_limit_s, t.gres, t.nodes) == (
            j.job_id, j.state, j.reason, j.time_limit_s, j.gres, j.nodes), name


@needs_recording
def test_recorded_2205_sacct() -> None:
    jobs = recorded_by_name(parse_sacct_text, "sacct-c.txt")
    squeue = recorded_by_name(parse_squeue_json, "squeue-all.json")
    for name, j in jobs.items():
        assert (j.job_id, j.state, j.partition) == (squeue[name].job_id, squeue[name].state, "a100"), name
        assert j.start_time is not None
    if "chirond-llama-8b-5" in jobs:
        assert jobs["chirond-llama-8b-5"].exit_code == 3


@needs_recording
async def test_recorded_2205_through_the_cli() -> None:
    c, _, _ = cli({"squeue": [(0, (RECORDED / "squeue-all.json").read_text(), "")],
                   "sinfo": [(0, (RECORDED / "sinfo-drain.json").read_text(), "")],
                   "sbatch": [(0, (RECORDED / "sbatch-parsable.txt").read_text(), "")]})
    everything = parse_squeue_json((RECORDED / "squeue-all.json").read_text())
    ours = {j.job_id for j in everything if j.name.startswith("chirond-") and j.user == USER}
    assert ours and set((await c.squeue()).jobs) == ours
    nodes = {n.name: n for n in await c.sinfo("a100")}
    assert (nodes["gpu01"].state, nodes["gpu01"].gpus_free) == ("MIXED", 3)
    assert (nodes["gpu02"].flags, nodes["gpu02"].reason, nodes["gpu02"].gpus_free) == (
        ("DRAIN",), "chirond-test: recorded drain", 0)
    job_id = await c.sbatch("#!/bin/bash\n", ["--job-name=chirond-x-1"])
    assert job_id.isdigit() and job_id in {j.job_id for j in everything}
