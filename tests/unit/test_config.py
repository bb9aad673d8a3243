"""The daemon's config file: the shipped examples load, every rule rejects with "FILE: key.path:
reason", profiles resolve by name and path, keys files parse, `chirond check-config` exits 0 / 2."""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from chirond import config as cfgmod
from chirond.batch.store import BatchLimits
from chirond.check_config import check_config_main
from chirond.config import (
    API_KEYS,
    BATCH_KEYS,
    DAEMON_KEYS,
    LIFECYCLE_KEYS,
    LOCAL_KEYS,
    MODEL_KEYS,
    ApiConfig,
    ConfigError,
    DaemonConfig,
    LifecycleConfig,
    LocalBackendConfig,
    load_config,
    load_keys,
)
from chirond.policy import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
ETC = ROOT / "etc"
P8 = ROOT / "chirond" / "data" / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml"  # profiles/ links here
KEY_A = "0123456789abcdef0123456789abcdef"
KEY_B = "fedcba9876543210fedcba9876543210"
DELETE = object()  # in an override: remove the key

BASE: dict[str, Any] = {
    "api": {"auth": "open"},
    "models": {"m": {"profile": "llama-3.1-8b_a100-80gb_tp1", "slo": {"ttft_s": 1.0, "tpot_s": 0.1}}},
}


# ---------------------------------------------------------------- helpers


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


