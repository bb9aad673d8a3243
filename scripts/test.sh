#!/usr/bin/env bash
# The project's test command: set up .venv, lint, type-check, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: not a failure of the project.
[ "$rc" -eq 5 ] && rc=0
exit "$rc"
