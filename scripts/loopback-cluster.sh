#!/usr/bin/env bash
# A real Slurm 22.05 cluster (several fake-GPU nodes) and an sshd, all on 127.0.0.1, for chirond's
# integration tests. For a Debian 12 machine without systemd as PID 1; runs as root (re-runs itself
# with sudo otherwise).
#
#   bash scripts/loopback-cluster.sh up       install (first time), configure, start, wait until usable
#   bash scripts/loopback-cluster.sh status   daemons, sinfo, squeue, and whether sshd answers
#   bash scripts/loopback-cluster.sh down     cancel all jobs, stop the daemons (packages stay)
#
# Everything it writes lives in the state dir ($CHIROND_LOOPBACK_DIR, default /tmp/chirond-loopback),
# except: the packages, the user chirond-test (~/.ssh/authorized_keys), the symlinks
# /etc/slurm/{slurm,gres}.conf -> <state dir>/etc/ (so plain `sinfo` works, also over SSH),
# /etc/munge/munge.key (when the package did not make one), /run/munge and /run/sshd.
# The facts this rests on: docs in tests/integration/README.md.
set -euo pipefail

DIR=${CHIROND_LOOPBACK_DIR:-/tmp/chirond-loopback}
NNODES=${CHIROND_LOOPBACK_NODES:-2}
SSH_PORT=${CHIROND_LOOPBACK_SSH_PORT:-2222}
CTLD_PORT=${CHIROND_LOOPBACK_CTLD_PORT:-16817}
SLURMD_BASE_PORT=${CHIROND_LOOPBACK_SLURMD_BASE_PORT:-17000}   # gpu01 -> 17001, gpu02 -> 17002, ...
CLUSTER=chirond-test
TEST_USER=chirond-test
PARTITION=a100
GPU_TYPE=a100
GPUS_PER_NODE=4
CPUS_PER_NODE=16        # declared (SlurmdParameters=config_overrides); the machine may have 2 cores
MEM_PER_NODE=65536      # MB, declared
PACKAGES=(munge slurmctld slurmd slurm-client openssh-server openssh-sftp-server)

ETC=$DIR/etc RUN=$DIR/run LOG=$DIR/log SSHD_DIR=$DIR/ssh
SLURM_CONF=$ETC/slurm.conf
GRES_CONF=$ETC/gres.conf
SSH_KEY=$SSHD_DIR/id_ed25519
KNOWN_HOSTS=$SSHD_DIR/known_hosts
SSHD_CONFIG=$SSHD_DIR/sshd_config
SSHD_PID=$RUN/sshd.pid
CTLD_PID=$RUN/slurmctld.pid
MUNGE_PID=/run/munge/munged.pid
MUNGE_KEY=/etc/munge/munge.key

log() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
tail_log() {
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    printf -- '--- last 25 lines of %s ---\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
}
# die MESSAGE [LOGFILE...]: print the message and the tails of the logs that explain it
die() {
  printf 'ERROR: %s\n' "$1" >&2
  shift
  tail_log "$@"
  exit 1
}

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

