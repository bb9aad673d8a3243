#!/usr/bin/env bash
# README's first command: set up, start chirond on the local backend with simulated vLLM
# instances (etc/demo.toml: no GPU needed), drive a short sample workload from the Azure 2023
# conversation trace through the real openai client (interactive and batch-class requests), print
# per-class latency, SLO attainment and the instances chirond scaled, run a 400-prompt file through
# the Batch API (`chiron batch submit --wait`), show `chiron status`, then stop the daemon cleanly.
#
#   bash scripts/demo.sh            # about 3.5 minutes, then exits
#   bash scripts/demo.sh --keep     # same, then leaves chirond serving until Ctrl-C
#   DEMO_ARGS="--duration-s 30 --rate 3" bash scripts/demo.sh   # other `chiron load` options
#
# The daemon's log (one line per control tick) is in out/demo/chirond.log, the per-request
# records in out/demo/load.json.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1
mkdir -p out/demo
echo "setting up .venv (log: out/demo/setup.log)"
bash scripts/setup.sh >out/demo/setup.log 2>&1 || { cat out/demo/setup.log; exit 1; }
.venv/bin/chirond check-config etc/demo.toml
url=http://127.0.0.1:8000
if .venv/bin/python - "$url" <<'EOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/health", timeout=1)
EOF
  echo "error: something already answers on $url; stop it first" >&2
  exit 1
fi
.venv/bin/chirond serve --config etc/demo.toml >out/demo/chirond.log 2>&1 &
pid=$!
stop() {
  if kill -0 "$pid" 2>/dev/null; then
    echo "stopping chirond (SIGTERM: in-flight requests finish, instances stop)"
    kill -TERM "$pid"
    wait "$pid" || true
  fi
}
trap stop EXIT
# Wait (bounded) until the daemon answers and its first instance is live.
.venv/bin/python - "$url" <<'EOF'
import json, sys, time, urllib.request
url = sys.argv[1]
end = time.time() + 90
while time.time() < end:
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
            if any(m.get("state") == "live" for m in json.load(r)["data"]):
                print(f"chirond is serving at {url}/v1")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("error: chirond did not become live within 90 s; see out/demo/chirond.log")
EOF
rc=0
# shellcheck disable=SC2086
.venv/bin/chiron load --url "$url/v1" --model llama-8b --duration-s 90 --rate 12 \
  --batch-requests 300 --batch-concurrency 64 --json-out out/demo/load.json ${DEMO_ARGS:-} || rc=$?
echo
# The Batch API: 400 prompts as one file, run on the capacity the interactive load leaves, results
# downloaded when done (`chiron batch submit --wait`); then chirond's own view of itself.
.venv/bin/python - out/demo/prompts.jsonl <<'EOF'
import json, sys
topics = ["Slurm", "vLLM", "KV caches", "batch deadlines", "GPU autoscaling", "SLOs", "A100s", "login nodes"]
with open(sys.argv[1], "w") as f:
    for i in range(400):
        line = {"custom_id": f"prompt-{i}", "prompt": f"Explain {topics[i % 8]} in one paragraph ({i}).", "max_tokens": 64}
        f.write(json.dumps(line) + "\n")
EOF
export CHIROND_URL="$url/v1" CHIROND_API_KEY=none CHIROND_SOCKET=out/demo-state/control.sock
.venv/bin/chiron batch submit out/demo/prompts.jsonl --model llama-8b --window 1h --wait \
  --out out/demo/prompts.output.jsonl || rc=$?
.venv/bin/chiron status || rc=$?
.venv/bin/chiron usage --all || rc=$?   # open auth: every caller is "anonymous"
echo
echo "control decisions (one line per tick with its reason; actions only):"
grep -E "launch|drain|ready at|stopping|failed" out/demo/chirond.log | sed -E 's/^[0-9-]+ //' | tail -n 25 || true
echo "full daemon log: out/demo/chirond.log; per-request records: out/demo/load.json"
if [ "$keep" = 1 ]; then
  echo "chirond keeps serving at $url/v1 (OPENAI_BASE_URL=$url/v1 OPENAI_API_KEY=none); Ctrl-C to stop"
  wait "$pid" || true
fi
exit "$rc"
