"""A day of traffic and a daemon config for the learned-floor tests (unit and component)."""

from __future__ import annotations

from pathlib import Path

from chirond.config import load_config
from chirond.control.snapshot import ModelSpec
from chirond.model import ReqClass, Request


def day_of_traffic() -> list[Request]:
    """Hour 0: nothing. Hour 1: an 8k-token prompt every 0.5 s for two minutes (about 0.7 s of
    prefill each: one instance falls ever further behind, two keep up). Hour 2: one every 5 s for
    100 s (one instance keeps up). A batch request, which a floor for interactive users ignores."""
    reqs = [Request(0, "m", ReqClass.INTERACTIVE, 3600 + 0.5 * i, 8000, 10) for i in range(240)]
    reqs += [Request(0, "m", ReqClass.INTERACTIVE, 7200 + 5.0 * i, 8000, 10) for i in range(20)]
    return [*reqs, Request(0, "m", ReqClass.BATCH, 100.0, 8000, 10, deadline=1e6)]


def config(tmp_path: Path, price: float = 1.0, floor: str = "") -> Path:
    path = tmp_path / "chirond.toml"
    path.write_text(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
[api]
auth = "open"
[models.m]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = {{ ttft_s = 2.0, tpot_s = 0.2 }}
min_instances = 0
max_instances = 6
learned_floor_price = {price}
{floor}
[models.quiet]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = {{ ttft_s = 2.0, tpot_s = 0.2 }}
""")
    return path


def specs_of(cfg_path: Path) -> dict[str, ModelSpec]:
    from chirond.fleet import model_specs

    return model_specs(load_config(cfg_path))
