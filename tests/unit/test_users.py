"""chirond/users.py: the [users] config, API keys (hashes only), quotas and usage accounting on a
real SQLite file, with an injected clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, NoReturn

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from chirond.users import (
    MAX_KEYS_PER_USER,
    InFlight,
    Quota,
    UsageCollector,
    UserError,
    UsersConfig,
    UserStore,
    gpu_seconds,
    hash_key,
    parse_users,
)

DAY = 86400.0
T0 = 1_700_000_000.0 - 1_700_000_000.0 % DAY + 3600  # 01:00 UTC on some day


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Bad(Exception):
    pass


def fail(key: str, reason: str) -> NoReturn:
    raise Bad(f"{key}: {reason}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_store(tmp_path: Path, clock: Clock, cfg: UsersConfig | None = None) -> UserStore:
    s = UserStore(tmp_path / "chirond.db", cfg, clock=clock)
    s.open()
    return s


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Any:
    s = make_store(tmp_path, clock)
    yield s
    s.close()


# ---------------------------------------------------------------- config


def test_parse_users_defaults_overrides_and_admins() -> None:
    cfg = parse_users(
        {
            "admin_users": ["root", "ops"],
            "admin_groups": ["hpc-admins"],
            "quota": {"concurrent_interactive": 4, "tokens_per_day": 1000, "alice": {"tokens_per_day": 50}},
        },
        fail,
    )
    assert cfg.admin_users == ("root", "ops") and cfg.admin_groups == ("hpc-admins",)
    assert cfg.quota("bob") == Quota(concurrent_interactive=4, queued_batch_lines=0, tokens_per_day=1000)
    # An override sets only its own keys; the rest come from [users.quota].
    assert cfg.quota("alice") == Quota(concurrent_interactive=4, queued_batch_lines=0, tokens_per_day=50)
    assert cfg.limit("alice", "tokens_per_day") == (50, "users.quota.alice.tokens_per_day")
    assert cfg.limit("alice", "concurrent_interactive") == (4, "users.quota.concurrent_interactive")
    assert cfg.is_admin("ops") and cfg.is_admin("carol", ("users", "hpc-admins")) and cfg.is_admin("x", (), uid=0)
    assert not cfg.is_admin("carol", ("users",), uid=1000)
    assert parse_users({}, fail) == UsersConfig()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"quota": {"alice": {"tokens_per_day": -1}}},
            "users.quota.alice.tokens_per_day: must be an integer >= 0 (0 = unlimited), got -1",
        ),
        ({"quota": {"tokens_per_day": 1.5}}, "users.quota.tokens_per_day: must be an integer >= 0"),
        ({"quota": {"concurrent_interactive": True}}, "users.quota.concurrent_interactive: must be an integer"),
        ({"quota": {"alice": {"tokens": 5}}}, "users.quota.alice.tokens: unknown key (valid: concurrent_interactive"),
        ({"quota": {"burst": 5}}, "users.quota.burst: unknown key (valid: concurrent_interactive, queued_batch_lines"),
        ({"quota": {"bad name": {"tokens_per_day": 5}}}, 'users.quota."bad name": a user name is'),
        ({"quota": []}, "users.quota: must be a table, got an array"),
        ({"admins": ["x"]}, "users.admins: unknown key (valid: admin_users, admin_groups, quota)"),
        ({"admin_users": "root"}, "users.admin_users: must be an array of names, got 'root'"),
        ({"admin_groups": ["ok", "no way"]}, "users.admin_groups[1]: must be a user or group name, got 'no way'"),
    ],
)
def test_parse_users_errors_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(Bad) as e:
        parse_users(table, fail)
    assert str(e.value).startswith(message), str(e.value)


# ---------------------------------------------------------------- keys


def test_keys_are_stored_only_as_hashes(tmp_path: Path, clock: Clock) -> None:
    s = make_store(tmp_path, clock)
    key = s.mint("alice")
    assert key.startswith("chd-") and len(key) >= 40
    s.verify(key)
    s.flush()
    files = sorted(tmp_path.glob("chirond.db*"))
    raw = b"".join(f.read_bytes() for f in files)  # the database and its WAL, before the checkpoint
    assert hash_key(key).encode() in raw  # the row is there ...
    assert key.encode() not in raw and key[12:].encode() not in raw  # ... the key is not, nor its secret part
    s.close()
    raw = (tmp_path / "chirond.db").read_bytes()
    assert hash_key(key).encode() in raw and key.encode() not in raw


def test_two_users_get_distinct_keys_and_each_key_names_its_user(store: UserStore) -> None:
    a, b = store.mint("alice"), store.mint("bob")
    a2 = store.mint("alice")
    assert len({a, b, a2}) == 3
    assert store.verify(a) == "alice" and store.verify(a2) == "alice" and store.verify(b) == "bob"
    for bad in ("", "chd-", a[:-1], a + "x", b.upper(), "sk-" + a[4:], "chd-" + "A" * 200):
        assert store.verify(bad) is None, bad


def test_a_restarted_store_knows_the_keys(tmp_path: Path, clock: Clock) -> None:
    s = make_store(tmp_path, clock)
    key = s.mint("alice")
    s.close()
    s2 = make_store(tmp_path, clock)
    assert s2.verify(key) == "alice"
    s2.close()


def test_revoke_all_one_by_prefix_or_by_key(store: UserStore) -> None:
    k1, k2, k3 = store.mint("alice"), store.mint("alice"), store.mint("alice")
    kb = store.mint("bob")
    assert store.revoke("bob", k1[:12]) == 0  # another user's prefix revokes nothing
    assert store.verify(k1) == "alice"
    assert store.revoke("alice", k1[:12]) == 1
    assert store.verify(k1) is None and store.verify(k2) == "alice"
    assert store.revoke("alice", k2) == 1  # the whole key works as well
    assert store.verify(k2) is None and store.verify(k3) == "alice"
    store.mint("alice")
    assert store.revoke("alice") == 2
    assert store.verify(k3) is None and store.keys("alice") == []
    assert store.verify(kb) == "bob"


def test_revoke_invalidates_the_cache(tmp_path: Path, store: UserStore) -> None:
    key = store.mint("alice")
    assert store.verify(key) == "alice"
    # Delete the row behind the store's back: the cache still answers (so verify costs no query) ...
    with sqlite3.connect(tmp_path / "chirond.db") as db:
        db.execute("DELETE FROM users_keys")
    assert store.verify(key) == "alice"
    # ... until a revoke for that user drops its cached keys, whatever the table says.
    assert store.revoke("alice") == 0
    assert store.verify(key) is None


def test_keys_listing_and_last_used(store: UserStore, clock: Clock) -> None:
    k1 = store.mint("alice")
    clock.t += 10
    store.mint("alice")
    listed = store.keys("alice")
    assert [k["prefix"] for k in listed] == [k1[:12], listed[1]["prefix"]]
    assert [k["created"] for k in listed] == [T0, T0 + 10] and listed[0]["last_used"] is None
    clock.t += 5
    store.verify(k1)
    store.flush()
    assert store.keys("alice")[0]["last_used"] == T0 + 15
    assert store.keys("bob") == []


def test_a_user_has_a_bounded_number_of_keys(store: UserStore) -> None:
    for _ in range(MAX_KEYS_PER_USER):
        store.mint("alice")
    with pytest.raises(UserError, match="revoke one first"):
        store.mint("alice")
    store.mint("bob")  # others are not affected


# ---------------------------------------------------------------- usage and quotas


def test_usage_rolls_over_by_utc_day(store: UserStore, clock: Clock) -> None:
    store.add_usage("alice", "llama-8b", 100, 20, 1.5)
    store.add_usage("alice", "llama-8b", 50, 10, 0.5)
    store.add_usage("bob", "llama-70b", 7, 3, 4.0)
    assert store.tokens_today("alice") == 180  # before any flush
    store.flush()
    assert store.tokens_today("alice") == 180  # flushed: not counted twice
    store.add_usage("alice", "llama-70b", 1, 1, 0.0)
    assert store.tokens_today("alice") == 182
    clock.t += DAY  # the next UTC day
    assert store.tokens_today("alice") == 0
    store.add_usage("alice", "llama-8b", 5, 5, 1.0)
    assert store.tokens_today("alice") == 10
    today = store.usage("alice", days=1)
    assert today == [
        {"user": "alice", "model": "llama-8b", "requests": 1, "tokens_in": 5, "tokens_out": 5, "gpu_s": 1.0}
    ]
    both = {(r["user"], r["model"]): r for r in store.usage(None, days=2)}
    assert both[("alice", "llama-8b")] == {
        "user": "alice",
        "model": "llama-8b",
        "requests": 3,
        "tokens_in": 155,
        "tokens_out": 35,
        "gpu_s": 3.0,
    }
    assert both[("alice", "llama-70b")]["requests"] == 1 and both[("bob", "llama-70b")]["tokens_in"] == 7
    assert all(r["user"] == "bob" for r in store.usage("bob", days=2))


def test_tokens_today_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    s = make_store(tmp_path, clock)
    s.add_usage("alice", "m", 30, 12, 0.0)
    s.close()  # flushes
    s2 = make_store(tmp_path, clock)
    assert s2.tokens_today("alice") == 42
    s2.close()


def test_quota_messages_name_the_user_the_limit_and_the_key(store: UserStore, clock: Clock) -> None:
    store.cfg = parse_users(
        {
            "quota": {
                "concurrent_interactive": 4,
                "queued_batch_lines": 100,
                "tokens_per_day": 1000,
                "alice": {"concurrent_interactive": 1, "tokens_per_day": 0},
            }
        },
        fail,
    )
    assert store.check_interactive("bob", 3) is None
    assert store.check_interactive("bob", 4) == (
        "user bob: 4 concurrent interactive requests is the quota (users.quota.concurrent_interactive); "
        "wait for one to finish"
    )
    assert "user alice: 1 concurrent interactive request is the quota (users.quota.alice.concurrent_interactive)" in (
        store.check_interactive("alice", 1) or ""
    )
    assert store.check_batch_lines("bob", 60, 40) is None
    msg = store.check_batch_lines("bob", 60, 41)
    assert msg is not None and "user bob: 100 queued batch lines is the quota (users.quota.queued_batch_lines)" in msg
    assert "60 are queued and this adds 41" in msg
    store.add_usage("bob", "m", 900, 99, 0.0)
    assert store.check_tokens("bob") is None
    store.add_usage("bob", "m", 1, 0, 0.0)
    msg = store.check_tokens("bob")
    assert msg is not None and msg.startswith("user bob: 1000 tokens per day is the quota (users.quota.tokens_per_day)")
    store.add_usage("alice", "m", 10**9, 0, 0.0)
    assert store.check_tokens("alice") is None  # her override: 0 = unlimited
    assert store.check_interactive("carol", 3) is None and store.check_tokens("carol") is None
    clock.t += DAY - 3600  # midnight UTC: a new day, a new budget
    assert store.check_tokens("bob") is None
    assert store.seconds_to_reset() == DAY


def test_quota_zero_means_unlimited(store: UserStore) -> None:
    assert store.cfg == UsersConfig()
    assert store.check_interactive("x", 10**6) is None
    assert store.check_batch_lines("x", 10**9, 10**9) is None
    store.add_usage("x", "m", 10**12, 0, 0.0)
    assert store.check_tokens("x") is None


def test_in_flight_counter() -> None:
    f = InFlight()
    f.inc("a")
    f.inc("a")
    f.inc("b")
    assert (f["a"], f["b"], f["c"]) == (2, 1, 0)
    f.dec("a")
    f.dec("b")
    assert (f["a"], f["b"]) == (1, 0) and "b" not in f._n


def test_gpu_seconds_shares_an_instance_between_its_requests() -> None:
    assert gpu_seconds(2, 10.0, 1) == 20.0
    assert gpu_seconds(2, 10.0, 4) == 5.0
    assert gpu_seconds(4, 3.0, 0) == 12.0  # the request itself counts: never divide by zero
    assert gpu_seconds(1, -1.0, 1) == 0.0 and gpu_seconds(0, 5.0, 1) == 0.0
    # Four requests sharing 2 GPUs for 10 s are attributed the 20 GPU-seconds the instance spent.
    assert sum(gpu_seconds(2, 10.0, 4) for _ in range(4)) == 20.0


def test_usage_collector_exports_per_user_counters(store: UserStore) -> None:
    reg = CollectorRegistry()
    reg.register(UsageCollector(store))
    store.add_usage("alice", "llama-8b", 100, 20, 1.5)
    store.add_usage("alice", "llama-8b", 1, 2, 0.5)
    text = generate_latest(reg).decode()
    assert 'chirond_user_tokens_total{direction="in",model="llama-8b",user="alice"} 101.0' in text
    assert 'chirond_user_tokens_total{direction="out",model="llama-8b",user="alice"} 22.0' in text
    assert 'chirond_user_gpu_seconds_total{model="llama-8b",user="alice"} 2.0' in text
    assert 'chirond_user_requests_total{model="llama-8b",user="alice"} 2.0' in text


def test_the_store_refuses_use_before_open(tmp_path: Path) -> None:
    s = UserStore(tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()  # the constructor does no I/O
    with pytest.raises(RuntimeError, match="open"):
        s.mint("alice")
