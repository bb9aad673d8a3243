"""What the daemon shows of itself: the gauges follow the control loop's decisions."""

from __future__ import annotations

from pathlib import Path

from chirond.cluster.instances import DaemonInstance
from chirond.dispatch import Dispatcher
from chirond.metrics import Metrics
from chirond.model import DispatchRules, EngineArgs, Pool, SetBatchCap
from chirond.ops.status import set_gauges
from tests.support.config import make_config


def test_the_cap_gauge_follows_set_batch_cap(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    dispatcher = Dispatcher(DispatchRules(), {"llama-8b": 1.0})
    metrics = Metrics()
    inst = DaemonInstance(1, "llama-8b", Pool.MIXED, 1, EngineArgs(64, 1024), 0.0, ready_at=1.0)
    dispatcher.add_instance(1, "llama-8b", Pool.MIXED, 64, 64)
    set_gauges(metrics, cfg, [inst], dispatcher)
    act = SetBatchCap(1, 12, 4)
    dispatcher.set_cap(act.instance, act.cap, act.batch_cap)
    set_gauges(metrics, cfg, [inst], dispatcher)
    assert metrics.registry.get_sample_value("chirond_instance_batch_cap", {"model": "llama-8b", "instance": "1"}) == 12
    assert metrics.registry.get_sample_value("chirond_gpus_in_use") == 1
