#!/usr/bin/env bash
# The project's test command: set up .venv, lint, type-check, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# The integration tests run against a real Slurm (munge, slurmctld, two slurmd with fake GPUs) and
# an sshd, all on 127.0.0.1; this installs and starts them (idempotent, a few seconds when present).
# CHIROND_SKIP_INTEGRATION=1 skips both the bring-up and those tests.
if [ "${CHIROND_SKIP_INTEGRATION:-0}" != 1 ]; then
  bash scripts/loopback-cluster.sh up
fi
# The conformance tier (tests/conformance/) asks the pinned vLLM, installed once into its own cached
# venv outside the clone (about 9 minutes and 9.4 GB the first time; seconds after). Its tests fail
# without it; CHIROND_SKIP_CONFORMANCE=1 skips both the install and those tests.
if [ "${CHIROND_SKIP_CONFORMANCE:-0}" != 1 ]; then
  CHIROND_VLLM_PYTHON=$(bash scripts/vllm-venv.sh | tail -n 1)
  export CHIROND_VLLM_PYTHON
fi
# systemd-analyze checks etc/chirond.service (tests/unit/test_service_unit.py).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get install -y -qq systemd >/dev/null || echo "warning: could not install systemd; unit checks skip"
fi
# Debian's Prometheus runs the dashboard and alert-rule checks (tests/component/test_prometheus.py).
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || echo "warning: could not install prometheus; tests/component/test_prometheus.py will fail"
fi
# Debian's Chromium renders the status page (tests/component/test_status_page.py).
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || echo "warning: could not install chromium; tests/component/test_status_page.py will fail"
fi
.venv/bin/ruff check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: not a failure of the project.
[ "$rc" -eq 5 ] && rc=0
exit "$rc"
