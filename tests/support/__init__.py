"""Helpers shared by the test suites (no tests here). Import what you need:

    from tests.support import ROOT, PROFILE_8B, free_port, wait_for, wait_until_sync, Clock, FakeBackend, write_toml

Topic modules, imported by name (they pull in heavier parts of chirond or the loopback cluster):

- tests.support.config: `make_config` (a local-backend Config built in code), TOML texts.
- tests.support.slurm: a scripted Slurm (`FakeSlurm`, `FakeLocalSlurm`) and a SlurmBackend over it.
- tests.support.procs: `chirond serve` as a child process, /proc helpers (`alive`, `children`).
- tests.support.loopback: the loopback Slurm cluster (`LoopbackCluster`, `run`, `job_state`, ...).
- tests.support.slurm_daemon: an in-process daemon on the loopback cluster.
- tests.support.sshd: `ThrowawaySshd`, an sshd of one test.

Fixtures stay in the conftest.py files; they build on these helpers."""

from tests.support.fakes import Clock, FakeBackend
from tests.support.net import free_port, free_port_block
from tests.support.paths import DATA, METRICS_PATH, PROFILE_8B, PROFILES, ROOT
from tests.support.toml import dumps_toml, write_toml
from tests.support.wait import wait_for, wait_until_sync

__all__ = [
    "DATA",
    "METRICS_PATH",
    "PROFILES",
    "PROFILE_8B",
    "ROOT",
    "Clock",
    "FakeBackend",
    "dumps_toml",
    "free_port",
    "free_port_block",
    "wait_for",
    "wait_until_sync",
    "write_toml",
]
