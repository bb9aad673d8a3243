"""`GET /`: the daemon's status as one small HTML page for people (the same facts as
`GET /v1/models` and `chiron status`): each model's state, the ETA of its next instance, its
instances per state, its queues and its SLO attainment. No JavaScript, no external assets; it
reloads itself every REFRESH_S seconds. Pure: the caller passes the facts."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

REFRESH_S = 10
_STATE_COLOUR = {"live": "#1a7f37", "starting": "#9a6700", "queued": "#9a6700", "scaled_to_zero": "#57606a"}
_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:2em;color:#1f2328;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em} p.sub{color:#57606a;margin:0 0 1.2em}
table{border-collapse:collapse;min-width:60%} th,td{padding:.35em .8em;border-bottom:1px solid #d0d7de;text-align:right}
th{background:#f6f8fa} th:first-child,td:first-child,td.state{text-align:left;white-space:nowrap}
td.state b{color:#fff;border-radius:1em;padding:.1em .6em;font-weight:600;font-size:.9em}
.bad{color:#cf222e;font-weight:600} .ok{color:#1a7f37} footer{color:#57606a;margin-top:1.5em;font-size:.9em}
"""


def _pct(v: float | None, target: float = 0.9) -> str:
    if v is None:
        return "<td>–</td>"
    return f'<td class="{"ok" if v >= target else "bad"}">{100 * v:.1f} %</td>'


def render(models: list[dict[str, Any]], attainment: Callable[[str, str], float | None], health: dict[str, Any],
           version: str, now: float | None = None) -> str:
    e = html.escape
    rows = []
    for m in models:
        name, state = str(m.get("id", "?")), str(m.get("state", "?"))
        inst = m.get("instances") or {}
        q = m.get("queue") or {}
        eta = m.get("eta_s")
        slo = m.get("slo") or {}
        colour = _STATE_COLOUR.get(state, "#57606a")
        rows.append(
            f"<tr><td><b>{e(name)}</b></td>"
            f'<td class="state"><b style="background:{colour}">{e(state.replace("_", " "))}</b></td>'
            f"<td>{'–' if eta is None else f'{float(eta):.0f} s'}</td>"
            + "".join(f"<td>{int(inst.get(s, 0))}</td>" for s in ("ready", "starting", "pending", "draining"))
            + f"<td>{int(q.get('interactive', 0))}</td><td>{int(q.get('batch', 0))}</td>"
            + _pct(attainment(name, "interactive")) + _pct(attainment(name, "batch"))
            + f"<td>{e(str(slo.get('ttft_s', '–')))} s / {e(str(slo.get('tpot_s', '–')))} s</td></tr>"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    status = str(health.get("status", "?"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>chirond: {e(status)}</title><style>{_CSS}</style></head>
<body>
<h1>chirond</h1>
<p class="sub">{e(status)} · version {e(version)} · control tick {int(health.get("ticks", 0))} ·
{int(health.get("instances", 0))} instance(s) · {int(health.get("requests_in_flight", 0))} request(s) in flight</p>
<table>
<thead><tr><th>model</th><th>state</th><th>next instance in</th><th>ready</th><th>starting</th><th>queued in Slurm</th>
<th>draining</th><th>waiting: interactive</th><th>batch</th><th>SLO met: interactive</th><th>batch</th>
<th>SLO: TTFT / TPOT</th></tr></thead>
<tbody>
{chr(10).join(rows) or '<tr><td colspan="12">no models</td></tr>'}
</tbody></table>
<footer>{e(stamp)} · reloads every {REFRESH_S} s · SLO met: fraction of finished requests since start ·
API at <code>/v1</code>, metrics at <code>/metrics</code></footer>
</body></html>
"""
