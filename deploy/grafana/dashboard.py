"""Writes chirond.json, the Grafana dashboard (import it: Dashboards > New > Import). One row per
concern; every expression is evaluated against a running daemon by tests/component/test_prometheus.py.
Run `python deploy/grafana/dashboard.py` after changing a panel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("chirond.json")
M = 'model=~"$model"'

# (row title, [(panel title, unit, [(expr, legend)])])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    ("Requests and latency", [
        ("Request rate by model, class and outcome", "reqps",
         [(f"sum by (model, class, outcome) (rate(chirond_requests_total{{{M}}}[$__rate_interval]))",
           "{{model}} {{class}} {{outcome}}")]),
        ("TTFT p50 / p95 (interactive)", "s",
         [(f"histogram_quantile({q}, sum by (model, le) (rate(chirond_time_to_first_token_seconds_bucket"
           f'{{{M},class="interactive"}}[$__rate_interval])))', f"{{{{model}}}} p{int(q * 100)}")
          for q in (0.5, 0.95)]),
        ("TPOT p95 (interactive)", "s",
         [("histogram_quantile(0.95, sum by (model, le) (rate(chirond_time_per_output_token_seconds_bucket"
           f'{{{M},class="interactive"}}[$__rate_interval])))', "{{model}}")]),
        ("End-to-end p95 by class", "s",
         [(f"histogram_quantile(0.95, sum by (model, class, le) (rate(chirond_request_duration_seconds_bucket"
           f"{{{M}}}[$__rate_interval])))", "{{model}} {{class}}")]),
    ]),
    ("SLO attainment", [
        ("SLO attainment, 5 min", "percentunit",
         [(f"sum by (model, class) (rate(chirond_slo_met_total{{{M}}}[5m])) / sum by (model, class) "
           f'(rate(chirond_requests_total{{{M},outcome=~"ok|error"}}[5m]))', "{{model}} {{class}}")]),
        ("SLO attainment since start", "percentunit",
         [(f"chirond_slo_attainment{{{M}}}", "{{model}} {{class}}")]),
    ]),
    ("Instances and GPUs", [
        ("Instances by state", "short",
         [(f"sum by (model, state) (chirond_instances{{{M}}})", "{{model}} {{state}}")]),
        ("Instances by pool (ready)", "short",
         [(f'sum by (model, pool) (chirond_instances{{{M},state="ready"}})', "{{model}} {{pool}}")]),
        ("GPUs held", "short", [("chirond_gpus_in_use", "GPUs")]),
        ("Scaling actions", "ops",
         [(f"sum by (model, action) (rate(chirond_scaling_actions_total{{{M}}}[$__rate_interval]))",
           "{{model}} {{action}}")]),
    ]),
    ("Queues and waiting", [
        ("Queue length", "short", [(f"chirond_queue_length{{{M}}}", "{{model}} {{class}}")]),
        ("Queue wait p95 (cold starts included)", "s",
         [(f"histogram_quantile(0.95, sum by (model, class, le) (rate(chirond_queue_wait_seconds_bucket"
           f"{{{M}}}[$__rate_interval])))", "{{model}} {{class}}")]),
        ("503s for models that cannot start", "reqps",
         [(f'sum by (model) (rate(chirond_requests_total{{{M},outcome="unavailable"}}[$__rate_interval]))',
           "{{model}}")]),
    ]),
    ("Batch backlog and deadlines", [
        ("Batch lines waiting", "short", [(f"chirond_batch_backlog_lines{{{M}}}", "{{model}}")]),
        ("Time to the earliest batch deadline", "s",
         [(f"chirond_batch_next_deadline_seconds{{{M}}} < +Inf", "{{model}}")]),
        ("Preemptions", "ops",
         [(f"sum by (model, reason) (rate(chirond_preemptions_total{{{M}}}[$__rate_interval]))",
           "{{model}} {{reason}}")]),
    ]),
    ("Per-user usage", [
        ("GPU-hours per user (range)", "h",
         [("sum by (user) (increase(chirond_user_gpu_seconds_total[$__range])) / 3600", "{{user}}")]),
        ("Tokens per user", "short",
         [("sum by (user) (rate(chirond_user_tokens_total[$__rate_interval]))", "{{user}}")]),
    ]),
    ("Slurm, SSH and the daemon", [
        ("Failed starts and refused launches", "short",
         [(f"sum by (model) (increase(chirond_instance_start_failures_total{{{M}}}[1h]))", "{{model}} failed starts"),
          (f"sum by (model) (increase(chirond_launch_refusals_total{{{M}}}[1h]))", "{{model}} refused")]),
        ("Instances waiting in the Slurm queue", "short",
         [(f'sum by (model) (chirond_instances{{{M},state="pending"}})', "{{model}}")]),
        ("SSH to the login node", "short", [("chirond_ssh_connected", "{{target}}")]),
        ("Control loop: seconds since its last tick", "s",
         [("time() - chirond_control_loop_last_tick_timestamp_seconds", "age")]),
        ("Control tick p95 and event loop lag", "s",
         [("histogram_quantile(0.95, sum by (le) (rate(chirond_control_tick_seconds_bucket[$__rate_interval])))",
           "tick p95"), ("chirond_event_loop_lag_seconds", "loop lag")]),
        ("Errors by code", "reqps",
         [("sum by (code) (rate(chirond_http_errors_total[$__rate_interval]))", "{{code}}")]),
        ("Process: CPU and memory", "short",
         [("rate(process_cpu_seconds_total{job=\"chirond\"}[$__rate_interval])", "CPU cores"),
          ("process_resident_memory_bytes{job=\"chirond\"} / 2^30", "RSS GiB")]),
        ("Version", "none", [("chirond_build_info", "{{version}}")]),
    ]),
]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row, items in ROWS:
        panels.append({"id": pid, "type": "row", "title": row, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (title, unit, targets) in enumerate(items):
            panels.append({
                "id": pid, "type": "timeseries", "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [{"refId": chr(65 + k), "expr": e, "legendFormat": leg,
                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                            for k, (e, leg) in enumerate(targets)],
            })
            pid += 1
        y += 8 * ((len(items) + 2) // 3)
    return {
        "title": "chirond", "uid": "chirond", "schemaVersion": 39, "version": 1, "editable": True,
        "tags": ["chirond", "llm", "slurm"], "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "model", "type": "query", "label": "model", "includeAll": True, "multi": True,
             "allValue": ".*", "current": {"text": "All", "value": "$__all"},
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(chirond_instances, model)", "refId": "models"},
             "definition": "label_values(chirond_instances, model)", "refresh": 2},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
