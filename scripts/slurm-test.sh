#!/usr/bin/env bash
# A one-host Slurm (munged, slurmctld, slurmd) for envlock's tests, as root on Debian.
#
#   scripts/slurm-test.sh install          apt-get munge, slurmd, slurmctld, slurm-client (only if missing)
#   scripts/slurm-test.sh start [DIR]      write DIR/slurm.conf (default: a new temp dir), start the three daemons in
#                                          the background and wait (bounded) until sinfo shows the node idle; prints
#                                          `export SLURM_CONF=DIR/slurm.conf` last. Already running: says so.
#   scripts/slurm-test.sh stop DIR         stop what `start DIR` started, by the pids it recorded
#
# Everything lives in DIR: the munge key and socket, state and spool dirs, logs, pids, and DIR/prolog.sh, the
# slurm.conf Prolog: it runs `envlock slurm-prolog` with $ENVLOCK_PYTHON (default: the repo's .venv, else python3).
# Ports: $ENVLOCK_SLURM_PORT (slurmctld, default 16817) and the next one (slurmd); the daemons talk over 127.0.0.1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wait_s=${ENVLOCK_SLURM_WAIT:-60}

die() { echo "slurm-test: $*" >&2; exit 1; }

install() {
    if command -v munged >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
            && command -v srun >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "installing Slurm needs root"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends munge slurmd slurmctld slurm-client >/dev/null
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
    local dir=$1 node=$2 port=$3 python=$4
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log" "$dir/pids"
    chmod 0700 "$dir" "$dir/munge"
    if [ ! -s "$dir/munge/munge.key" ]; then
        (umask 077 && dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none)
    fi
    cat >"$dir/prolog.sh" <<EOF
#!/bin/sh
# slurm.conf's Prolog: a path, not a command line, and run with no PATH; so name everything in full.
export SLURM_CONF="$dir/slurm.conf" PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
exec "$python" -m envlock slurm-prolog
EOF
    chmod 0755 "$dir/prolog.sh"
    cat >"$dir/slurm.conf" <<EOF
# Written by envlock's scripts/slurm-test.sh: one host, loopback, everything under $dir.
ClusterName=envlock
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SrunPortRange=$((port + 10))-$((port + 200))
CommunicationParameters=NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/state/slurmctld.pid
SlurmdPidFile=$dir/spool/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=60
BatchStartTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
Prolog=$dir/prolog.sh
PrologEpilogTimeout=60
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node CPUs=4 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=10 State=UP
EOF
}

start() {
    local dir=${1:-}
    [ "$(id -u)" = 0 ] || die "starting slurmd needs root"
    command -v slurmctld >/dev/null || die "Slurm is not installed (run: $0 install)"
    if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/envlock-slurm.XXXXXX); fi
    mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
    local node port python
    node=$(hostname -s)
    port=${ENVLOCK_SLURM_PORT:-16817}
    python=${ENVLOCK_PYTHON:-}
    if [ -z "$python" ]; then
        if [ -x "$here/.venv/bin/python" ]; then python=$here/.venv/bin/python; else python=$(command -v python3); fi
    fi
    export SLURM_CONF=$dir/slurm.conf
    if alive "$dir/pids/munged" && alive "$dir/pids/slurmctld" && alive "$dir/pids/slurmd"; then
        echo "slurm-test: already running in $dir" >&2
    else
        stop "$dir" 2>/dev/null || true
        write_config "$dir" "$node" "$port" "$python"
        munged --foreground --force --socket="$dir/munge/munge.socket.2" --key-file="$dir/munge/munge.key" \
            --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
            --log-file="$dir/log/munged.log" >>"$dir/log/munged.out" 2>&1 &
        echo $! >"$dir/pids/munged"
        local i
        for i in $(seq 1 50); do [ -S "$dir/munge/munge.socket.2" ] && break; sleep 0.1; done
        [ -S "$dir/munge/munge.socket.2" ] || die "munged did not start: $(tail -n 3 "$dir/log/munged.log" 2>/dev/null)"
        slurmctld -D -i -f "$SLURM_CONF" >>"$dir/log/slurmctld.out" 2>&1 &
        echo $! >"$dir/pids/slurmctld"
        slurmd -D -N "$node" -f "$SLURM_CONF" >>"$dir/log/slurmd.out" 2>&1 &
        echo $! >"$dir/pids/slurmd"
    fi
    local deadline=$((SECONDS + wait_s)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(timeout 5 sinfo -h -N -n "$node" -o %T 2>/dev/null || true)
        case "$state" in
            idle|mixed|allocated|completing) break ;;
            drained*)  # left drained by an earlier run in the same DIR (the state dir keeps it)
                timeout 5 scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        alive "$dir/pids/slurmctld" || die "slurmctld exited: $(tail -n 3 "$dir/log/slurmctld.log" 2>/dev/null)"
        alive "$dir/pids/slurmd" || die "slurmd exited: $(tail -n 3 "$dir/log/slurmd.log" 2>/dev/null)"
        sleep 0.5
    done
    case "$state" in
        idle|mixed|allocated|completing) ;;
        *) die "node $node not idle within ${wait_s}s (state: ${state:-none}); see $dir/log" ;;
    esac
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
    local dir=${1:?usage: $0 stop DIR} name pid i pids=()
    for name in slurmd slurmctld munged; do
        if alive "$dir/pids/$name"; then
            pid=$(cat "$dir/pids/$name")
            kill "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$dir/pids/$name"
    done
    for pid in "${pids[@]}"; do  # each gets at most 5 s to exit, then SIGKILL
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
}

case "${1:-}" in
    install) install ;;
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 install | start [DIR] | stop DIR" >&2; exit 2 ;;
esac
