"""`chirond replay`: the real daemon on this machine against a scenario's workload, K times faster
than real time, as a dry run before buying GPUs and as the check that the simulator and the daemon
agree (ARCHITECTURE.md, principle 2).

plan.py    pure: the generated daemon config, request bodies, batch files, the lag verdict
driver.py  the client: sends the scenario's requests over HTTP on schedule, scrapes /metrics
result.py  pure: what the driver recorded -> the simulator's RunResult (same summary.json, plots)
run.py     the daemon subprocess (one per policy), bounded and always stopped, and the CLI
"""
