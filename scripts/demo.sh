#!/usr/bin/env bash
# The main job until the daemon lands: simulate the reduced paper scenario with every policy,
# print the side-by-side table, write summary.json and plots to out/paper-small/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/chirond simulate benchmarks/scenarios/paper-small.toml --out out/paper-small "$@"
