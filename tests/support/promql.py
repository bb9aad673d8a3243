"""Reading PromQL expressions for the dashboard and alert tests: the Grafana variables filled in,
and the metric names an expression reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "5m", "$model": ".*"}
# Series Prometheus makes itself; every other name must be one the daemon exports.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                       "bool", "offset", "inf", "nan"})


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """(panel title, expression) of every target, the Grafana variables filled in."""
    out = []
    for panel in json.loads(path.read_text())["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


def metric_names(expr: str) -> set[str]:
    """Names of the series `expr` selects (functions, keywords, labels and durations left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics page exports or declares (a labelled metric with no child yet
    still has its # TYPE line), with the suffixes Prometheus reads them by."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "counter":
                names |= {name.removesuffix("_total") + "_total", name.removesuffix("_total") + "_created"}
            elif kind == "histogram":
                names |= {name + s for s in ("_bucket", "_sum", "_count", "_created")}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
