"""One scheme across the command lines: the same endpoint flags and variables for `chiron load` and
`chiron batch` (old flags still work, with a warning), --json on every command that prints a table,
tables not cut in a pipe, usage exports and Slurm accounts. (An example in every --help:
tests/component/test_cli_help.py.)"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.table import Table

from chirond import cli_common, usage_report
from chirond.batch_cli import resolve_url_key
from chirond.cli import chiron_main, chiron_parser
from chirond.loadgen import config_from_args


def test_table_commands_take_json() -> None:
    ap = chiron_parser()
    for argv in (["profile", "x"], ["batch", "list"], ["batch", "status", "b"], ["token", "--list"], ["usage"],
                 ["status"]):
        assert ap.parse_args([*argv, "--json"]).json is True, argv


def test_load_and_batch_name_the_endpoint_alike(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("CHIROND_URL", "OPENAI_BASE_URL", "CHIROND_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    ap = chiron_parser()
    load = config_from_args(ap.parse_args(["load", "--url", "http://a:1/v1/", "--api-key", "k1"]))
    assert (load.base_url, load.api_key) == ("http://a:1/v1", "k1")
    batch = ap.parse_args(["batch", "list", "--url", "http://a:1/v1/", "--api-key", "k1"])
    assert resolve_url_key(batch.url, batch.api_key) == ("http://a:1/v1", "k1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-var/v1")
    monkeypatch.setenv("CHIROND_API_KEY", "k2")
    assert config_from_args(ap.parse_args(["load"])).base_url == "http://openai-var/v1"
    assert resolve_url_key(None, None) == ("http://openai-var/v1", "k2")
    monkeypatch.setenv("CHIROND_URL", "http://chirond-var/v1")  # ours first
    assert config_from_args(ap.parse_args(["load"])).base_url == "http://chirond-var/v1"
    assert resolve_url_key(None, None)[0] == "http://chirond-var/v1"
    old = config_from_args(ap.parse_args(["load", "--base-url", "http://old:2/v1"]))
    assert old.base_url == "http://old:2/v1"
    assert "--base-url is deprecated; use --url" in capsys.readouterr().err


def test_tables_are_not_cut_in_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    t = Table("id", "status")
    long_id = "batch_" + "x" * 150
    t.add_row(long_id, "completed")
    cli_common.console().print(t)  # stdout is captured: not a terminal
    assert long_id in capsys.readouterr().out


def test_profile_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert chiron_main(["profile", "llama-3.1-8b_a100-80gb_tp1", "--tpot-slo-s", "0.03", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] and out["rows"][0]["batch"] == 1 and out["rows"][0]["meets_tpot_slo"] is True
    assert any(r["meets_tpot_slo"] is False for r in out["rows"])


def test_days_since() -> None:
    today = dt.date(2026, 12, 1)
    assert usage_report.days_since("2026-12-01", today) == 1
    assert usage_report.days_since("2026-11-01", today) == 31
    with pytest.raises(ValueError, match="future"):
        usage_report.days_since("2026-12-02", today)
    with pytest.raises(ValueError):
        usage_report.days_since("yesterday", today)


def test_slurm_accounts_from_sacctmgr_and_a_map(tmp_path: Path) -> None:
    def sacctmgr(argv: list[str]) -> SimpleNamespace:
        assert argv[0] == "sacctmgr" and "--parsable2" in argv
        return SimpleNamespace(returncode=0, stdout="alice|proj-a\nbob|proj-b\nroot|\n")

    assert usage_report.slurm_accounts(sacctmgr) == {"alice": "proj-a", "bob": "proj-b"}

    def no_accounting(argv: list[str]) -> SimpleNamespace:
        return SimpleNamespace(returncode=1, stdout="")  # sacctmgr: error: Problem talking to the database

    assert usage_report.slurm_accounts(no_accounting) == {}
    m = tmp_path / "map"
    m.write_text("# who pays\ncarol proj-c  # comment\n\n")
    assert usage_report.read_account_map(m) == {"carol": "proj-c"}
    m.write_text("carol\n")
    with pytest.raises(ValueError, match="map:1"):
        usage_report.read_account_map(m)


def test_rollup_and_csv() -> None:
    rows = [{"user": u, "model": "m", "requests": 1, "tokens_in": 10, "tokens_out": 5, "gpu_s": 1800.0}
            for u in ("alice", "bob", "carol")]
    acc = usage_report.by_account(rows, {"alice": "p", "bob": "p"})
    assert [(a["account"], a["users"], a["requests"], a["gpu_hours"]) for a in acc] == [
        ("(unmapped)", 1, 1, 0.5), ("p", 2, 2, 1.0)]
    text = usage_report.to_csv(acc, usage_report.ACCOUNT_COLUMNS)
    assert text.splitlines()[0] == ",".join(usage_report.ACCOUNT_COLUMNS)
    assert text.splitlines()[2] == "p,m,2,2,20,10,1.000000"
    assert io.StringIO(text).read().count("\n") == 3
