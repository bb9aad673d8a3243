"""chirond.cluster.slurm_backend over a scripted Slurm that replays recorded 22.05 output
(tests/data/slurm/22.05/) and synthetic answers: what submit asks sbatch, how poll maps states and
treats a job missing from squeue, address files, cancel's TERM-then-scancel, free GPUs from sinfo;
the [backend.slurm] config (key-path errors, docs, the shipped example) and check-config's probe."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from chirond import config as cfgmod
from chirond.check_config import check_config_main
from chirond.cluster import slurm_parse as slurmmod
from chirond.cluster.backend import BackendError, JobState
from chirond.cluster.slurm_backend import UNKNOWN_FREE_GPUS, SlurmBackend, partition_problem
from chirond.cluster.slurm_cli import SlurmCli
from chirond.cluster.slurm_job import mem_option
from chirond.cluster.transport import CommandResult, TransportError
from chirond.config import SLURM_KEYS, ConfigError, SlurmBackendConfig, load_config
from tests.support import ROOT, Clock
from tests.support.slurm import (
    EMPTY_SQUEUE,
    REC,
    SLURM_BASE,
    T0,
    USER,
    FakeLocalSlurm,
    FakeSlurm,
    make_backend,
    spec,
    sq_job,
    squeue_json,
    started,
    write_slurm,
)


def addr_json(job_id: str, port: int = 20011, instance_id: int = 7) -> str:
    return json.dumps({"job_id": job_id, "instance_id": instance_id, "host": "127.0.0.1", "port": port,
                       "node": "gpu01", "started_at": T0 - 9})


async def submit_recorded(b: SlurmBackend, fake: FakeSlurm, clock: Clock) -> None:
    """Submit six instances that sbatch numbers as the recorded jobs 8-13."""
    fake.sbatch_ids("8", "9", "10", "11", "12", "13")
    for i, iid in enumerate((4, 5, 6, 7, 8, 2)):
        assert await b.submit(spec(iid, gpus=4 if i == 5 else 1)) == str(8 + i)
    clock.t += 1
    fake.default["squeue"] = (0, (REC / "squeue-all.json").read_text(), "")


# ---------------------------------------------------------------- submit


async def test_submit_renders_the_job_and_calls_sbatch_with_its_options(tmp_path: Path) -> None:
    b, fake, _ = await started(
        tmp_path, account="proj", qos="high", gres_type="a100", time_limit_s=3600, signal_before_end_s=90,
        cpus_per_task=4, mem_gb=64, python="/opt/venv/bin/python", site_hooks=("module load cuda/12",),
        extra_sbatch_args=("--constraint=nvlink",), port_range=(31000, 31999), bind_host="127.0.0.1",
        advertise_host="127.0.0.1",
    )
    fake.sbatch_ids("11")
    assert await b.submit(spec(7, gpus=2, env={"HF_HOME": "/srv/hf"})) == "11"

    ((argv, script),) = fake.calls[-1:]
    run_dir = tmp_path / "jobs"
    assert argv == (
        "sbatch", "--parsable", "--job-name=chirond-llama-8b-7", f"--comment=chirond:{b.daemon_id}:7",
        "--partition=a100", "--account=proj", "--qos=high", "--nodes=1", "--ntasks=1", "--cpus-per-task=4",
        "--mem=64G", "--gres=gpu:a100:2", "--time=60", "--signal=B:USR1@90",
        f"--output={run_dir}/chirond-llama-8b-7-%j.log", f"--chdir={run_dir}", "--no-requeue",
        "--constraint=nvlink",
    )  # fmt: skip
    assert script is not None
    text = script.decode()
    assert "\nmodule load cuda/12\n" in text
    assert "export HF_HOME=/srv/hf" in text
    assert "chirond_python=/opt/venv/bin/python" in text
    assert "chirond_port_min=31000" in text and "chirond_port_max=31999" in text
    assert "chirond_bind_host=127.0.0.1" in text and "chirond_advertise_host=127.0.0.1" in text
    # the simulated server's interpreter is the job's python; {port} is the script's
    assert '  /opt/venv/bin/python\n  -m\n  chirond\n  fake-vllm\n' in text
    assert '  --port\n  "$CHIROND_PORT"\n' in text
    assert sys.executable not in text


async def test_daemon_id_is_kept_in_the_state_dir(tmp_path: Path) -> None:
    b1, _, _ = await started(tmp_path)
    b2, _, _ = await started(tmp_path)
    assert b1.daemon_id is not None and re.fullmatch(r"[0-9a-f-]{36}", b1.daemon_id)
    assert b2.daemon_id == b1.daemon_id == (tmp_path / "state" / "daemon-id").read_text().strip()


async def test_gpus_flag_gpus_and_the_partition_default_time_limit(tmp_path: Path) -> None:
    b, fake, _ = await started(tmp_path, gpus_flag="gpus", gres_type="a100", mem_gb=1.5)
    fake.sbatch_ids("12")
    await b.submit(spec(3, gpus=1))
    argv = fake.argvs("sbatch")[0]
    assert "--gpus=a100:1" in argv and "--mem=1536M" in argv
    assert not [a for a in argv if a.startswith(("--time", "--gres", "--account"))]


async def test_sbatch_refusal_is_a_backend_error_with_slurms_message(tmp_path: Path) -> None:
    b, fake, _ = await started(tmp_path)
    fake.queued["sbatch"].append((1, "", "sbatch: error: Batch job submission failed: Invalid qos specification\n"))
    with pytest.raises(BackendError, match=r"instance 7: sbatch failed \(exit 1\): .*Invalid qos specification"):
        await b.submit(spec())
    assert await b.poll() == {}


async def test_bad_values_never_reach_sbatch(tmp_path: Path) -> None:
    b, fake, _ = await started(tmp_path)
    with pytest.raises(BackendError, match=r"instance 7: env: variable name '1X'"):
        await b.submit(spec(env={"1X": "y"}))
    b2, _, _ = make_backend(tmp_path)
    with pytest.raises(BackendError, match="not started"):
        await b2.submit(spec())
    assert fake.argvs("sbatch") == []


# ---------------------------------------------------------------- poll


async def test_poll_maps_the_recorded_states_and_reports_ends_twice(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    await submit_recorded(b, fake, clock)
    fake.queued["cat"].append((0, addr_json("11"), ""))

    f = await b.poll()
    assert {k: v.state for k, v in f.items()} == {
        "8": JobState.ENDED, "9": JobState.ENDED, "10": JobState.ENDED,
        "11": JobState.RUNNING, "12": JobState.PENDING, "13": JobState.PENDING,
    }  # fmt: skip
    assert f["8"].detail == "COMPLETED: exit code 0"
    assert f["9"].detail == "FAILED: exit code 3 (NonZeroExitCode)"
    assert f["10"].detail == "CANCELLED: killed by SIGTERM"
    assert f["12"].detail == "ReqNodeNotAvail"
    assert f["13"].detail.startswith("Resources (expected start in")
    r = f["11"]
    assert (r.instance_id, r.host, r.port, r.started_at, r.ends_at) == (7, "127.0.0.1", 20011, T0 - 9, T0 + 3591)
    assert fake.argvs("cat") == [("cat", "--", str(tmp_path / "jobs" / "11.addr.json"))]

    clock.t += 2.5
    f2 = await b.poll()
    assert set(f2) == set(f) and f2["9"] == f["9"]  # ended: reported a second time
    clock.t += 2.5
    f3 = await b.poll()
    assert set(f3) == {"11", "12", "13"}  # then forgotten
    assert f3["11"].port == 20011
    assert len(fake.argvs("squeue")) == 3 and len(fake.argvs("cat")) == 1  # the address is read once


async def test_one_squeue_per_interval_however_often_it_polls(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    await submit_recorded(b, fake, clock)
    for _ in range(5):
        await b.poll()
    assert len(fake.argvs("squeue")) == 1
    assert fake.argvs("squeue")[0][:5] == ("squeue", "--json", "-t", "all", "-u")


async def test_address_file_is_read_until_it_is_there(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    await submit_recorded(b, fake, clock)
    f = await b.poll()  # cat: no such file (the script has not written it yet)
    assert (f["11"].state, f["11"].host, f["11"].port) == (JobState.RUNNING, None, None)
    fake.queued["cat"].append((0, addr_json("999"), ""))  # a stale file naming another job: refused
    clock.t += 2.5
    assert (await b.poll())["11"].host is None
    fake.queued["cat"].append((0, addr_json("11", port=20999), ""))
    clock.t += 2.5
    assert (await b.poll())["11"].port == 20999
    assert len(fake.argvs("cat")) == 3


async def test_local_run_dir_is_read_directly_and_cleaned_when_the_job_is_forgotten(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path, fake=FakeLocalSlurm())
    fake.sbatch_ids("11")
    await b.submit(spec())
    running = json.loads((REC / "squeue-all.json").read_text())
    running["jobs"] = [j for j in running["jobs"] if j["job_id"] == 11]
    fake.default["squeue"] = (0, json.dumps(running), "")
    addr = tmp_path / "jobs" / "11.addr.json"
    addr.write_text(addr_json("11", port=20123))
    clock.t += 1
    assert (await b.poll())["11"].port == 20123
    assert fake.argvs("cat") == []

    running["jobs"][0]["job_state"] = "COMPLETED"
    fake.default["squeue"] = (0, json.dumps(running), "")
    clock.t += 2.5
    assert (await b.poll())["11"].state is JobState.ENDED
    assert addr.exists()
    clock.t += 2.5
    assert (await b.poll())["11"].state is JobState.ENDED  # the second report: then it is forgotten
    assert not addr.exists()
    clock.t += 2.5
    assert await b.poll() == {}


async def test_missing_job_is_unknown_then_ended_when_no_accounting_can_confirm(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    fake.sbatch_ids("11")
    await b.submit(spec())
    clock.t += 1
    f = await b.poll()
    assert (f["11"].state, f["11"].detail) == (JobState.UNKNOWN, "missing from squeue")
    clock.t += 1  # within the interval: the same (cached) answer, nothing new
    assert (await b.poll())["11"].state is JobState.UNKNOWN
    assert fake.argvs("sacct") == []
    clock.t += 1.5  # a second answer, 2.5 s after the first, misses it too: ask accounting
    f = await b.poll()
    assert f["11"].state is JobState.ENDED
    assert f["11"].detail.startswith("vanished from squeue")
    assert fake.argvs("sacct") == [("sacct", "-X", "-n", "-P", "-j", "11", "-o", slurmmod.SACCT_FIELDS)]
    clock.t += 2.5
    assert (await b.poll())["11"].state is JobState.ENDED
    clock.t += 2.5
    assert await b.poll() == {}
    assert len(fake.argvs("sacct")) == 1


async def test_missing_job_takes_its_end_from_accounting(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    fake.sbatch_ids("11")
    await b.submit(spec())
    fake.default["sacct"] = (0, "11|chirond-llama-8b-7|chirond-test|NODE_FAIL|0:9|2026-11-21T07:33:11|"
                                "2026-11-21T07:40:00|gpu01\n", "")
    for _ in range(2):
        clock.t += 2.5
        f = await b.poll()
    assert (f["11"].state, f["11"].detail) == (JobState.ENDED, "NODE_FAIL: killed by SIGKILL")


async def test_job_back_in_squeue_starts_the_count_again(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    await submit_recorded(b, fake, clock)
    recorded = fake.default["squeue"]
    fake.queued["squeue"] += [(0, EMPTY_SQUEUE, ""), recorded, (0, EMPTY_SQUEUE, "")]
    states = []
    for _ in range(3):
        states.append((await b.poll())["12"].state)
        clock.t += 2.5
    assert states == [JobState.UNKNOWN, JobState.PENDING, JobState.UNKNOWN]
    assert fake.argvs("sacct") == []


async def test_answer_from_before_the_submission_reports_it_submitted(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    assert await b.poll() == {}  # squeue answered at T0, cached for 2 s
    clock.t += 0.5
    fake.sbatch_ids("11")
    await b.submit(spec())
    f = await b.poll()
    assert (f["11"].state, f["11"].detail) == (JobState.PENDING, "submitted")
    assert len(fake.argvs("squeue")) == 1


async def test_squeue_failure_leaves_every_job_unknown(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    await submit_recorded(b, fake, clock)
    await b.poll()
    fake.queued["squeue"].append((1, "", "squeue: error: Unable to contact slurm controller\n"))
    clock.t += 2.5
    f = await b.poll()
    assert f["11"].state is JobState.UNKNOWN and "Unable to contact slurm controller" in f["11"].detail
    assert f["9"].state is JobState.ENDED  # known ended: still reported as such


# ---------------------------------------------------------------- cancel and stop


async def test_cancel_terms_the_batch_shell_then_scancels_after_the_grace(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    await submit_recorded(b, fake, clock)
    await b.poll()  # 11 running, 12 pending
    await b.cancel("11", 10.0)
    assert fake.argvs("scancel") == [("scancel", "--signal=TERM", "--batch", "11")]
    clock.t += 5
    await b.poll()
    assert len(fake.argvs("scancel")) == 1
    await b.cancel("11", 10.0)  # a repeat does not push the deadline back nor signal again
    clock.t += 5.5
    await b.poll()
    assert fake.argvs("scancel")[1:] == [("scancel", "11")]
    clock.t += 30
    await b.poll()
    assert len(fake.argvs("scancel")) == 2


async def test_cancel_of_a_pending_or_unsignalable_job_is_a_plain_scancel(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    await submit_recorded(b, fake, clock)
    fake.queued["cat"].append((0, addr_json("11"), ""))
    await b.poll()
    await b.cancel("12", 10.0)
    assert fake.argvs("scancel") == [("scancel", "12")]
    fake.queued["scancel"].append(
        (228, "", "scancel: error: Kill job error on job id 11: Job can not be altered now, try again later\n"))
    await b.cancel("11", 10.0)
    assert fake.argvs("scancel")[1:] == [("scancel", "--signal=TERM", "--batch", "11"), ("scancel", "11")]
    await b.cancel("9", 10.0)  # ended
    await b.cancel("4242", 10.0)  # not ours
    assert len(fake.argvs("scancel")) == 3


async def test_stop_cancels_live_jobs_unless_told_to_keep_them(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path)
    await submit_recorded(b, fake, clock)
    await b.poll()
    await b.stop()
    assert sorted(fake.argvs("scancel")) == [("scancel", "11"), ("scancel", "12"), ("scancel", "13")]

    k, kfake, kclock = await started(tmp_path / "keep", keep_jobs_on_stop=True)
    await submit_recorded(k, kfake, kclock)
    await k.poll()
    await k.stop()
    assert kfake.argvs("scancel") == []


# ---------------------------------------------------------------- free GPUs and the partition


async def test_free_gpus_from_sinfo_less_our_queued_jobs(tmp_path: Path) -> None:
    b, fake, clock = make_backend(tmp_path)
    assert b.free_gpus() == UNKNOWN_FREE_GPUS
    await b.start()
    # gpu01: 4 GPUs, 1 used; gpu02 drained: 0
    assert b.free_gpus() == 3
    assert fake.argvs("sinfo") == [("sinfo", "--json", "-p", "a100")]
    fake.sbatch_ids("12")
    await b.submit(spec(8))  # queued: about to take one
    assert b.free_gpus() == 2
    clock.t += 1
    await b.poll()
    assert len(fake.argvs("sinfo")) == 1  # refreshed at most every SINFO_INTERVAL_S


async def test_free_gpus_counts_our_running_jobs_once_sinfo_has_seen_them(tmp_path: Path) -> None:
    fake = FakeSlurm()
    sinfo = json.loads((REC / "sinfo-drain.json").read_text())
    sinfo["nodes"][1]["state_flags"] = []  # gpu02 back: 4 + 3 GPUs free
    fake.default["sinfo"] = (0, json.dumps(sinfo), "")
    b, _, clock = await started(tmp_path, fake=fake)
    assert b.free_gpus() == 7
    await submit_recorded(b, fake, clock)  # 11 running (1 GPU), 12 and 13 pending (1 + 4); 8-10 end
    await b.poll()
    assert b.free_gpus() == 7 - 6  # none of them was in that sinfo
    clock.t += 10
    await b.poll()  # a new sinfo, taken while 11 runs: its GPU is in gres_used
    assert len(fake.argvs("sinfo")) == 2
    assert b.free_gpus() == 7 - 5


async def test_start_refuses_an_unknown_partition_and_tolerates_a_silent_sinfo(tmp_path: Path) -> None:
    b, _, _ = make_backend(tmp_path, partition="h100")
    with pytest.raises(BackendError, match=r"backend.slurm.partition: no partition 'h100' .*sinfo lists: a100"):
        await b.start()
    b2, fake2, _ = make_backend(tmp_path)
    fake2.queued["sinfo"].append((1, "", "sinfo: error: Unable to contact slurm controller\n"))
    await b2.start()
    assert b2.free_gpus() == UNKNOWN_FREE_GPUS


def test_partition_problem_and_mem_option() -> None:
    nodes = slurmmod.parse_sinfo_json((REC / "sinfo-drain.json").read_text())
    assert partition_problem(nodes, "a100") is None
    assert partition_problem(nodes, "gpu") == "no partition 'gpu' in this cluster (sinfo lists: a100)"
    assert partition_problem([], "gpu") == "no partition 'gpu' in this cluster (sinfo lists: none)"
    assert (mem_option(None), mem_option(64), mem_option(64.0), mem_option(0.5)) == ("", "64G", "64G", "512M")


# ---------------------------------------------------------------- [backend.slurm] in the config file

def test_slurm_config_defaults_and_values(tmp_path: Path) -> None:
    cfg = load_config(write_slurm(tmp_path))
    assert cfg.daemon.backend == "slurm"
    assert cfg.slurm == SlurmBackendConfig(partition="a100")
    assert cfg.slurm.python == sys.executable
    extra = """account = "proj"