def to_toml(doc: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """A tiny TOML writer for the test documents: scalars and arrays, tables as [headers]."""
    lines = [f"[{'.'.join(json.dumps(p) for p in path)}]"] if path else []
    lines += [f"{json.dumps(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    text = "\n".join(lines) + "\n"
    for k, v in doc.items():
        if isinstance(v, dict):
            text += to_toml(v, (*path, k))
    return text


def as_toml(v: Any) -> Any:
    """A dataclass default as TOML reads it back."""
    return list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is DELETE:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and v:
            out[k] = merged(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def write(tmp_path: Path, doc: dict[str, Any] | str, name: str = "chirond.toml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else to_toml(doc))
    return path


def load(tmp_path: Path, over: dict[str, Any]) -> cfgmod.Config:
    return load_config(write(tmp_path, merged(BASE, over)))


def shipped_site_config(tmp_path: Path) -> Path:
    """etc/chirond.toml with its keys file replaced by a temporary one (the check stays strict)."""
    keys = tmp_path / "keys"
    keys.write_text(f"# test keys\n{KEY_A} alice\n{KEY_B}\n")
    text = (ETC / "chirond.toml").read_text()
    assert 'keys_file = "/etc/chirond/keys"' in text
    return write(tmp_path, text.replace('"/etc/chirond/keys"', json.dumps(str(keys))))


# ---------------------------------------------------------------- the shipped files


def test_demo_config_loads() -> None:
    cfg = load_config(ETC / "demo.toml")
    d = cfg.daemon
    assert (d.listen_host, d.listen_port, d.tick_s, d.backend, d.policy) == ("127.0.0.1", 8000, 2.0, "local", "chirond")
    assert d.state_dir == ROOT / "out" / "demo-state"
    assert cfg.api.auth == "open"
    assert cfg.local.gpus == 8
    m = cfg.models["llama-8b"]
    assert m.profile.name == "llama-3.1-8b_a100-80gb_tp1"
    assert m.profile_path == P8
    assert m.command == ()
    assert (m.min_instances, m.initial_instances, m.max_instances) == (1, 1, 4)
    assert (m.sim_speedup, m.sim_startup_s) == (1.0, 8.0)
    assert cfg.path == ETC / "demo.toml"


def test_site_config_loads_with_a_keys_file(tmp_path: Path) -> None:
    cfg = load_config(shipped_site_config(tmp_path))
    assert cfg.api.auth == "keys"
    assert cfg.api.keys_file == tmp_path / "keys"
    assert list(cfg.models) == ["llama-8b", "llama-70b"]
    m8, m70 = cfg.models["llama-8b"], cfg.models["llama-70b"]
    assert m8.profile.name == "llama-3.1-8b_a100-80gb_tp1"
    assert m70.profile.name == "llama-3.1-70b_a100-80gb_tp4"
    assert (m8.slo.ttft_s, m8.slo.tpot_s, m70.slo.ttft_s, m70.slo.tpot_s) == (1.0, 0.1, 2.0, 0.15)
    assert "{port}" in m8.command and m8.command[:2] == ("vllm", "serve")
    assert cfg.daemon.state_dir == Path("/var/lib/chirond")


def test_site_config_sets_every_key_to_its_documented_default() -> None:
    doc = tomllib.loads((ETC / "chirond.toml").read_text())
    assert set(doc["daemon"]) == set(DAEMON_KEYS)
    assert doc["daemon"]["policy_params"] == REGISTRY["chirond"].defaults
    assert set(doc["api"]) == set(API_KEYS)
    assert set(doc["backend"]["local"]) == set(LOCAL_KEYS)
    assert set(doc["lifecycle"]) == set(LIFECYCLE_KEYS)
    assert set(doc["batch"]) == set(BATCH_KEYS)
    assert tomllib.loads((ETC / "chirond.toml").read_text())["users"]["quota"] == {
        "concurrent_interactive": 0, "queued_batch_lines": 0, "tokens_per_day": 0, "storage_bytes": 0
    }
    for name, model in doc["models"].items():
        assert set(model) == set(MODEL_KEYS), name
    # Every key but the ones it must set for a site is at the dataclass default.
    for table, defaults, own in (
        (doc["daemon"], DaemonConfig(), {"policy_params", "control_socket"}),
        (doc["api"], ApiConfig(), {"keys_file"}),
        (doc["backend"]["local"], LocalBackendConfig(), set()),
        (doc["lifecycle"], LifecycleConfig(), set()),
        (doc["batch"], BatchLimits(), set()),
    ):
        for key, value in table.items():
            if key not in own:
                assert value == as_toml(getattr(defaults, key)), key


def test_site_config_without_its_keys_file_is_refused() -> None:
    if Path("/etc/chirond/keys").exists():
        pytest.skip("this machine has /etc/chirond/keys")
    with pytest.raises(ConfigError, match=r"chirond.toml: api\.keys_file: no such file: /etc/chirond/keys"):
        load_config(ETC / "chirond.toml")


def test_docs_describe_every_key() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    assert "chirond check-config" in text
    for key in (*DAEMON_KEYS, *API_KEYS, *LOCAL_KEYS, *LIFECYCLE_KEYS, *MODEL_KEYS, "ttft_s", "tpot_s"):
        assert f"`{key}`" in text, key
    for name, cls in REGISTRY.items():
        for param in cls.defaults:
            assert f"`{param}`" in text, (name, param)


# ---------------------------------------------------------------- [lifecycle], and its keys' old place


def test_lifecycle_keys_and_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, {}).lifecycle == LifecycleConfig()
    over = {"lifecycle": {"health_timeout_s": 60, "drain_timeout_s": 5.5, "stop_grace_s": 3}}
    assert load(tmp_path, over).lifecycle == LifecycleConfig(60.0, 5.5, 3.0)
    with pytest.raises(ConfigError, match=r"chirond\.toml: lifecycle\.drain_timeout_s: must be a positive number"):
        load(tmp_path, {"lifecycle": {"drain_timeout_s": 0}})
    with pytest.raises(ConfigError, match=r"lifecycle\.drain: unknown key \(valid: health_timeout_s, drain_timeout_s"):
        load(tmp_path, {"lifecycle": {"drain": 1}})


@pytest.mark.parametrize("key", LIFECYCLE_KEYS)
def test_lifecycle_keys_under_backend_local_still_work_and_warn(
    tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[str] = []
    path = write(tmp_path, merged(BASE, {"backend": {"local": {key: 42}}}))
    cfg = load_config(path, warn=heard.append)
    assert getattr(cfg.lifecycle, key) == 42.0
    assert heard == [f"{path}: backend.local.{key} is deprecated: use lifecycle.{key}"]
    with caplog.at_level("WARNING", logger="chirond.config"):  # without `warn`: logged
        load_config(path)
    assert f"backend.local.{key} is deprecated: use lifecycle.{key}" in caplog.text


@pytest.mark.parametrize("key", LIFECYCLE_KEYS)
def test_lifecycle_key_in_both_places_is_an_error_naming_both(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, {"backend": {"local": {key: 1}}, "lifecycle": {key: 2}})
    assert f"backend.local.{key}" in str(e.value) and f"lifecycle.{key}" in str(e.value), str(e.value)


def test_check_config_prints_the_deprecation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, merged(BASE, {"backend": {"local": {"stop_grace_s": 3}}}))
    assert check_config_main(argparse.Namespace(config=str(path))) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}: backend.local.stop_grace_s is deprecated: use lifecycle.stop_grace_s" in err


# ---------------------------------------------------------------- defaults and resolution


def test_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, {})
    assert cfg.daemon == DaemonConfig()
    assert cfg.local == LocalBackendConfig()
    assert cfg.api == ApiConfig(auth="open")
    m = cfg.models["m"]
    assert (m.min_instances, m.initial_instances, m.max_instances) == (0, 0, 4)
    assert (m.command, m.env, m.sim_speedup, m.sim_startup_s) == ((), {}, 1.0, None)


def test_initial_instances_default_to_min(tmp_path: Path) -> None:
    m = load(tmp_path, {"models": {"m": {"min_instances": 2}}}).models["m"]
    assert (m.min_instances, m.initial_instances) == (2, 2)


def test_numbers_accept_integers_and_params_become_floats(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"daemon": {"tick_s": 2, "policy_params": {"reserve_slots": 2, "tpot_margin": 0.9}}})
    assert cfg.daemon.tick_s == 2.0 and isinstance(cfg.daemon.tick_s, float)
    assert cfg.daemon.policy_params == {"reserve_slots": 2.0, "tpot_margin": 0.9}


