#!/usr/bin/env bash
# Re-records the Slurm command output in this directory from the loopback cluster
# (bash scripts/loopback-cluster.sh up). Needs an empty queue and idle nodes; leaves both that way.
# Job commands run as the test user over the loopback sshd, as chirond will; drain/resume as root.
# See README.md here for what each file shows.
set -euo pipefail
OUT=$(cd "$(dirname "$0")" && pwd)
STATE=${CHIROND_LOOPBACK_DIR:-/tmp/chirond-loopback}
[ -s "$STATE/cluster.json" ] || { echo "no loopback cluster: run: bash scripts/loopback-cluster.sh up" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (drains a node)" >&2; exit 1; }

rsh() {
  ssh -F /dev/null -i "$STATE/ssh/id_ed25519" -p 2222 -o BatchMode=yes -o IdentitiesOnly=yes \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$STATE/ssh/known_hosts" \
    -o GlobalKnownHostsFile=/dev/null chirond-test@127.0.0.1 "$@" </dev/null
}
state_of() { rsh "squeue -h -t all -j $1 -o %T"; }
reason_of() { rsh "squeue -h -t all -j $1 -o %r"; }
wait_state() { # JOBID STATE...
  local job=$1 s i
  shift
  for ((i = 0; i < 100; i++)); do
    s=$(state_of "$job")
    for want in "$@"; do [ "$s" = "$want" ] && return 0; done
    sleep 0.2
  done
  echo "job $job is '$s', not $*" >&2
  return 1
}
uuid() { python3 -c 'import uuid; print(uuid.uuid4())'; }

if [ -n "$(squeue -h -o %A)" ]; then
  echo "the queue is not empty: cancel those jobs first (squeue)" >&2
  exit 1
fi
# finished jobs stay in 'squeue -t all' for MinJobAge (120 s, purged up to a minute later): wait
# them out so that only this script's jobs show
for ((i = 0; i < 100; i++)); do
  [ -z "$(squeue -h -t all -o %A)" ] && break
  [ "$i" = 0 ] && echo "waiting (up to 200 s) for finished jobs to leave squeue -t all"
  sleep 2
done
[ -z "$(squeue -h -t all -o %A)" ] || { echo "finished jobs still in squeue -t all" >&2; exit 1; }
cleanup() { # also on failure: no job of the test user left, gpu02 back
  scancel -u chirond-test 2>/dev/null || true
  scontrol update nodename=gpu02 state=resume 2>/dev/null || true
}
trap cleanup EXIT
scontrol update nodename=gpu02 state=resume 2>/dev/null || true

submit() { # NAME EXTRA_SBATCH_ARGS... -- COMMAND ; prints sbatch --parsable output
  local name=$1
  shift
  rsh "sbatch --parsable -p a100 -J $name --comment chirond:$(uuid) --time=30 -o '%x-%j.out' $*"
}

echo "== COMPLETED, FAILED (exit 3), CANCELLED"
done_id=$(submit chirond-llama-8b-4 "--gres=gpu:a100:1 -w gpu01 --wrap 'true'")
fail_id=$(submit chirond-llama-8b-5 "--gres=gpu:a100:1 -w gpu01 --wrap 'exit 3'")
canc_id=$(submit chirond-llama-8b-6 "--gres=gpu:a100:1 -w gpu02 --wrap 'sleep 600'")
wait_state "$canc_id" RUNNING
rsh "scancel $canc_id"
echo "== RUNNING with a comment (its sbatch --parsable output -> sbatch-parsable.txt)"
run_uuid=$(uuid)
rsh "sbatch --parsable -p a100 -J chirond-llama-8b-7 --comment chirond:$run_uuid --time=60 \
  --gres=gpu:a100:1 -w gpu01 -o '%x-%j.out' --wrap 'sleep 600'" >"$OUT/sbatch-parsable.txt"
run_id=$(cut -d';' -f1 "$OUT/sbatch-parsable.txt")
wait_state "$run_id" RUNNING
echo "== drain gpu02; PENDING jobs: ReqNodeNotAvail (pinned to gpu02), Resources (4 GPUs, gpu01 has 3 free)"
scontrol update nodename=gpu02 state=drain reason="chirond-test: recorded drain"
pend_node=$(submit chirond-llama-8b-8 "--gres=gpu:a100:1 -w gpu02 --wrap 'sleep 600'")
pend_res=$(submit chirond-llama-70b-2 "--gres=gpu:a100:4 --wrap 'sleep 600'")
wait_state "$done_id" COMPLETED
wait_state "$fail_id" FAILED
wait_state "$canc_id" CANCELLED
for j in "$pend_node" "$pend_res"; do
  for ((i = 0; i < 50; i++)); do
    r=$(reason_of "$j")
    [ "$r" != None ] && break
    sleep 0.2
  done
done
echo "   pending reasons: $pend_node=$(reason_of "$pend_node") $pend_res=$(reason_of "$pend_res")"

echo "== recording"
rsh "sinfo --version" >"$OUT/version.txt"
rsh "squeue --json -t all" >"$OUT/squeue-all.json"
rsh "sinfo --json" >"$OUT/sinfo-drain.json"
rsh "squeue -h -t all -o '%i|%T|%N|%b|%M|%l|%j|%R'" >"$OUT/squeue-format.txt"
rsh "sacct -c -P -o jobid,jobname,partition,state,exitcode,nodelist,start,end \
  -j $done_id,$fail_id,$canc_id,$run_id,$pend_node,$pend_res" >"$OUT/sacct-c.txt"

echo "== cleanup: cancel, resume gpu02"
rsh "scancel $run_id $pend_node $pend_res"
scontrol update nodename=gpu02 state=resume
for j in "$run_id" "$pend_node" "$pend_res"; do wait_state "$j" CANCELLED; done
rsh 'rm -f chirond-llama-*.out'
python3 -m json.tool "$OUT/squeue-all.json" >/dev/null
python3 -m json.tool "$OUT/sinfo-drain.json" >/dev/null
ls -l "$OUT"