gres_type = "a100"
gpus_flag = "gpus"
time_limit_s = 7200
signal_before_end_s = 300
cpus_per_task = 8
mem_gb = 64
run_dir = "jobs"
site_hooks = ["module load cuda", "source /opt/venv/bin/activate"]
port_range = [31000, 31999]
bind_host = "127.0.0.1"
advertise_host = "127.0.0.1"
squeue_min_interval_s = 0.5
extra_sbatch_args = ["--constraint=nvlink"]
keep_jobs_on_stop = true"""
    s = load_config(write_slurm(tmp_path, extra)).slurm
    assert s is not None
    assert (s.account, s.gres_type, s.gpus_flag, s.time_limit_s, s.signal_before_end_s) == (
        "proj", "a100", "gpus", 7200.0, 300)
    assert (s.cpus_per_task, s.mem_gb, s.run_dir) == (8, 64.0, tmp_path.resolve() / "jobs")
    assert s.site_hooks == ("module load cuda", "source /opt/venv/bin/activate")
    assert (s.port_range, s.bind_host, s.squeue_min_interval_s, s.keep_jobs_on_stop) == (
        (31000, 31999), "127.0.0.1", 0.5, True)
    assert s.extra_sbatch_args == ("--constraint=nvlink",)


def test_slurm_backend_does_not_count_local_gpus(tmp_path: Path) -> None:
    """backend.local.gpus bounds local instances only: 2 x 8-GPU instances are fine on Slurm."""
    text = SLURM_BASE.replace("llama-3.1-8b_a100-80gb_tp1", "llama-3.1-70b_a100-80gb_tp8")
    cfg = load_config(write_slurm(tmp_path, "[backend.local]\ngpus = 1", text))
    assert cfg.models["m"].initial_instances == 2


SLURM_BAD: list[tuple[str, str, str]] = [  # (line added to [backend.slurm], key path, reason fragment)
    ('partition = "a 100"', "backend.slurm.partition", "Slurm name"),
    ('account = "x;y"', "backend.slurm.account", "Slurm name"),
    ("gres_type = 5", "backend.slurm.gres_type", "must be a string, got 5"),
    ('partition = ""', "backend.slurm.partition", "required"),
    ('gpus_flag = "gpu"', "backend.slurm.gpus_flag", "one of gres, gpus"),
    ("time_limit_s = 0", "backend.slurm.time_limit_s", "positive number"),
    ("signal_before_end_s = 0", "backend.slurm.signal_before_end_s", "integer in 1..65535"),
    ("signal_before_end_s = 1.5", "backend.slurm.signal_before_end_s", "integer"),
    ("cpus_per_task = 0", "backend.slurm.cpus_per_task", "integer >= 1"),
    ("mem_gb = -1", "backend.slurm.mem_gb", "positive number"),
    ('run_dir = "/shared/%u"', "backend.slurm.run_dir", "must not contain '%'"),
    ("python = 3", "backend.slurm.python", "non-empty string"),
    ('site_hooks = ["ok", "a\\nb"]', "backend.slurm.site_hooks[1]", "one line"),
    ("site_hooks = \"module load cuda\"", "backend.slurm.site_hooks", "array of strings"),
    ("port_range = [80, 90]", "backend.slurm.port_range", "1024 <= lo <= hi"),
    ('bind_host = "a b"', "backend.slurm.bind_host", "host name or address"),
    ('advertise_host = "$(hostname)"', "backend.slurm.advertise_host", "host name or address"),
    ("squeue_min_interval_s = 0", "backend.slurm.squeue_min_interval_s", "positive number"),
    ("command_timeout_s = -5", "backend.slurm.command_timeout_s", "positive number"),
    ('user = "-u"', "backend.slurm.user", "user name"),
    ('extra_sbatch_args = ["--exclusive", "-w gpu01"]', "backend.slurm.extra_sbatch_args[1]", "long option"),
    ('keep_jobs_on_stop = "yes"', "backend.slurm.keep_jobs_on_stop", "true or false, got 'yes'"),
    ("partitions = 1", "backend.slurm.partitions", "unknown key (valid: partition, account"),
]


@pytest.mark.parametrize(("extra", "key", "reason"), SLURM_BAD, ids=[b[1] + ":" + b[0][:12] for b in SLURM_BAD])
def test_bad_slurm_config_names_the_key(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    base = SLURM_BASE.replace('partition = "a100"\n', "") if extra.startswith("partition ") else SLURM_BASE
    path = write_slurm(tmp_path, extra, base)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert reason in msg, msg


@pytest.mark.parametrize(("text", "key", "reason"), [
    (SLURM_BASE.replace('partition = "a100"\n', ""), "backend.slurm.partition", "required"),
    (SLURM_BASE.replace('[backend.slurm]\npartition = "a100"\n', ""), "backend.slurm",
     'required when daemon.backend = "slurm"'),
])
def test_slurm_backend_needs_its_table_and_partition(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write_slurm(tmp_path, "", text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {key}: {reason}")):
        load_config(path)


def test_docs_and_the_shipped_example_cover_every_slurm_key(tmp_path: Path) -> None:
    docs = (ROOT / "docs" / "config.md").read_text()
    assert "## `[backend.slurm]`" in docs
    for key in SLURM_KEYS:
        assert f"`{key}`" in docs, key
    # etc/chirond.toml carries the section commented out; uncommented, it is valid and complete.
    text = (ROOT / "etc" / "chirond.toml").read_text()
    block = text.split("# [backend.slurm]\n", 1)[1].split("\n\n# (end of [backend.slurm])", 1)[0]
    settings = "\n".join(line[2:] for line in block.splitlines() if re.match(r"# [a-z_]+ = ", line))
    doc = tomllib.loads(settings)
    assert set(doc) == set(SLURM_KEYS)
    site = text.replace('backend = "local"', 'backend = "slurm"').replace('"/etc/chirond/keys"', '"keys"')
    site = site.replace("# [backend.slurm]\n", "[backend.slurm]\n" + settings + "\n", 1)
    site = site.replace('run_dir = "/shared/chirond/jobs"', f'run_dir = "{tmp_path}/jobs"')
    (tmp_path / "keys").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "chirond.toml").write_text(site)
    cfg = load_config(tmp_path / "chirond.toml")
    assert cfg.slurm is not None and cfg.slurm.partition == doc["partition"]


# ---------------------------------------------------------------- chirond check-config asks sinfo


def fake_local_transport(monkeypatch: pytest.MonkeyPatch, answer: tuple[int, str, str] | None) -> None:
    class Fake:
        def __init__(self, env: Any = None) -> None:
            pass

        async def run(self, argv: Sequence[str], timeout_s: float, input: bytes | None = None) -> CommandResult:
            if answer is None:
                raise TransportError(f"cannot run {argv[0]!r}: [Errno 2] No such file or directory")
            return CommandResult(tuple(argv), *answer, 0.01)

    monkeypatch.setattr("chirond.cluster.slurm_check.LocalTransport", Fake)


def test_check_config_probes_the_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    sinfo = (0, (REC / "sinfo-drain.json").read_text(), "")
    fake_local_transport(monkeypatch, sinfo)
    assert check_config_main(argparse.Namespace(config=str(write_slurm(tmp_path)))) == 0
    out = capsys.readouterr().out
    assert "backend  slurm: partition a100" in out
    assert "partition a100: 1 of 2 node(s) usable, 3 of 8 GPUs free" in out

    path = write_slurm(tmp_path, "", SLURM_BASE.replace('"a100"', '"h100"'))
    assert check_config_main(argparse.Namespace(config=str(path))) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: backend.slurm.partition: no partition 'h100' in this cluster (sinfo lists: a100)" in err

    big = SLURM_BASE.replace("llama-3.1-8b_a100-80gb_tp1", "llama-3.1-70b_a100-80gb_tp8")
    assert check_config_main(argparse.Namespace(config=str(write_slurm(tmp_path, "", big)))) == 2
    assert "models.m.profile: llama-3.1-70b_a100-80gb_tp8 needs 8 GPUs per instance; the largest node" \
        in capsys.readouterr().err


def test_check_config_without_slurm_commands_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake_local_transport(monkeypatch, None)
    assert check_config_main(argparse.Namespace(config=str(write_slurm(tmp_path)))) == 2
    err = capsys.readouterr().err
    assert "backend.slurm: cannot ask Slurm about the partition: cannot run 'sinfo'" in err
    assert "installed on this machine" in err


def test_daemon_builds_the_backend_its_config_names(tmp_path: Path) -> None:
    from chirond.cluster.local import LocalBackend
    from chirond.cluster.wiring import build_backend

    def daemon_backend(cfg: cfgmod.Config) -> object:
        return build_backend(cfg)[0]

    cfg = load_config(write_slurm(tmp_path))
    b = daemon_backend(cfg)
    assert isinstance(b, SlurmBackend) and b.run_dir == tmp_path.resolve() / "state" / "jobs"
    local = cfgmod.load_config(write_slurm(tmp_path, "", SLURM_BASE.replace('backend = "slurm"', "")))
    assert isinstance(daemon_backend(local), LocalBackend)


# ---------------------------------------------------------------- adopt (restarts)

async def test_adopt_takes_ours_cancels_our_orphans_and_leaves_every_other_job_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b, fake, clock = await started(tmp_path)
    me = b.daemon_id
    other = "0b7c6f7e-1111-4222-8333-944455556666"
    fake.queued["squeue"].append(squeue_json(
        sq_job(20, "chirond-llama-8b-3", f"chirond:{me}:3", "PENDING"),  # duplicate of 21 (pending: 21 is kept)
        sq_job(21, "chirond-llama-8b-3", f"chirond:{me}:3"),  # ours, running: adopted
        sq_job(22, "chirond-llama-8b-5", f"chirond:{me}:5", "PENDING"),  # ours, pending: adopted
        sq_job(23, "chirond-llama-8b-5", f"chirond:{me}:5", "PENDING"),  # newer duplicate of 22: cancelled
        sq_job(24, "chirond-old-model-4", f"chirond:{me}:4"),  # model no longer configured: cancelled
        sq_job(25, "chirond-llama-8b-6", f"chirond:{other}:6"),  # another chirond's: left alone
        sq_job(26, "chirond-llama-8b-7", ""),  # no tag: left alone
        sq_job(27, "chirond-llama-8b-8", "chirond:not a tag"),  # no parseable tag: left alone
        sq_job(28, "chirond-llama-8b-9", f"chirond:{me}:9", "COMPLETED"),  # ended: nothing to do
        sq_job(29, "chirond-llama-8b-10", f"chirond:{me}:11"),  # name and tag disagree: cancelled
        sq_job(30, "chirond-llama-8b-12", f"chirond:{me}:12", "COMPLETING"),  # ending: nothing to do
        {**sq_job(31, "chirond-llama-8b-13", f"chirond:{me}:13"), "user_name": "someone-else"},  # not this user
    ))  # fmt: skip
    fake.queued["cat"].append((0, addr_json("21", port=20021, instance_id=3), ""))

    adopted = await b.adopt(["llama-8b", "qwen-7b"])
    assert [(a.job_id, a.instance_id, a.model, a.state, a.host, a.port) for a in adopted] == [
        ("21", 3, "llama-8b", JobState.RUNNING, "127.0.0.1", 20021),
        ("22", 5, "llama-8b", JobState.PENDING, None, None),
    ]
    assert sorted(fake.argvs("scancel")) == [("scancel", "20"), ("scancel", "23"), ("scancel", "24"),
                                             ("scancel", "29")]
    assert len(fake.argvs("squeue")) == 1
    text = caplog.text
    assert f"job 25 (chirond-llama-8b-6) belongs to another chirond (daemon id {other})" in text
    assert "job 24 (chirond-old-model-4) is an orphan of this daemon: model 'old-model' is no longer configured" in text
    assert "a second job for instance 3 (job 21 is adopted)" in text

    # From now on the adopted jobs are the backend's own: polled, and cancelled on stop.
    clock.t += 2.5
    fake.default["squeue"] = squeue_json(sq_job(21, "chirond-llama-8b-3", f"chirond:{me}:3"),
                                         sq_job(22, "chirond-llama-8b-5", f"chirond:{me}:5", "PENDING"))
    f = await b.poll()
    assert (f["21"].state, f["21"].instance_id, f["21"].port) == (JobState.RUNNING, 3, 20021)
    assert (f["22"].state, f["22"].instance_id) == (JobState.PENDING, 5)
    fake.calls.clear()
    await b.stop()
    cancelled = {a[1] for a in fake.argvs("scancel")}
    assert {"21", "22"} <= cancelled and not cancelled & {"25", "26", "27", "28", "30", "31"}


async def test_adopt_with_nothing_left_and_two_models_sharing_a_job_name(tmp_path: Path) -> None:
    b, fake, _ = await started(tmp_path)
    assert await b.adopt(["llama-8b"]) == [] and fake.argvs("scancel") == []

    c, cfake, _ = await started(tmp_path / "c")
    cfake.queued["squeue"].append(squeue_json(sq_job(40, "chirond-org-m-1", f"chirond:{c.daemon_id}:1")))
    assert await c.adopt(["org/m", "org-m"]) == []  # which one it serves cannot be told: cancelled
    assert cfake.argvs("scancel") == [("scancel", "40")]


async def test_adopt_asks_again_then_refuses_to_guess_when_squeue_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chirond.cluster import slurm_backend

    monkeypatch.setattr(slurm_backend, "ADOPT_RETRY_S", 0.0)
    down = (1, "", "squeue: error: Unable to contact slurm controller\n")
    b, fake, _ = await started(tmp_path)
    fake.queued["squeue"] += [down, down]
    assert await b.adopt(["llama-8b"]) == []  # the third answer came
    c, cfake, _ = await started(tmp_path / "c")
    cfake.queued["squeue"] += [down, down, down]
    with pytest.raises(BackendError, match="cannot tell which jobs an earlier run left"):
        await c.adopt(["llama-8b"])
    assert cfake.argvs("scancel") == [] and cfake.argvs("sbatch") == [] and len(cfake.argvs("squeue")) == 3


async def test_local_backend_adopts_nothing(tmp_path: Path) -> None:
    from chirond.cluster.local import LocalBackend
    from chirond.config import LocalBackendConfig

    assert await LocalBackend(LocalBackendConfig(), tmp_path).adopt(["m"]) == []


DAEMON_TOML = """
[daemon]
backend = "slurm"
state_dir = "state"
listen_host = "127.0.0.1"
policy = "static"
tick_s = 60
[api]
auth = "open"
[backend.slurm]
partition = "a100"
[models.m]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = { ttft_s = 1.0, tpot_s = 0.1 }
min_instances = 3
max_instances = 3
"""


async def test_daemon_counts_adopted_jobs_and_submits_only_what_is_missing(tmp_path: Path) -> None:
    from chirond.daemon import Daemon

    path = tmp_path / "chirond.toml"
    path.write_text(DAEMON_TOML)
    cfg = load_config(path)
    cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, listen_port=0))
    assert cfg.slurm is not None
    fake, clock = FakeSlurm(), Clock(T0)
    cli = SlurmCli(fake, USER, min_squeue_interval_s=2.0, clock=clock, wall_clock=clock)
    b = SlurmBackend(cfg.slurm, cfg.daemon.state_dir, cli=cli, clock=clock)
    await b.start()  # makes the daemon id (Daemon.start starts it again: the id is kept)
    me = b.daemon_id
    fake.queued["squeue"].append(squeue_json(sq_job(50, "chirond-m-7", f"chirond:{me}:7"),
                                             sq_job(51, "chirond-m-2", f"chirond:{me}:2", "PENDING")))
    fake.sbatch_ids("60")
    d = Daemon(cfg, backend=b)
    await d.start()
    try:
        assert {i: x.job_id for i, x in d.instances.items()} == {7: "50", 2: "51", 8: "60"}
        assert d.instances[7].job_state is JobState.RUNNING and d.instances[2].job_state is JobState.PENDING
        assert len(fake.argvs("sbatch")) == 1  # 3 wanted, 2 adopted
        assert "--job-name=chirond-m-8" in fake.argvs("sbatch")[0]
    finally:
        await d.stop()


def test_ssh_config_routes_slurm_commands_over_ssh(tmp_path: Path) -> None:
    from chirond.cluster.slurm_backend import SlurmBackend
    from chirond.cluster.ssh import SshTransport
    from chirond.cluster.transport import LocalTransport
    from chirond.config import SlurmBackendConfig, SshConfig

    ssh = SshConfig(host="login1", key_file=tmp_path / "k", known_hosts=tmp_path / "kh", user="svc")
    over_ssh = SlurmBackend(SlurmBackendConfig(partition="a100", ssh=ssh), tmp_path, ssh=SshTransport(ssh))
    assert isinstance(over_ssh.ssh, SshTransport)
    assert over_ssh._cli.transport is over_ssh.ssh and over_ssh._cli.user == "svc"
    local = SlurmBackend(SlurmBackendConfig(partition="a100"), tmp_path)
    assert local.ssh is None and isinstance(local._cli.transport, LocalTransport)


def test_wiring_builds_the_backend_and_hands_out_its_ssh_transport(tmp_path: Path) -> None:
    """build_backend makes the SSH transport once, runs Slurm's commands over it and returns it to
    the caller (the daemon scrapes and tunnels through it); no [backend.slurm.ssh]: none."""
    from chirond.cluster.local import LocalBackend
    from chirond.cluster.ssh import SshTransport
    from chirond.cluster.transport import LocalTransport
    from chirond.cluster.wiring import build_backend

    cfg = load_config(write_slurm(tmp_path))
    b, ssh = build_backend(cfg)
    assert isinstance(b, SlurmBackend) and ssh is None and isinstance(b._cli.transport, LocalTransport)
    assert b.run_dir == tmp_path.resolve() / "state" / "jobs"

    (tmp_path / "k").write_text("key")
    (tmp_path / "kh").write_text("[login1]:22 ssh-ed25519 AAAA\n")
    ssh_table = '[backend.slurm.ssh]\nhost = "login1"\nkey_file = "k"\nknown_hosts = "kh"\nuser = "svc"\n'
    cfg = load_config(write_slurm(tmp_path, "", SLURM_BASE + ssh_table))
    b, ssh = build_backend(cfg)
    assert isinstance(b, SlurmBackend) and isinstance(ssh, SshTransport)
    assert b._cli.transport is ssh and b.ssh is ssh and b._cli.user == "svc"

    local = load_config(write_slurm(tmp_path, "", SLURM_BASE.replace('backend = "slurm"', "")))
    b, ssh = build_backend(local)
    assert isinstance(b, LocalBackend) and ssh is None