def test_other_policies_take_their_own_params(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"daemon": {"policy": "llumnix", "policy_params": {"interval_s": 30}}})
    assert cfg.daemon.policy_params == {"interval_s": 30.0}


def test_relative_paths_start_at_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "k").write_text(f"{KEY_A}\n")
    cfg = load(tmp_path, {"daemon": {"state_dir": "state"}, "api": {"auth": "keys", "keys_file": "k"}})
    assert cfg.daemon.state_dir == tmp_path.resolve() / "state"
    assert cfg.api.keys_file == tmp_path.resolve() / "k"


@pytest.mark.parametrize(
    "ref",
    ["llama-3.1-8b_a100-80gb_tp1", "llama-3.1-8b_a100-80gb_tp1.toml", "sub/mine.toml", "sub/mine", "ABSOLUTE"],
)
def test_profile_resolution(tmp_path: Path, ref: str) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(P8, tmp_path / "sub" / "mine.toml")
    if ref == "ABSOLUTE":
        ref = str(tmp_path / "sub" / "mine.toml")
    m = load(tmp_path, {"models": {"m": {"profile": ref}}}).models["m"]
    want = P8 if ref.startswith("llama") else (tmp_path / "sub" / "mine.toml").resolve()
    assert m.profile_path == want
    assert m.profile.model == "meta-llama/Llama-3.1-8B-Instruct"


def test_profile_next_to_the_config_wins_over_the_repository(tmp_path: Path) -> None:
    text = P8.read_text().replace("engine_init_s = 40.0", "engine_init_s = 7.0")
    (tmp_path / "llama-3.1-8b_a100-80gb_tp1.toml").write_text(text)
    m = load(tmp_path, {}).models["m"]
    assert m.profile_path == (tmp_path / "llama-3.1-8b_a100-80gb_tp1.toml").resolve()
    assert m.profile.engine_init_s == 7.0


def test_profile_relative_path_from_a_config_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    ref = os.path.relpath(P8, tmp_path / "etc")  # ../../.../profiles/llama-3.1-8b_a100-80gb_tp1.toml
    cfg = load_config(write(tmp_path / "etc", merged(BASE, {"models": {"m": {"profile": ref}}})))
    assert cfg.models["m"].profile_path == P8


def test_broken_profile_is_reported_on_the_profile_key(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(P8.read_text().replace("[kv]", "[kvv]"))
    with pytest.raises(ConfigError) as e:
        load(tmp_path, {"models": {"m": {"profile": "bad"}}})
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'chirond.toml'}: models.m.profile: ")
    assert "bad.toml" in msg and "kvv" in msg


def test_quoted_dotted_model_names_and_file_order(tmp_path: Path) -> None:
    slo = "slo = { ttft_s = 1.0, tpot_s = 0.1 }"
    text = (
        '[api]\nauth = "open"\n'
        f'[models."zeta"]\nprofile = "llama-3.1-8b_a100-80gb_tp1"\n{slo}\n'
        f'[models."meta-llama/Llama-3.1-8B:v1"]\nprofile = "llama-3.1-8b_a100-80gb_tp1"\n{slo}\n'
    )
    cfg = load_config(write(tmp_path, text))
    assert list(cfg.models) == ["zeta", "meta-llama/Llama-3.1-8B:v1"]
    assert cfg.models["zeta"].name == "zeta"


def test_unquoted_dotted_model_name_gets_a_hint(tmp_path: Path) -> None:
    text = '[api]\nauth = "open"\n[models.llama-3.1-8b]\nprofile = "llama-3.1-8b_a100-80gb_tp1"\n'
    with pytest.raises(ConfigError, match=r"models\.llama-3\.1-8b: unknown key .*must be quoted"):
        load_config(write(tmp_path, text))


