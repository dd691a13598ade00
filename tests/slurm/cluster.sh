#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the launcher tests: munged, slurmctld and slurmd
# started as root with every file (config, key, sockets, state, logs) under one folder.
#
#   tests/slurm/cluster.sh start    # idempotent: reuses a cluster this script already runs
#   tests/slurm/cluster.sh stop     # idempotent: stops what `start` started
#   tests/slurm/cluster.sh env      # the variable that points SLURM's commands at this cluster
#
# The folder is $SEMORE_SLURM_DIR (default /tmp/semore-slurm); commands reach the cluster with
# SLURM_CONF=$SEMORE_SLURM_DIR/slurm.conf. Needs Debian's slurm-wlm and munge (.ci/run installs
# them). Exits non-zero with one line on stderr when the cluster does not come up.
set -euo pipefail

DIR="${SEMORE_SLURM_DIR:-/tmp/semore-slurm}"
CONF="$DIR/slurm.conf"
# Ports away from SLURM's defaults (6817/6818), so a real cluster's daemons on the machine are
# left alone.
CTLD_PORT="${SEMORE_SLURM_CTLD_PORT:-16817}"
SLURMD_PORT="${SEMORE_SLURM_SLURMD_PORT:-16818}"
NODE=localhost
PARTITION=debug

fail() { echo "tests/slurm/cluster.sh: $*" >&2; exit 1; }

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
    local layout mem_mib
    # The hardware as slurmd sees it (CPUs, sockets, cores, threads): a node configured
    # otherwise is marked invalid. (Not nproc: it honours OMP_NUM_THREADS.)
    layout="$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=[0-9]*//')"
    [[ "$layout" == CPUs=* ]] || fail "slurmd -C did not describe this machine: got '$layout'"
    # slurmd drains a node that has less memory than configured: stay under what it measures.
    mem_mib="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
    cat > "$CONF" <<CONF
ClusterName=semore-test
SlurmctldHost=$NODE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
# No cgroups in a container: processes tracked by parentage, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# No accounting database (sacct then warns; submitit falls back to the job's result files).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 $layout RealMemory=$mem_mib State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    alive "$DIR/munge/munged.pid" && return 0
    if [[ ! -f "$DIR/munge/munge.key" ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 700 "$DIR/munge"
    chmod 400 "$DIR/munge/munge.key"
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" || fail "munged did not start (see $DIR/munge/munged.log)"
}

wait_for_node() {
    # Up to 60 s: slurmctld takes a few seconds to listen, then slurmd registers the node.
    local state=""
    for _ in $(seq 120); do
        state="$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1 || true)"
        if [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]]; then
            return 0
        fi
        sleep 0.5
    done
    fail "node $NODE is not up after 60 s (sinfo state '${state:-none}'; see $DIR/slurmctld.log and $DIR/slurmd.log)"
}

start() {
    for cmd in munged slurmctld slurmd sinfo sbatch srun; do
        command -v "$cmd" >/dev/null || fail "$cmd not found: expected Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge)"
    done
    [[ "$(id -u)" == 0 ]] || fail "must run as root (the daemons run jobs as their submitter)"
    export SLURM_CONF="$CONF"
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && sinfo -h >/dev/null 2>&1; then
        wait_for_node
        return 0
    fi
    write_config
    start_munge
    # -i: ignore state left by an earlier cluster in this folder (no jobs survive a restart).
    alive "$DIR/slurmctld.pid" || slurmctld -i -f "$CONF" || fail "slurmctld did not start (see $DIR/slurmctld.log)"
    alive "$DIR/slurmd.pid" || slurmd -f "$CONF" -N "$NODE" || fail "slurmd did not start (see $DIR/slurmd.log)"
    wait_for_node
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
}

stop_daemon() {
    local pidfile="$1" pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

stop() {
    export SLURM_CONF="$CONF"
    [[ -f "$CONF" ]] && scancel --user="$(id -un)" >/dev/null 2>&1 || true
    stop_daemon "$DIR/slurmd.pid"
    stop_daemon "$DIR/slurmctld.pid"
    stop_daemon "$DIR/munge/munged.pid"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "SLURM_CONF=$CONF" ;;
    *) fail "usage: $0 start|stop|env" ;;
esac
