"""The backend a config names, built with what it runs over: the one place that decides between
the local and the Slurm backend, and makes the SSH transport to the login node when
`[backend.slurm.ssh]` is set. The caller gets that transport too (the daemon scrapes engines'
metrics and opens tunnels through the same connection), so nobody fishes it out of the backend.

Building does no I/O and starts nothing: `backend.start()` does, and `backend.stop()` closes the
transport.
"""

from __future__ import annotations

from chirond.cluster.backend import Backend
from chirond.cluster.local import LocalBackend
from chirond.cluster.slurm_backend import SlurmBackend
from chirond.cluster.ssh import SshTransport
from chirond.config import Config, ConfigError

__all__ = ["build_backend"]


def build_backend(cfg: Config) -> tuple[Backend, SshTransport | None]:
    """(the backend `daemon.backend` names, the SSH transport to the login node or None).
    "local": child processes on this machine; "slurm": one Slurm job per instance, its commands run
    here or, with [backend.slurm.ssh], over SSH."""
    if cfg.daemon.backend == "slurm":
        if cfg.slurm is None:
            raise ConfigError('daemon.backend = "slurm" needs a [backend.slurm] table')
        ssh = SshTransport(cfg.slurm.ssh) if cfg.slurm.ssh is not None else None
        return SlurmBackend(cfg.slurm, cfg.daemon.state_dir, ssh=ssh), ssh
    return LocalBackend(cfg.local, cfg.daemon.state_dir, speedup=cfg.daemon.clock_speedup,
                        stop_grace_s=cfg.lifecycle.stop_grace_s), None
