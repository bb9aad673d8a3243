"""check-config's look at [backend.slurm] before anything is submitted (chirond.cluster.slurm_check):
a custom job template (placeholders, `bash -n`), the account (`sacctmgr`), and Slurm's verdict on a
sample job per model (`sbatch --test-only`), over a scripted Slurm; and the backend refusing a bad
template at start-up, and using a good one."""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from chirond.check_config import check_config_main
from chirond.cluster.backend import BackendError
from chirond.cluster.jobtemplate import TEMPLATE_PATH
from chirond.cluster.slurm_check import refusal_key, template_problem
from chirond.cluster.slurm_cli import SlurmCli
from chirond.cluster.transport import CommandResult, SlurmError
from chirond.config import SlurmBackendConfig
from tests.support.slurm import REC, FakeSlurm, spec, started, write_slurm

OK_TEST = (
    0,
    "",
    "sbatch: Job 77 to start at 2026-11-21T08:00:00 using 1 processors on nodes gpu01 in partition a100\n",
)
NO_DBD = (1, "", "You are not running a supported accounting_storage plugin\nOnly 'accounting_storage/slurmdbd' is "
          "supported.\n")  # fmt: skip


def template(tmp_path: Path, name: str, text: str) -> SlurmBackendConfig:
    (tmp_path / name).write_text(text)
    return SlurmBackendConfig(partition="a100", template=tmp_path / name)


def test_template_problems_name_the_key_and_the_cause(tmp_path: Path) -> None:
    shipped = TEMPLATE_PATH.read_text()
    run_dir = tmp_path / "jobs"
    assert template_problem(SlurmBackendConfig(partition="a100"), run_dir) is None  # the shipped one
    assert template_problem(template(tmp_path, "copy.sbatch", shipped), run_dir) is None
    p = template_problem(template(tmp_path, "a.sbatch", shipped.replace("@@ENGINE_ARGV@@", "")), run_dir)
    assert p == f"backend.slurm.template: {tmp_path}/a.sbatch: lacks placeholder(s) @@ENGINE_ARGV@@"
    p = template_problem(template(tmp_path, "b.sbatch", shipped + "\n# @@GPU_COUNT@@\n"), run_dir)
    assert p == f"backend.slurm.template: {tmp_path}/b.sbatch: unknown placeholder @@GPU_COUNT@@"
    p = template_problem(template(tmp_path, "c.sbatch", shipped.replace("\nset -u\n", "\nset -u\nfi\n")), run_dir)
    assert p is not None and p.startswith(f"backend.slurm.template: {tmp_path}/c.sbatch: the rendered script is not "
                                          "valid bash: line ")  # fmt: skip
    assert "syntax error near unexpected token `fi'" in p
    gone = SlurmBackendConfig(partition="a100", template=tmp_path / "gone.sbatch")
    assert (template_problem(gone, run_dir) or "").startswith(f"backend.slurm.template: cannot read {tmp_path}")


def test_refusals_point_at_the_key() -> None:
    assert refusal_key("Invalid account or account/partition combination specified") == "backend.slurm.account"
    assert refusal_key("Invalid qos specification") == "backend.slurm.qos"
    assert refusal_key("Requested reservation is invalid") == "backend.slurm.reservation"
    assert refusal_key("invalid partition specified: h100") == "backend.slurm.partition"
    assert (
        refusal_key("Requested time limit is invalid (missing or exceeds some limit)") == "backend.slurm.time_limit_s"
    )
    assert refusal_key("Requested node configuration is not available") == "backend.slurm.gres_type"
    assert refusal_key("something new") == "backend.slurm"


async def test_sbatch_test_only_and_sacctmgr_through_the_cli() -> None:
    fake = FakeSlurm()
    cli = SlurmCli(fake, "u")
    fake.queued["sbatch"] += [
        OK_TEST,
        (1, "", "sbatch: error: Batch job submission failed: Invalid qos specification\n"),
    ]
    assert await cli.sbatch_test("#!/bin/bash\n", ["--partition=a100"]) == (
        "Job 77 to start at 2026-11-21T08:00:00 using 1 processors on nodes gpu01 in partition a100"
    )
    assert fake.calls[-1] == (("sbatch", "--test-only", "--partition=a100"), b"#!/bin/bash\n")
    with pytest.raises(SlurmError, match="Invalid qos specification"):
        await cli.sbatch_test("#!/bin/bash\n", ["--qos=x"])
    with pytest.raises(ValueError):
        await cli.sbatch_test("#!/bin/bash\n", ["script.sh"])

    fake.queued["sacctmgr"] += [
        (0, "proj\n", ""),
        (0, "", ""),
        NO_DBD,
        (1, "", "sacctmgr: error: Problem talking to the database: Connection refused\n"),
    ]
    assert await cli.account_exists("Proj") is True
    assert await cli.account_exists("nope") is False
    assert await cli.account_exists("proj") is None  # no accounting database to ask
    with pytest.raises(SlurmError, match="Connection refused"):
        await cli.account_exists("proj")
    assert fake.argvs("sacctmgr")[0] == ("sacctmgr", "-n", "-P", "show", "account", "Proj", "format=Account")
    with pytest.raises(ValueError):
        await cli.account_exists("a b")


