#!/usr/bin/env bash
# tests/slurm_local.sh -- a real one-node SLURM cluster on this machine.
#
# What it is for: checking `needles-sweep --executor=slurm` (job arrays,
# USR2 pre-emption signal, requeue) by hand against a real SLURM controller
# and node daemon. It is NOT part of the test suite: ./run.sh test never
# calls it, and nothing in tests/ depends on it.
#
# Needs root, Debian/Ubuntu (apt-get), no systemd. It installs slurm-wlm and
# munge if they are missing, writes /etc/slurm/slurm.conf (one node named
# after `hostname -s`, CPUs=$(nproc), one default partition `local`), and
# starts munged, slurmctld and slurmd as plain daemons.
#
# Usage:
#   sudo tests/slurm_local.sh start    # install if needed, configure, start, wait for the node to be idle
#   sudo tests/slurm_local.sh status   # daemons, sinfo, squeue
#   sudo tests/slurm_local.sh stop     # stop slurmd, slurmctld, munged
#
# Then, e.g.:
#   sbatch --array=0-1 --wrap 'sleep 60'; squeue
#   scancel --signal=USR2 <jobid>_0; scontrol requeue <jobid>
# The sweep check (two runs; a preemption simulated with USR2, then requeued and resumed):
#   .venv/bin/needles-sweep --experiment=FILE.toml --root=/tmp/study --executor=slurm \
#       --slurm_partition=local --slurm_gpus=0 --slurm_cpus=1 --slurm_time=30
#   scancel --signal=USR2 <array id>_0     # while task 0 trains
# Notes: `scancel --signal=X` reaches job *steps* (srun) only; a plain batch
# script without srun needs `scancel -b` (shell) or `-f` (shell + children).
# No accounting here, so `sacct` fails ("accounting storage is disabled").
# Logs: /var/log/slurm/{slurmctld,slurmd}.log, /var/log/munge/munged.log
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
PARTITION=local

say() { printf '[slurm_local] %s\n' "$*"; }
die() { printf '[slurm_local] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root (e.g. sudo $0 $*)"
}

# pid of a running daemon by exact process name (ours only: pidof on the name).
running() { pidof -x "$1" >/dev/null 2>&1; }

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    say "installing slurm-wlm and munge with apt-get (takes a minute)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

setup_munge() {
    id munge >/dev/null 2>&1 || die "user 'munge' is missing (the munge package creates it)"
    install -d -o munge -g munge -m 0700 /etc/munge
    if [[ ! -s $MUNGE_KEY ]]; then
        say "creating $MUNGE_KEY"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
}

start_munge() {
    if running munged; then
        say "munged already running"
    else
        say "starting munged"
        # munged refuses stale sockets/pid files left by a killed daemon.
        rm -f "$MUNGE_RUN"/munge.socket.2 "$MUNGE_RUN"/munge.socket.2.lock "$MUNGE_RUN"/munged.pid
        su -s /bin/sh munge -c "/usr/sbin/munged"
    fi
    for _ in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.5
    done
    die "munge does not work (see /var/log/munge/munged.log)"
}

write_conf() {
    local host cpus mem_mb real_mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
    # A bit under the machine's memory, so slurmd never reports too little.
    real_mem=$(( mem_mb * 9 / 10 ))
    install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$RUN_DIR"
    install -d -m 0755 "$STATE_DIR" "$SPOOL_DIR"
    say "writing $CONF (node $host, CPUs=$cpus, RealMemory=$real_mem)"
    cat >"$CONF" <<EOF
# Written by tests/slurm_local.sh -- one-node cluster for manual checks.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire+1 s before it may start again (default
# 120 s); 30 s keeps a manual requeue check short.
AuthInfo=cred_expire=30
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look for newly eligible (e.g. requeued) jobs every few seconds, not 30-60 s.
SchedulerParameters=sched_interval=10,bf_interval=5
ReturnToService=2
JobRequeue=1
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
# SIGTERM -> SIGKILL grace on cancel/requeue (slurm default 30 s).
KillWait=30
Waittime=0
NodeName=$host CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # slurm 22.05 wants a cgroup.conf only with cgroup plugins; none used here.
}

node_state() {
    sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | head -n1 || true
}

cmd_start() {
    need_root start
    if running slurmctld && running slurmd && running munged; then
        say "already running (munged, slurmctld, slurmd); node state: $(node_state)"
        say "use '$0 stop' first to restart with a fresh slurm.conf"
        return
    fi
    install_if_missing
    setup_munge
    start_munge
    write_conf
    if running slurmctld; then
        say "slurmctld already running"
    else
        say "starting slurmctld"
        slurmctld
    fi
    if running slurmd; then
        say "slurmd already running"
    else
        say "starting slurmd"
        slurmd
    fi
    say "waiting for the node to become idle"
    local state=""
    for _ in $(seq 60); do
        state=$(node_state)
        case $state in
            idle*|mixed*|allocated*) break ;;
            down*|drain*)
                # ReturnToService=2 should bring it back; nudge it anyway.
                scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    case $state in
        idle*|mixed*|allocated*) ;;
        *) die "node state is '${state:-unknown}' after 60 s (see $LOG_DIR/slurmctld.log, $LOG_DIR/slurmd.log)" ;;
    esac
    sinfo
    say "ready: partition '$PARTITION', node $(hostname -s) is $state"
}

stop_one() {
    local name=$1 pids
    if ! running "$name"; then
        say "$name not running"
        return
    fi
    pids=$(pidof -x "$name")
    say "stopping $name (pid $pids)"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 30); do
        running "$name" || return 0
        sleep 0.5
    done
    say "$name did not exit after 15 s; sending KILL"
    pids=$(pidof -x "$name" || true)
    # shellcheck disable=SC2086
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
}

cmd_stop() {
    need_root stop
    stop_one slurmd
    stop_one slurmctld
    stop_one munged
    say "stopped"
}

cmd_status() {
    local d rc=0
    for d in munged slurmctld slurmd; do
        if running "$d"; then
            say "$d: running (pid $(pidof -x "$d"))"
        else
            say "$d: not running"
            rc=3
        fi
    done
    if running slurmctld; then
        sinfo || true
        squeue || true
    fi
    return $rc
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 {start|stop|status}" >&2
        exit 2 ;;
esac
