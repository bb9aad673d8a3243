"""deploy/grafana/chirond.json is what deploy/grafana/dashboard.py writes (edit the generator, not
the JSON), and it is a dashboard Grafana imports: unique panel ids, a row per concern, a target
on every panel."""

from __future__ import annotations

import json
import runpy

from tests.support.paths import ROOT

GEN = ROOT / "deploy" / "grafana" / "dashboard.py"


def test_the_committed_dashboard_is_the_generators() -> None:
    build = runpy.run_path(str(GEN))["build"]
    committed = json.loads((ROOT / "deploy" / "grafana" / "chirond.json").read_text())
    assert committed == build()
    panels = committed["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert len(rows) >= 7
    assert all(p.get("targets") for p in panels if p["type"] != "row")
