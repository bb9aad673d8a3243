"""The Grafana dashboard and the alert rules (deploy/) against a real Prometheus (Debian's
`prometheus` package) scraping a running daemon (local backend, some load): `promtool check
rules` passes, every dashboard and rule expression evaluates without error through Prometheus's
HTTP API, and names only series the daemon exports (or Prometheus's own `up`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from chirond.daemon import Daemon
from tests.support.daemon import client
from tests.support.net import free_port
from tests.support.paths import ROOT
from tests.support.promql import PROMETHEUS_OWN, dashboard_exprs, exported_names, metric_names

DASHBOARD = ROOT / "deploy" / "grafana" / "chirond.json"
RULES = ROOT / "deploy" / "prometheus" / "chirond-rules.yml"
MODEL = "llama-8b"


def _need_prometheus() -> None:
    missing = [p for p in ("prometheus", "promtool") if shutil.which(p) is None]
    assert not missing, f"{missing} not found: apt-get install prometheus (scripts/test.sh does)"


def test_metric_names_are_read_from_expressions() -> None:
    assert metric_names('sum by (model) (rate(a_total{x="y"}[5m])) / b > bool 0.5 and on (m) c') == {
        "a_total", "b", "c"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(h_bucket[1m]))) < +Inf") == {"h_bucket"}
    assert metric_names("time() - t_seconds") == {"t_seconds"}


async def _load(d: Daemon) -> None:
    """Some traffic of each kind: interactive (streamed and not), batch-class, errors."""
    c = client(d)
    msgs = [{"role": "user", "content": "hello"}]
    await asyncio.gather(*(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4) for _ in range(4)))
    stream = await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, stream=True)
    async for _ in stream:
        pass
    await c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4,
                                    extra_headers={"X-Chirond-Class": "batch"})
    with contextlib.suppress(Exception):
        await c.chat.completions.create(model="nope", messages=msgs, max_tokens=4)


async def test_dashboard_and_rules_evaluate_against_a_running_daemon(daemon_factory: Any, tmp_path: Path) -> None:
    _need_prometheus()
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", check.stdout)
    assert found, check.stdout

    d: Daemon = await daemon_factory()
    await _load(d)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{d.port}/metrics") as r:
        exported = exported_names(await r.text())
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "chirond", "static_configs": [{"targets": [f"127.0.0.1:{d.port}"]}]}],
    }))
    log = (tmp_path / "prometheus.log").open("w")
    prom = await asyncio.create_subprocess_exec(
        "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        async with aiohttp.ClientSession() as s:

            async def query(expr: str) -> dict[str, Any]:
                async with s.get(f"{base}/query", params={"query": expr}) as r:
                    body: dict[str, Any] = await r.json()
                    return body

            async def scraped() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    res = await query("chirond_requests_total")
                    return res.get("status") == "success" and bool(res["data"]["result"])
                return False

            for _ in range(300):  # up to 60 s: Prometheus starts, then scrapes every second
                if await scraped():
                    break
                await asyncio.sleep(0.2)
            else:
                log_text = (tmp_path / "prometheus.log").read_text()
                raise AssertionError("Prometheus never scraped the daemon:\n" + log_text)
            await _load(d)  # a second round, so rates over the last minute have two points
            await asyncio.sleep(2.5)

            async with s.get(f"{base}/rules") as r:  # the rules as Prometheus loaded them
                rules = [x for g in (await r.json())["data"]["groups"] for x in g["rules"]]
            assert len(rules) == int(found.group(1))
            exprs = dashboard_exprs(DASHBOARD) + [(x["name"], x["query"]) for x in rules]
            assert len(exprs) > 30
            problems = []
            for where, expr in exprs:
                names = metric_names(expr)
                if not names:
                    problems.append(f"{where}: names no series: {expr}")
                missing = names - exported - PROMETHEUS_OWN
                if missing:
                    problems.append(f"{where}: the daemon does not export {sorted(missing)}: {expr}")
                res = await query(expr)
                if res.get("status") != "success":
                    problems.append(f"{where}: {res.get('errorType')}: {res.get('error')}: {expr}")
            assert not problems, "\n".join(problems)
            # Prometheus evaluates the rules itself every second: none may be in error.
            for _ in range(50):
                async with s.get(f"{base}/rules") as r:
                    rules = [x for g in (await r.json())["data"]["groups"] for x in g["rules"]]
                if all(x.get("health") == "ok" for x in rules):
                    break
                await asyncio.sleep(0.2)
            assert all(x.get("health") == "ok" for x in rules), [(x["name"], x.get("lastError")) for x in rules]
    finally:
        prom.terminate()
        try:
            await asyncio.wait_for(prom.wait(), 15)
        except TimeoutError:
            prom.kill()
            await prom.wait()
        log.close()