def test_valid_commands(tmp_path: Path) -> None:
    argv = ["vllm", "serve", "x", *(f"--{p}={{{p}}}" for p in cfgmod.PLACEHOLDERS), '{"temperature": 0.6}']
    m = load(tmp_path, {"models": {"m": {"command": argv, "env": {"HF_HOME": "/h", "_X1": ""}}}}).models["m"]
    assert m.command == tuple(argv)
    assert m.env == {"HF_HOME": "/h", "_X1": ""}


# ---------------------------------------------------------------- every rule, rejected with its key path

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, override of BASE, key path, reason fragment)
    ("root-unknown", {"deamon": {}}, "deamon",
     "unknown key (valid: daemon, api, backend, models, batch, users, lifecycle)"),
    ("daemon-not-table", {"daemon": 5}, "daemon", "must be a table"),
    ("daemon-unknown", {"daemon": {"tick": 5}}, "daemon.tick", "valid: listen_host, listen_port"),
    ("api-unknown", {"api": {"keys": "x"}}, "api.keys", "unknown key (valid: auth, keys_file"),
    ("backend-unknown", {"backend": {"lsf": {}}}, "backend.lsf", "unknown key (valid: local, slurm)"),
    ("local-unknown", {"backend": {"local": {"gpu": 8}}}, "backend.local.gpu", "valid: gpus, port_range"),
    ("model-unknown", {"models": {"m": {"slos": 1}}}, "models.m.slos", "valid: profile, slo, min_instances"),
    ("model-not-table", {"models": {"m": 3}}, "models.m", "must be a table"),
    ("slo-unknown", {"models": {"m": {"slo": {"ttft": 1}}}}, "models.m.slo.ttft", "valid: ttft_s, tpot_s"),
    ("slo-missing", {"models": {"m": {"slo": DELETE}}}, "models.m.slo", "required"),
    ("slo-no-tpot", {"models": {"m": {"slo": {"tpot_s": DELETE}}}}, "models.m.slo.tpot_s", "required"),
    ("slo-ttft-zero", {"models": {"m": {"slo": {"ttft_s": 0}}}}, "models.m.slo.ttft_s", "positive number"),
    ("slo-ttft-bool", {"models": {"m": {"slo": {"ttft_s": True}}}}, "models.m.slo.ttft_s", "got true"),
    ("port-zero", {"daemon": {"listen_port": 0}}, "daemon.listen_port", "integer in 1..65535, got 0"),
    ("port-high", {"daemon": {"listen_port": 65536}}, "daemon.listen_port", "integer in 1..65535"),
    ("port-bool", {"daemon": {"listen_port": True}}, "daemon.listen_port", "got true"),
    ("port-float", {"daemon": {"listen_port": 8000.0}}, "daemon.listen_port", "integer"),
    ("port-string", {"daemon": {"listen_port": "8000"}}, "daemon.listen_port", "integer"),
    ("host-empty", {"daemon": {"listen_host": ""}}, "daemon.listen_host", "non-empty string"),
    ("host-space", {"daemon": {"listen_host": "a b"}}, "daemon.listen_host", "host name or address"),
    ("state-dir-int", {"daemon": {"state_dir": 5}}, "daemon.state_dir", "non-empty string"),
    ("tick-zero", {"daemon": {"tick_s": 0}}, "daemon.tick_s", "positive number, got 0"),
    ("tick-negative", {"daemon": {"tick_s": -1.5}}, "daemon.tick_s", "positive number"),
    ("tick-inf", {"daemon": {"tick_s": float("inf")}}, "daemon.tick_s", "positive number"),
    ("tick-bool", {"daemon": {"tick_s": False}}, "daemon.tick_s", "positive number, got false"),
    ("scrape-zero", {"daemon": {"scrape_timeout_s": 0}}, "daemon.scrape_timeout_s", "positive"),
    ("stale-negative", {"daemon": {"stale_after_s": -1}}, "daemon.stale_after_s", "positive"),
    ("policy-unknown", {"daemon": {"policy": "nope"}}, "daemon.policy", "one of static, llumnix, chiron, chirond"),
    ("policy-sweep", {"daemon": {"policy": "llumnix-tuned"}}, "daemon.policy", "must be one of"),
    ("params-unknown", {"daemon": {"policy_params": {"foo": 1}}}, "daemon.policy_params.foo", "tpot_margin"),
    ("params-other-policy", {"daemon": {"policy": "llumnix", "policy_params": {"tpot_margin": 1}}},
     "daemon.policy_params.tpot_margin", "valid: scale_up_below"),
    ("params-static", {"daemon": {"policy": "static", "policy_params": {"x": 1}}}, "daemon.policy_params.x",
     "valid: none"),
    ("params-bool", {"daemon": {"policy_params": {"tpot_margin": True}}}, "daemon.policy_params.tpot_margin",
     "must be a number"),
    ("params-string", {"daemon": {"policy_params": {"tpot_margin": "0.8"}}}, "daemon.policy_params.tpot_margin",
     "must be a number"),
    ("params-not-table", {"daemon": {"policy_params": 1}}, "daemon.policy_params", "must be a table"),
    ("backend-slurm", {"daemon": {"backend": "slurm"}}, "backend.slurm", 'required when daemon.backend = "slurm"'),
    ("backend-other", {"daemon": {"backend": "lsf"}}, "daemon.backend", "must be one of local, slurm"),
    ("log-level", {"daemon": {"log_level": "verbose"}}, "daemon.log_level", "debug, info, warning, error"),
    ("auth-bad", {"api": {"auth": "none"}}, "api.auth", "must be one of keys, open"),
    ("auth-keys-missing", {"api": {"auth": "keys", "keys_file": "nokeys"}}, "api.keys_file", "no such file"),
    ("body-small", {"api": {"max_body_bytes": 1023}}, "api.max_body_bytes", "integer >= 1024, got 1023"),
    ("queue-negative", {"api": {"max_queue_interactive": -1}}, "api.max_queue_interactive", "integer >= 0"),
    ("queue-float", {"api": {"max_queue_batch": 1.5}}, "api.max_queue_batch", "integer"),
    ("wait-zero", {"api": {"max_wait_s": 0}}, "api.max_wait_s", "positive"),
    ("retry-after-zero", {"api": {"retry_after_s": 0}}, "api.retry_after_s", "integer >= 1"),
    ("retries-negative", {"api": {"max_retries": -1}}, "api.max_retries", "integer >= 0"),
    ("header-space", {"api": {"batch_header": "X Class"}}, "api.batch_header", "HTTP header name"),
    ("deadline-zero", {"api": {"batch_deadline_s": 0}}, "api.batch_deadline_s", "positive"),
    ("gpus-zero", {"backend": {"local": {"gpus": 0}}}, "backend.local.gpus", "integer >= 1"),
    ("gpus-bool", {"backend": {"local": {"gpus": True}}}, "backend.local.gpus", "got true"),
    ("ports-reversed", {"backend": {"local": {"port_range": [30000, 20000]}}}, "backend.local.port_range",
     "lo <= hi"),
    ("ports-zero", {"backend": {"local": {"port_range": [0, 10]}}}, "backend.local.port_range", "1 <= lo"),
    ("ports-three", {"backend": {"local": {"port_range": [1, 2, 3]}}}, "backend.local.port_range", "[lo, hi]"),
    ("ports-string", {"backend": {"local": {"port_range": "20000-29999"}}}, "backend.local.port_range", "[lo, hi]"),
    ("ports-bool", {"backend": {"local": {"port_range": [1, True]}}}, "backend.local.port_range", "[lo, hi]"),
    ("health-zero", {"backend": {"local": {"health_timeout_s": 0}}}, "backend.local.health_timeout_s", "positive"),
    ("drain-zero", {"backend": {"local": {"drain_timeout_s": 0}}}, "backend.local.drain_timeout_s", "positive"),
    ("grace-negative", {"backend": {"local": {"stop_grace_s": -1}}}, "backend.local.stop_grace_s", "positive"),
    ("no-models", {"models": DELETE}, "models", "at least one model"),
    ("empty-models", {"models": {}}, "models", "at least one model"),
    ("name-space", {"models": {"m": DELETE, "bad name": BASE["models"]["m"]}}, 'models."bad name"',
     "a model name is"),
    ("name-dash-first", {"models": {"m": DELETE, "-m": BASE["models"]["m"]}}, "models.-m", "starting with a letter"),
    ("name-too-long", {"models": {"m": DELETE, "x" * 129: BASE["models"]["m"]}}, "x" * 129, "1-128 characters"),
    ("profile-missing", {"models": {"m": {"profile": DELETE}}}, "models.m.profile", "required"),
    ("profile-unknown", {"models": {"m": {"profile": "llama-9b"}}}, "models.m.profile",
     "no such profile: 'llama-9b'"),
    ("profile-int", {"models": {"m": {"profile": 8}}}, "models.m.profile", "non-empty string"),
    ("profile-too-big",
     {"backend": {"local": {"gpus": 4}}, "models": {"m": {"profile": "llama-3.1-70b_a100-80gb_tp8"}}},
     "models.m.profile", "needs 8 GPUs per instance; backend.local.gpus is 4"),
    ("min-over-max", {"models": {"m": {"min_instances": 5}}}, "models.m.min_instances", "<= max_instances (4)"),
    ("min-negative", {"models": {"m": {"min_instances": -1}}}, "models.m.min_instances", "integer >= 0"),
    ("max-negative", {"models": {"m": {"max_instances": -1}}}, "models.m.max_instances", "integer >= 0"),
    ("initial-over-max", {"models": {"m": {"initial_instances": 5}}}, "models.m.initial_instances", "between"),
    ("initial-under-min", {"models": {"m": {"min_instances": 2, "initial_instances": 1}}},
     "models.m.initial_instances", "between min_instances (2)"),
    ("initial-bool", {"models": {"m": {"initial_instances": True}}}, "models.m.initial_instances", "got true"),
    ("initial-gpus", {"backend": {"local": {"gpus": 4}},
                      "models": {"m": {"initial_instances": 1},
                                 "big": {"profile": "llama-3.1-70b_a100-80gb_tp4", "initial_instances": 1,
                                         "slo": {"ttft_s": 2.0, "tpot_s": 0.15}}}},
     "models.big.initial_instances", "need 5 GPUs (m 1 x 1, big 1 x 4); backend.local.gpus is 4"),
    ("command-string", {"models": {"m": {"command": "vllm serve"}}}, "models.m.command", "array of strings"),
    ("command-int", {"models": {"m": {"command": ["vllm", 5]}}}, "models.m.command[1]", "must be a string, got 5"),
    ("command-no-port", {"models": {"m": {"command": ["vllm", "serve", "{model}"]}}}, "models.m.command",
     "must contain {port}"),
    ("command-typo", {"models": {"m": {"command": ["vllm", "{modle}", "{port}"]}}}, "models.m.command[1]",
     "unknown placeholder {modle}"),
    ("command-empty-program", {"models": {"m": {"command": ["", "{port}"]}}}, "models.m.command[0]",
     "non-empty"),
    ("env-int", {"models": {"m": {"env": {"X": 1}}}}, "models.m.env.X", "must be a string, got 1"),
    ("env-name", {"models": {"m": {"env": {"1X": "a"}}}}, "models.m.env.1X", "environment variable name"),
    ("env-not-table", {"models": {"m": {"env": "X=1"}}}, "models.m.env", "must be a table"),
    ("speedup-zero", {"models": {"m": {"sim_speedup": 0}}}, "models.m.sim_speedup", "positive"),
    ("startup-negative", {"models": {"m": {"sim_startup_s": -1}}}, "models.m.sim_startup_s", "non-negative"),
    ("startup-bool", {"models": {"m": {"sim_startup_s": True}}}, "models.m.sim_startup_s", "got true"),
]