nodes() {
  local i
  for ((i = 1; i <= NNODES; i++)); do printf 'gpu%02d\n' "$i"; done
}
node_port() { echo $((SLURMD_BASE_PORT + 10#${1#gpu})); }

# proc_live PID: the process exists and is not a zombie (daemons are children of PID 1, which
# here may take seconds to reap them)
proc_live() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# pid_alive PIDFILE NAME: the PID file names a live process whose command is NAME
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(head -n1 "$1" | tr -dc '0-9')
  [ -n "$pid" ] && proc_live "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# stop_pidfile PIDFILE NAME: TERM, wait up to 10 s, then KILL; only the process the PID file names
stop_pidfile() {
  local f=$1 name=$2 pid i
  if ! pid_alive "$f" "$name"; then
    note "$name: not running"
    rm -f "$f"
    return 0
  fi
  pid=$(head -n1 "$f" | tr -dc '0-9')
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    proc_live "$pid" || break
    sleep 0.1
  done
  if proc_live "$pid"; then
    warn "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s until COMMAND succeeds
wait_for() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      warn "timed out after ${limit}s waiting for: $what"
      return 1
    fi
    sleep 0.2
  done
}

stimeout() { timeout 15 "$@"; }   # a Slurm client command that cannot hang the script

# ---------------------------------------------------------------------------------------------- up

install_packages() {
  local missing=() p own_policy=0 rc=0
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "packages installed already: ${PACKAGES[*]} (skipping apt)"
    return 0
  fi
  log "installing ${missing[*]} with apt-get (log: $LOG/apt.log)"
  # apt's postinst scripts would start the services: a policy-rc.d that exits 101 forbids that.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from chirond scripts/loopback-cluster.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  else
    note "/usr/sbin/policy-rc.d exists already: keeping it"
  fi
  local apt=(timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=120
             -o Dpkg::Options::=--force-confold)
  # the package lists may be stale or missing: update only when installing without it fails
  if ! "${apt[@]}" install --no-install-recommends "${missing[@]}" >"$LOG/apt.log" 2>&1; then
    note "apt-get install failed without an update: apt-get update, then again"
    { "${apt[@]}" update && "${apt[@]}" install --no-install-recommends "${missing[@]}"; } >>"$LOG/apt.log" 2>&1 ||
      rc=$?
  fi
  if ((own_policy)); then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  ((rc == 0)) || die "apt-get failed (rc $rc)" "$LOG/apt.log"
  note "installed: $(dpkg-query -W -f='${Version}' slurmctld) slurm, $(dpkg-query -W -f='${Version}' munge) munge"
}

make_dirs() {
  mkdir -p "$DIR" "$ETC" "$RUN" "$LOG" "$SSHD_DIR" "$DIR/state" "$DIR/spool" "$DIR/dev"
  chmod 755 "$DIR" "$ETC" "$RUN" "$LOG" "$DIR/spool" "$DIR/dev"
  chmod 700 "$DIR/state"
  chmod 755 "$SSHD_DIR"
}

# install_if_changed NEW DEST: move NEW over DEST when they differ; return 0 when DEST changed
install_if_changed() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    rm -f "$1"
    return 1
  fi
  mv -f "$1" "$2"
  return 0
}

SLURM_CONFIG_CHANGED=0
write_slurm_config() {
  local host n node_list
  host=$(hostname -s)
  node_list="gpu[01-$(printf '%02d' "$NNODES")]"
  log "writing $SLURM_CONF and $GRES_CONF ($NNODES nodes $node_list, ${GPUS_PER_NODE}x fake $GPU_TYPE each)"
  {
    cat <<EOF
# Written by chirond scripts/loopback-cluster.sh: do not edit (rewritten by every 'up').
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# sacct -c reads this completion log (no slurmdbd here)
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
# the declared CPUs/memory below count, not what the machine has
SlurmdParameters=config_overrides
ReturnToService=1
# finished jobs stay in 'squeue -t all' this long (s)
MinJobAge=120
KillWait=2
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
SchedulerParameters=bf_interval=1,sched_interval=2
EOF
    while read -r n; do
      echo "NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$(node_port "$n") CPUs=$CPUS_PER_NODE" \
        "RealMemory=$MEM_PER_NODE Gres=gpu:$GPU_TYPE:$GPUS_PER_NODE State=UNKNOWN"
    done < <(nodes)
    echo "PartitionName=$PARTITION Nodes=$node_list Default=YES MaxTime=INFINITE State=UP"
  } >"$SLURM_CONF.new"
  {
    echo "# Written by chirond scripts/loopback-cluster.sh. Fake GPUs: each File= is a symlink to /dev/null."
    echo "AutoDetect=off"
    while read -r n; do
      mkdir -p "$DIR/dev/$n" "$DIR/spool/$n"
      for ((i = 0; i < GPUS_PER_NODE; i++)); do ln -sfn /dev/null "$DIR/dev/$n/nvidia$i"; done
      echo "NodeName=$n Name=gpu Type=$GPU_TYPE File=$DIR/dev/$n/nvidia[0-$((GPUS_PER_NODE - 1))]"
    done < <(nodes)
  } >"$GRES_CONF.new"
  local changed=0
  install_if_changed "$SLURM_CONF.new" "$SLURM_CONF" && changed=1
  install_if_changed "$GRES_CONF.new" "$GRES_CONF" && changed=1
  SLURM_CONFIG_CHANGED=$changed
  chmod 644 "$SLURM_CONF" "$GRES_CONF"
  # Slurm's clients (sinfo, sbatch, ... also in SSH sessions) read /etc/slurm/slurm.conf.
  mkdir -p /etc/slurm
  local f
  for f in slurm.conf gres.conf; do
    if [ -e "/etc/slurm/$f" ] && [ ! -L "/etc/slurm/$f" ]; then
      warn "/etc/slurm/$f is not ours: moved to /etc/slurm/$f.chirond-bak"
      mv -f "/etc/slurm/$f" "/etc/slurm/$f.chirond-bak"
    fi
    ln -sfn "$ETC/$f" "/etc/slurm/$f"
  done
  note "/etc/slurm/slurm.conf -> $SLURM_CONF"
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if [ ! -s "$MUNGE_KEY" ]; then
    log "creating $MUNGE_KEY"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$MUNGE_KEY" --force
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge "$MUNGE_KEY"
  chmod 400 "$MUNGE_KEY"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  if munge_works; then
    log "munged: running already"
    return 0
  fi
  log "starting munged (as user munge; pid file $MUNGE_PID)"
  runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$LOG/munged.start.log" 2>&1 9>&- ||
    die "munged did not start" "$LOG/munged.start.log" /var/log/munge/munged.log
  wait_for 10 "munge credentials" munge_works ||
    die "munged does not answer" "$LOG/munged.start.log" /var/log/munge/munged.log
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

slurm_stop_daemons() {
  local f
  # every slurmd with a PID file, also of nodes an earlier CHIROND_LOOPBACK_NODES had
  for f in "$RUN"/slurmd-*.pid; do
    [ -e "$f" ] && stop_pidfile "$f" slurmd
  done
  stop_pidfile "$CTLD_PID" slurmctld
}

start_slurmctld() {
  if pid_alive "$CTLD_PID" slurmctld; then
    log "slurmctld: running already (pid $(cat "$CTLD_PID"))"
  else
    port_open "$CTLD_PORT" && die "port $CTLD_PORT is taken by another process: $(ss -ltnpH "sport = :$CTLD_PORT")"
    log "starting slurmctld (port $CTLD_PORT; log $LOG/slurmctld.log)"
    /usr/sbin/slurmctld -f "$SLURM_CONF" </dev/null >>"$LOG/slurmctld.start.log" 2>&1 9>&- ||
      die "slurmctld did not start" "$LOG/slurmctld.start.log" "$LOG/slurmctld.log"
  fi
  wait_for 20 "slurmctld to answer 'scontrol ping'" ctld_up ||
    die "slurmctld does not answer" "$LOG/slurmctld.start.log" "$LOG/slurmctld.log"
}

start_slurmds() {
  local n port
  while read -r n; do
    if pid_alive "$RUN/slurmd-$n.pid" slurmd; then
      log "slurmd $n: running already (pid $(cat "$RUN/slurmd-$n.pid"))"
      continue
    fi
    port=$(node_port "$n")
    port_open "$port" && die "port $port (slurmd $n) is taken by another process: $(ss -ltnpH "sport = :$port")"
    log "starting slurmd -N $n (port $port; log $LOG/slurmd-$n.log)"
    /usr/sbin/slurmd -f "$SLURM_CONF" -N "$n" </dev/null >>"$LOG/slurmd-$n.start.log" 2>&1 9>&- ||
      die "slurmd $n did not start" "$LOG/slurmd-$n.start.log" "$LOG/slurmd-$n.log"
  done < <(nodes)
}

# all nodes of the partition idle, mixed or allocated, and responding (no '*' suffix)
nodes_usable() {
  local states
  states=$(stimeout sinfo -h -N -p "$PARTITION" -o '%N %t' 2>/dev/null) || return 1
  [ "$(printf '%s\n' "$states" | grep -c .)" -eq "$NNODES" ] || return 1
  ! printf '%s\n' "$states" | awk '{print $2}' | grep -qvE '^(idle|mix|alloc)$'
}

wait_nodes() {
  log "waiting (up to 30 s) until sinfo shows the nodes idle"
  local deadline=$((SECONDS + 30)) n st resumed=" "
  while ! nodes_usable; do
    # a node left drained/down by an earlier session (state survives restarts): resume it once
    while read -r n st; do
      case $st in
        drain | drng | down | fail | failg | maint | inval)
          if [[ $resumed != *" $n "* ]]; then
            note "$n is '$st' (reason: $(sinfo -h -n "$n" -o '%E')): scontrol update state=resume"
            scontrol update nodename="$n" state=resume 2>&1 | sed 's/^/    /' || true
            resumed+="$n "
          fi
          ;;
      esac
    done < <(stimeout sinfo -h -N -p "$PARTITION" -o '%N %t' 2>/dev/null || true)
    if ((SECONDS >= deadline)); then
      stimeout sinfo -N -l >&2 || true
      local logs=("$LOG/slurmctld.log")
      while read -r n; do logs+=("$LOG/slurmd-$n.log"); done < <(nodes)
      die "nodes did not become idle within 30 s" "${logs[@]}"
    fi
    sleep 0.3
  done
  stimeout sinfo -N -p "$PARTITION" -o '%N %P %t %c %G' | sed 's/^/    /'
}

setup_user() {
  if ! id "$TEST_USER" >/dev/null 2>&1; then
    log "creating user $TEST_USER"
    useradd --create-home --shell /bin/bash "$TEST_USER"
  fi
  # no password, but not 'locked' either (sshd refuses locked accounts even for keys)
  usermod -p '*' "$TEST_USER"
  local home
  home=$(getent passwd "$TEST_USER" | cut -d: -f6)
  if [ ! -s "$SSH_KEY" ]; then
    log "creating the client key pair $SSH_KEY"
    ssh-keygen -q -t ed25519 -N '' -C "$TEST_USER@chirond-loopback" -f "$SSH_KEY"
  fi
  install -d -m 700 -o "$TEST_USER" -g "$TEST_USER" "$home/.ssh"
  install -m 600 -o "$TEST_USER" -g "$TEST_USER" "$SSH_KEY.pub" "$home/.ssh/authorized_keys"
  # whoever ran this script (through sudo or not) can read the private key
  local owner=${SUDO_USER:-root}
  chown "$owner" "$SSH_KEY" "$SSH_KEY.pub"
  chmod 600 "$SSH_KEY"
}

ssh_works() {
  timeout 10 ssh -F /dev/null -i "$SSH_KEY" -p "$SSH_PORT" -o BatchMode=yes -o IdentitiesOnly=yes \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$KNOWN_HOSTS" -o GlobalKnownHostsFile=/dev/null \
    -o ConnectTimeout=5 "$TEST_USER@127.0.0.1" true </dev/null
}

start_sshd() {
  if [ ! -s "$SSHD_DIR/ssh_host_ed25519_key" ]; then
    log "creating the sshd host key"
    ssh-keygen -q -t ed25519 -N '' -C chirond-loopback-host -f "$SSHD_DIR/ssh_host_ed25519_key"
  fi
  local hostkey
  hostkey=$(cut -d' ' -f1,2 "$SSHD_DIR/ssh_host_ed25519_key.pub")
  printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n' "$SSH_PORT" "$hostkey" "$SSH_PORT" "$hostkey" >"$KNOWN_HOSTS"
  chmod 644 "$KNOWN_HOSTS"
  cat >"$SSHD_CONFIG.new" <<EOF
# Written by chirond scripts/loopback-cluster.sh: an sshd for the integration tests only.
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSHD_DIR/ssh_host_ed25519_key
PidFile $SSHD_PID
AllowUsers $TEST_USER
PermitRootLogin no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# chirond forwards ports over SSH to reach the vLLM servers
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
PrintLastLog no
MaxStartups 64:30:128
MaxSessions 64
Subsystem sftp internal-sftp
LogLevel INFO
EOF
  local changed=0
  install_if_changed "$SSHD_CONFIG.new" "$SSHD_CONFIG" && changed=1
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  /usr/sbin/sshd -t -f "$SSHD_CONFIG" >"$LOG/sshd.check.log" 2>&1 ||
    die "sshd rejects $SSHD_CONFIG" "$LOG/sshd.check.log"
  if pid_alive "$SSHD_PID" sshd; then
    if ((changed)); then
      log "sshd config changed: restarting sshd"
      stop_pidfile "$SSHD_PID" sshd
    else
      log "sshd: running already (pid $(cat "$SSHD_PID"), 127.0.0.1:$SSH_PORT)"
    fi
  fi
  if ! pid_alive "$SSHD_PID" sshd; then
    port_open "$SSH_PORT" && die "port $SSH_PORT is taken by another process: $(ss -ltnpH "sport = :$SSH_PORT")"
    log "starting sshd on 127.0.0.1:$SSH_PORT (config $SSHD_CONFIG; log $LOG/sshd.log)"
    /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$LOG/sshd.log" </dev/null >>"$LOG/sshd.start.log" 2>&1 9>&- ||
      die "sshd did not start" "$LOG/sshd.start.log" "$LOG/sshd.log"
  fi
  wait_for 10 "ssh $TEST_USER@127.0.0.1:$SSH_PORT" ssh_works ||
    die "cannot log in over SSH as $TEST_USER" "$LOG/sshd.log"
}

write_summary() {
  local node_json
  node_json=$(nodes | sed 's/.*/"&"/' | paste -sd, -)
  cat >"$DIR/cluster.json.new" <<EOF
{
  "state_dir": "$DIR",
  "cluster": "$CLUSTER",
  "partition": "$PARTITION",
  "nodes": [$node_json],
  "gpu_type": "$GPU_TYPE",
  "gpus_per_node": $GPUS_PER_NODE,
  "cpus_per_node": $CPUS_PER_NODE,
  "slurm_conf": "$SLURM_CONF",
  "ssh_host": "127.0.0.1",
  "ssh_port": $SSH_PORT,
  "ssh_user": "$TEST_USER",
  "ssh_key": "$SSH_KEY",
  "known_hosts": "$KNOWN_HOSTS",
  "log_dir": "$LOG"
}
EOF
  mv -f "$DIR/cluster.json.new" "$DIR/cluster.json"
  chmod 644 "$DIR/cluster.json"
}

cmd_up() {
  local t0=$SECONDS
  make_dirs
  install_packages
  write_slurm_config
  setup_user
  # sacct -c opens the completion log for appending (O_WRONLY|O_CREAT) even to read it: let the
  # test user's group write it, or 'sacct -c' fails with "Permission denied" for that user
  touch "$LOG/jobcomp.txt"
  chown "root:$TEST_USER" "$LOG/jobcomp.txt"
  chmod 664 "$LOG/jobcomp.txt"
  start_munge
  if ((SLURM_CONFIG_CHANGED)) && { pid_alive "$CTLD_PID" slurmctld || [ -n "$(compgen -G "$RUN/slurmd-*.pid")" ]; }; then
    log "Slurm config changed: restarting slurmctld and slurmd (jobs survive)"
    slurm_stop_daemons
  fi
  start_slurmctld
  start_slurmds
  wait_nodes
  start_sshd
  write_summary
  log "up in $((SECONDS - t0)) s. Loopback cluster '$CLUSTER':"
  cat <<EOF
    partition     $PARTITION (default): $(nodes | paste -sd' ' -), ${GPUS_PER_NODE}x gpu:$GPU_TYPE each (fake)
    slurm.conf    $SLURM_CONF  (/etc/slurm/slurm.conf links to it)
    gres.conf     $GRES_CONF
    logs          $LOG/
    ssh           ssh -F /dev/null -i $SSH_KEY -p $SSH_PORT \\
                    -o UserKnownHostsFile=$KNOWN_HOSTS -o StrictHostKeyChecking=yes $TEST_USER@127.0.0.1
    ssh key       $SSH_KEY
    known_hosts   $KNOWN_HOSTS
    sshd config   $SSHD_CONFIG
    summary       $DIR/cluster.json
    tests         pytest tests/integration
    stop          bash scripts/loopback-cluster.sh down
EOF
}

# -------------------------------------------------------------------------------------------- down

no_active_jobs() { [ -z "$(stimeout squeue -h -t running,completing,configuring,suspended -o %A)" ]; }

cmd_down() {
  if [ -f "$SLURM_CONF" ] && ctld_up; then
    local jobs
    jobs=$(stimeout squeue -h -o '%A' | paste -sd' ' -) || true
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs || true
    else
      log "no jobs to cancel"
    fi
    # slurmstepd outlives slurmd: let the jobs end before the daemons go
    wait_for 20 "jobs to end" no_active_jobs ||
      warn "jobs still running: $(stimeout squeue -h -o '%A %T %N' | paste -sd';' -)"
  else
    log "slurmctld not answering: no jobs to cancel"
  fi
  if [ -f "$SLURM_CONF" ]; then
    slurm_stop_daemons
  else
    note "no $SLURM_CONF: nothing of Slurm to stop"
  fi
  stop_pidfile "$SSHD_PID" sshd
  stop_pidfile "$MUNGE_PID" munged
  local left
  left=$(pgrep -x slurmstepd | paste -sd' ' -) || true
  [ -z "$left" ] || warn "slurmstepd processes remain (pids $left)"
  log "down (packages stay installed; state in $DIR)"
}

# ------------------------------------------------------------------------------------------ status

cmd_status() {
  local ok=0 n
  log "daemons"
  if munge_works; then note "munged     up"; else note "munged     DOWN"; ok=1; fi
  if pid_alive "$CTLD_PID" slurmctld; then note "slurmctld  up (pid $(cat "$CTLD_PID"))"; else note "slurmctld  DOWN"; ok=1; fi
  while read -r n; do
    if pid_alive "$RUN/slurmd-$n.pid" slurmd; then
      note "slurmd $n  up (pid $(cat "$RUN/slurmd-$n.pid"))"
    else
      note "slurmd $n  DOWN"
      ok=1
    fi
  done < <(nodes)
  if pid_alive "$SSHD_PID" sshd; then note "sshd       up (pid $(cat "$SSHD_PID"))"; else note "sshd       DOWN"; ok=1; fi
  log "sinfo"
  if ctld_up; then
    stimeout sinfo -N -o '%N %P %t %c %G %E' | sed 's/^/    /'
    nodes_usable || { note "(some nodes are not idle/mixed/allocated)"; ok=1; }
    log "squeue"
    stimeout squeue -o '%i %j %u %T %M %N %b %R' | sed 's/^/    /'
  else
    note "slurmctld does not answer"
    ok=1
  fi
  log "ssh $TEST_USER@127.0.0.1:$SSH_PORT"
  if [ -s "$SSH_KEY" ] && ssh_works 2>/dev/null; then note "answers (key login, strict host key check)"; else note "does NOT answer"; ok=1; fi
  return "$ok"
}

# --------------------------------------------------------------------------------------------- main

case ${1:-} in
  up | down | status) ;;
  -h | --help | help)
    usage
    exit 0
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "must run as root (no sudo here)"
  exec sudo -- env CHIROND_LOOPBACK_DIR="$DIR" CHIROND_LOOPBACK_NODES="$NNODES" CHIROND_LOOPBACK_SSH_PORT="$SSH_PORT" \
    CHIROND_LOOPBACK_CTLD_PORT="$CTLD_PORT" CHIROND_LOOPBACK_SLURMD_BASE_PORT="$SLURMD_BASE_PORT" \
    bash "$(readlink -f "$0")" "$@"
fi

[[ $NNODES =~ ^[1-9][0-9]?$ ]] || die "CHIROND_LOOPBACK_NODES must be 1..99 (got '$NNODES')"

# one up/down/status at a time
if [ "$1" != status ] || [ -d "$DIR" ]; then
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 120 9 || die "another loopback-cluster.sh holds $DIR/.lock"
fi

"cmd_$1"