class ScriptedLocal:
    """Stands in for LocalTransport in check-config: answers by command name, records the calls."""

    answers: ClassVar[dict[str, list[tuple[int, str, str]]]] = defaultdict(list)
    calls: ClassVar[list[tuple[str, ...]]] = []

    def __init__(self, env: object = None) -> None:
        pass

    async def run(self, argv: Sequence[str], timeout_s: float, input: bytes | None = None) -> CommandResult:
        ScriptedLocal.calls.append(tuple(argv))
        q = ScriptedLocal.answers[argv[0]]
        return CommandResult(tuple(argv), *(q.pop(0) if q else (1, "", f"{argv[0]}: unexpected")), 0.01)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedLocal]:
    monkeypatch.setattr("chirond.cluster.slurm_check.LocalTransport", ScriptedLocal)
    ScriptedLocal.answers = defaultdict(list)
    ScriptedLocal.calls = []
    return ScriptedLocal


def check(path: Path) -> int:
    return check_config_main(argparse.Namespace(config=str(path)))


def test_check_config_asks_slurm_about_the_account_and_a_sample_job(
    tmp_path: Path, scripted: type[ScriptedLocal], capsys: pytest.CaptureFixture[str]
) -> None:
    sinfo = (0, (REC / "sinfo-drain.json").read_text(), "")
    # Good: the account exists, Slurm would take the job.
    scripted.answers.update(sinfo=[sinfo], sacctmgr=[(0, "proj\n", "")], sbatch=[OK_TEST])
    assert check(write_slurm(tmp_path, 'account = "proj"')) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "account proj exists" in out and "model m: sbatch --test-only accepts its job (Job 77 to start" in out
    (argv,) = [c for c in scripted.calls if c[0] == "sbatch"]
    assert argv[:2] == ("sbatch", "--test-only") and "--account=proj" in argv and "--job-name=chirond-m-0" in argv

    # An account accounting does not know: refused before sbatch is asked.
    scripted.answers.update(sinfo=[sinfo], sacctmgr=[(0, "", "")], sbatch=[OK_TEST])
    path = write_slurm(tmp_path, 'account = "nope"')
    assert check(path) == 2
    assert (f"error: {path}: backend.slurm.account: no account 'nope' in Slurm's accounting database "
            "(sacctmgr show account nope lists nothing)") in capsys.readouterr().err  # fmt: skip

    # No accounting database (sacctmgr cannot say): sbatch --test-only judges; a site that requires
    # an account refuses the job without one.
    refusal = (1, "", "sbatch: error: Batch job submission failed: Invalid account or account/partition "
               "combination specified\n")  # fmt: skip
    scripted.answers.update(sinfo=[sinfo], sbatch=[refusal])
    assert check(path := write_slurm(tmp_path)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"error: {path}: backend.slurm.account: Slurm refuses a job for model 'm' (sbatch --test-only, nothing "
            "submitted): sbatch: error: Batch job submission failed: Invalid account or account/partition "
            "combination specified") in err  # fmt: skip
    scripted.answers.update(sinfo=[sinfo], sacctmgr=[NO_DBD], sbatch=[OK_TEST])
    assert check(write_slurm(tmp_path, 'account = "proj"')) == 0
    assert "account proj not checked (no accounting database here" in " ".join(capsys.readouterr().out.split())
    # Nothing was ever submitted.
    assert all(c[:2] == ("sbatch", "--test-only") for c in scripted.calls if c[0] == "sbatch")


def test_check_config_refuses_a_bad_template_before_asking_slurm(
    tmp_path: Path, scripted: type[ScriptedLocal], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.sbatch").write_text(TEMPLATE_PATH.read_text().replace("@@SITE_HOOKS@@", ""))
    scripted.answers.update(sinfo=[(0, (REC / "sinfo-drain.json").read_text(), "")], sbatch=[OK_TEST])
    path = write_slurm(tmp_path, 'template = "t.sbatch"')
    assert check(path) == 2
    assert (f"error: {path}: backend.slurm.template: {tmp_path}/t.sbatch: lacks placeholder(s) @@SITE_HOOKS@@"
            in capsys.readouterr().err)  # fmt: skip
    assert [c[0] for c in scripted.calls] == ["sinfo"]
    path = write_slurm(tmp_path, 'template = "missing.sbatch"')
    assert check(path) == 2
    assert "backend.slurm.template: no such file: " in capsys.readouterr().err


async def test_backend_start_refuses_a_bad_template_and_submits_with_a_good_one(tmp_path: Path) -> None:
    shipped = TEMPLATE_PATH.read_text()
    (tmp_path / "bad.sbatch").write_text(shipped.replace("@@RUN_DIR@@", "/tmp"))
    with pytest.raises(BackendError, match=r"backend.slurm.template: .*bad.sbatch: lacks placeholder\(s\) @@RUN_DIR@@"):
        await started(tmp_path, template=tmp_path / "bad.sbatch")
    (tmp_path / "own.sbatch").write_text(shipped.replace("#!/bin/bash\n", "#!/bin/bash\n# site copy\n", 1))
    b, fake, _ = await started(tmp_path, template=tmp_path / "own.sbatch")
    fake.sbatch_ids("11")
    assert await b.submit(spec()) == "11"
    script = fake.calls[-1][1]
    assert script is not None and script.decode().startswith("#!/bin/bash\n# site copy\n")