@pytest.mark.parametrize(("over", "key", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_file_key_and_reason(tmp_path: Path, over: dict[str, Any], key: str, reason: str) -> None:
    path = write(tmp_path, merged(BASE, over))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: "), msg
    where = msg[len(f"{path}: ") :]
    assert where.startswith(f"{key}: ") or (len(key) > 128 and key in where), msg
    assert reason in msg, msg


def test_base_config_is_valid(tmp_path: Path) -> None:
    """The base every bad case starts from is itself valid (so each case fails for its own reason)."""
    assert list(load(tmp_path, {}).models) == ["m"]


def test_policy_refusing_its_params_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(name: str, profiles: object, params: object) -> None:
        raise ValueError("policy chirond: tpot_margin must be in (0, 1]")

    monkeypatch.setattr(cfgmod, "make_policy", refuse)
    with pytest.raises(ConfigError, match=r"chirond\.toml: daemon\.policy_params: policy chirond: tpot_margin"):
        load(tmp_path, {"daemon": {"policy_params": {"tpot_margin": 3}}})


@pytest.mark.parametrize(
    ("text", "reason"),
    [("[daemon\n", "not valid TOML"), (b"\xff\xfe", "not UTF-8")],
    ids=["toml", "utf8"],
)
def test_unreadable_files(tmp_path: Path, text: str | bytes, reason: str) -> None:
    path = tmp_path / "c.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: {reason}"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


# ---------------------------------------------------------------- keys files


def test_load_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# owner keys\n\n  {KEY_A}   alice  # team A\n{KEY_B}\n   # indented comment\n")
    keys = load_keys(path)
    assert keys[KEY_A] == "alice" and keys[KEY_B].startswith("keys-file-line-")
    assert KEY_B[-4:] not in keys[KEY_B]  # names reach the unauthenticated /metrics: nothing of the key
    path.write_text("")
    assert load_keys(path) == {}


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (["short alice"], "2: key too short (5 characters; at least 16)"),
        ([f"{KEY_A} alice", f"{KEY_A} bob"], "3: duplicate key (first on line 2)"),
        ([f"{KEY_A} alice smith"], "2: expected KEY [NAME], got 3 fields"),
        ([KEY_A[:-1] + "é"], "2: a key may hold only"),
    ],
    ids=["short", "duplicate", "fields", "chars"],
)
def test_bad_keys_name_file_and_line(tmp_path: Path, lines: list[str], reason: str) -> None:
    path = tmp_path / "keys"
    path.write_text("# header\n" + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as e:
        load_keys(path)
    assert str(e.value) == f"{path}:{reason}" or str(e.value).startswith(f"{path}:{reason}"), str(e.value)
    assert KEY_A not in str(e.value)  # never print a key


def test_bad_keys_file_fails_the_config(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("tooshort\n")
    with pytest.raises(ConfigError) as e:
        load(tmp_path, {"api": {"auth": "keys", "keys_file": "keys"}})
    assert str(e.value).startswith(f"{tmp_path / 'chirond.toml'}: api.keys_file: {tmp_path.resolve() / 'keys'}:1: ")


# ---------------------------------------------------------------- chirond check-config


def test_check_config_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(argparse.Namespace(config=str(ETC / "demo.toml"))) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for text in ("OK", "127.0.0.1:8000", "auth open", "local: 8 GPUs", "chirond", "llama-8b",
                 "llama-3.1-8b_a100-80gb_tp1", "1 GPU/instance", "TTFT 1 s, TPOT 0.1 s",
                 "min 1, initial 1, max 4", "simulated server, speedup 1"):
        assert text in out, text


def test_check_config_shows_commands_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(argparse.Namespace(config=str(shipped_site_config(tmp_path)))) == 0
    out = capsys.readouterr().out
    assert "2 in" in out and "4 GPUs/instance" in out and "vllm serve meta-llama/Llama-3.1-70B-Instruct" in out
    assert KEY_A not in out


def test_check_config_error_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, merged(BASE, {"daemon": {"tick_s": 0}}))
    assert check_config_main(argparse.Namespace(config=str(path))) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {path}: daemon.tick_s: must be a positive number")


def test_check_config_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    over = {
        "daemon": {"listen_host": "0.0.0.0", "listen_port": 20001},
        "models": {"m": {"slo": {"tpot_s": 0.005}, "command": ["vllm", "serve", "x", "--port={port}", "--api-key=k"]}},
    }
    assert check_config_main(argparse.Namespace(config=str(write(tmp_path, merged(BASE, over))))) == 0
    err = capsys.readouterr().err
    assert 'warning: api.auth = "open" on 0.0.0.0' in err
    assert "warning: daemon.listen_port 20001 lies inside backend.local.port_range" in err
    assert "warning: models.m.slo.tpot_s = 0.005 s is below one decode step" in err
    assert "warning: models.m.command sets --api-key" in err
    assert "does not look like `vllm serve`" not in err


def test_check_config_warns_about_tools_and_priorities(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = ["vllm", "serve", "x", "--port", "{port}"]
    over = {"daemon": {"policy": "chirond"}, "models": {"m": {"command": bare}}}
    assert check_config_main(argparse.Namespace(config=str(write(tmp_path, merged(BASE, over))))) == 0
    err = capsys.readouterr().err
    assert "warning: models.m.command cannot serve `tools`" in err
    assert "warning: models.m.command lacks --scheduling-policy {scheduling_policy}" in err
    full = [*bare, "--scheduling-policy", "{scheduling_policy}", "--enable-auto-tool-choice",
            "--tool-call-parser=llama3_json"]
    over = {"daemon": {"policy": "chirond"}, "models": {"m": {"command": full}}}
    assert check_config_main(argparse.Namespace(config=str(write(tmp_path, merged(BASE, over))))) == 0
    err = capsys.readouterr().err
    assert "tools" not in err and "scheduling-policy" not in err
    # A policy that sends no priorities needs no priority scheduling.
    over = {"daemon": {"policy": "static"}, "models": {"m": {"command": bare}}}
    assert check_config_main(argparse.Namespace(config=str(write(tmp_path, merged(BASE, over))))) == 0
    assert "scheduling-policy" not in capsys.readouterr().err


def test_check_config_warns_when_the_engine_guard_cannot_be_added(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    over = {"models": {"m": {"command": ["./serve-engine.sh", "--port={port}"]}}}
    assert check_config_main(argparse.Namespace(config=str(write(tmp_path, merged(BASE, over))))) == 0
    assert "warning: models.m.command does not look like `vllm serve`: chirond cannot add its engine guard" \
        in capsys.readouterr().err


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = pytest.importorskip("chirond.cli")
    try:
        main = cli.chirond_main
        assert main(["check-config", str(ETC / "demo.toml")]) == 0
    except ImportError as e:  # the daemon's modules land separately
        pytest.skip(f"chirond.cli cannot import its subcommands yet: {e}")
    assert "llama-8b" in capsys.readouterr().out
    bad = write(tmp_path, merged(BASE, {"api": {"auth": "none"}}))
    assert main(["check-config", str(bad)]) == 2
    assert f"error: {bad}: api.auth: must be one of keys, open" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("over", "where", "reason"),
    [
        ({"batch": {"windows": ["1h"]}}, "batch.windows", 'must include "24h"'),
        ({"batch": {"windows": ["24h", "soon"]}}, "batch.windows[1]", "not a number followed by"),
        ({"batch": {"max_file_lines": 0}}, "batch.max_file_lines", "must be an integer >= 1"),
        ({"batch": {"colour": 1}}, "batch.colour", "unknown key"),
        ({"users": {"quota": {"alice": {"tokens_per_day": -1}}}}, "users.quota.alice.tokens_per_day", ">= 0"),
        ({"daemon": {"control_socket": "/tmp/" + "s" * 120}}, "daemon.control_socket", "at most 107 bytes"),
    ],
)
def test_batch_users_and_socket_errors_name_the_key(
    tmp_path: Path, over: dict[str, Any], where: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, over)
    assert f"chirond.toml: {where}: " in str(e.value) and reason in str(e.value)


def test_batch_users_and_socket_keys_are_read(tmp_path: Path) -> None:
    cfg = load(tmp_path, {
        "daemon": {"control_socket": "ctl.sock"},
        "batch": {"windows": ["24h", "30m"], "max_file_lines": 10},
        "users": {"admin_users": ["root"], "quota": {"tokens_per_day": 5, "bob": {"concurrent_interactive": 2}}},
    })  # fmt: skip
    assert cfg.daemon.socket_path == tmp_path / "ctl.sock"
    assert (cfg.batch.windows, cfg.batch.max_file_lines) == (("24h", "30m"), 10)
    assert cfg.users.quota("bob").concurrent_interactive == 2
    assert cfg.users.quota("bob").tokens_per_day == 5
    assert cfg.users.quota("alice").concurrent_interactive == 0


def test_idle_timeout_reaches_the_control_loop(tmp_path: Path) -> None:
    from chirond.fleet import model_specs

    cfg = load(tmp_path, {"models": {"m": {"idle_timeout_s": 90.0}}})
    assert model_specs(cfg)["m"].idle_timeout_s == 90.0
    assert model_specs(load(tmp_path, {}))["m"].idle_timeout_s is None  # the lead time
    with pytest.raises(ConfigError, match=r"models\.m\.idle_timeout_s"):
        load(tmp_path, {"models": {"m": {"idle_timeout_s": -1}}})


def test_an_hourly_floor_reaches_the_control_loop(tmp_path: Path) -> None:
    from chirond.fleet import model_specs

    hours = [0] * 8 + [2] * 10 + [1] * 6
    cfg = load(tmp_path, {"models": {"m": {"max_instances": 2, "min_instances_by_hour": hours}}})
    assert model_specs(cfg)["m"].min_instances_by_hour == tuple(hours)
    assert model_specs(load(tmp_path, {}))["m"].min_instances_by_hour == ()
    with pytest.raises(ConfigError, match=r"models\.m\.min_instances_by_hour: must be an array of 24"):
        load(tmp_path, {"models": {"m": {"min_instances_by_hour": hours[:23]}}})
    with pytest.raises(ConfigError, match=r"min_instances_by_hour\[8\]: must be an integer in 0\.\.1, got 2"):
        load(tmp_path, {"models": {"m": {"max_instances": 1, "min_instances_by_hour": hours}}})


def test_check_config_shows_the_floor_by_the_hour(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hours = [0] * 8 + [2] * 10 + [1] * 6
    path = write(tmp_path, merged(BASE, {"models": {"m": {"max_instances": 2, "min_instances_by_hour": hours}}}))
    assert check_config_main(argparse.Namespace(config=str(path))) == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line, however the console wraps it
    assert "floor by the local hour: 0 from 00:00, 2 from 08:00, 1 from 18:00" in out


def test_the_daemons_hours_are_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from chirond.clock import local_day_s

    t = 20 * 86400 + 13 * 3600 + 125.5  # 13:02:05.5 UTC
    for tz, hour in (("UTC0", 13), ("CET-1", 14), ("EST5", 8)):
        monkeypatch.setenv("TZ", tz)
        time.tzset()
        assert local_day_s(t) == hour * 3600 + 125.5, tz
    monkeypatch.undo()
    time.tzset()
