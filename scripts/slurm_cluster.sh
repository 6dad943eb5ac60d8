#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on this machine, for running slurm/*.sbatch for real.
#
# Usage (as root, Debian/Ubuntu): scripts/slurm_cluster.sh [start|stop|status]
# It installs slurm-wlm and munge with apt if they are missing, writes a munge key and a slurm.conf for
# localhost (one node, one partition "debug", CPUs oversubscribed four times so that -n 8 fits on 2 cores),
# starts munged, slurmctld and slurmd, and waits until the node is idle. Idempotent: a running cluster is left
# as it is. Not for production: root runs the daemons and the jobs. Exit code 3: the packages could not be
# installed (no package mirror reachable).
# `stop` ends exactly the daemons that `start` started (their process ids are kept in $started, checked against
# the process name before the signal), newest first, and waits until they are gone; daemons it found running
# are left alone.
set -euo pipefail

action=${1:-start}
conf=/etc/slurm/slurm.conf
node=$(hostname -s)
started=/run/dcnn-slurm-cluster.pids

# The process id of the daemon NAME just started (none ran before): waits up to 10 s for it to appear.
record() {
    local name=$1 pid=""
    for _ in $(seq 100); do
        pid=$(pgrep -x -n "$name" || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    if [ -z "$pid" ]; then echo "scripts/slurm_cluster.sh: $name did not start" >&2; exit 1; fi
    echo "$name $pid" >> "$started"
}

# Whether process PID still runs as NAME.
alive() { [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]; }

stop() {
    [ -f "$started" ] || return 0
    local name pid remaining
    while read -r name pid; do
        if alive "$name" "$pid"; then kill "$pid"; fi
    done < <(tac "$started")
    for _ in $(seq 300); do
        remaining=0
        while read -r name pid; do
            if alive "$name" "$pid"; then remaining=1; fi
        done < "$started"
        [ "$remaining" = 0 ] && break
        sleep 0.1
    done
    if [ "$remaining" = 1 ]; then echo "scripts/slurm_cluster.sh: a daemon did not stop" >&2; exit 1; fi
    rm -f "$started"
}

if [ "$action" = stop ]; then stop; exit 0; fi
if [ "$action" = status ]; then sinfo -N -h -o "%N %T"; exit 0; fi

if [ "$(id -u)" != 0 ]; then echo "scripts/slurm_cluster.sh: run as root (it installs packages and starts daemons)" >&2; exit 2; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq >/dev/null && apt-get install -y -qq slurm-wlm munge >/dev/null; }; then
        echo "scripts/slurm_cluster.sh: could not install slurm-wlm and munge with apt-get" >&2
        exit 3
    fi
fi

if [ -z "$(pgrep -x munged || true)" ]; then
    mkdir -p /etc/munge /var/log/munge /var/lib/munge /run/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    record munged
fi

cpus=$(( $(nproc) * 4 ))
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$conf" <<CONF
# Written by dcnn's scripts/slurm_cluster.sh: a one-node cluster on $node.
ClusterName=dcnn
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF

if [ -z "$(pgrep -x slurmctld || true)" ]; then /usr/sbin/slurmctld; record slurmctld; fi
if [ -z "$(pgrep -x slurmd || true)" ]; then /usr/sbin/slurmd; record slurmd; fi

for _ in $(seq 60); do
    state=$(sinfo -N -h -o "%T" 2>/dev/null | head -1 || true)
    case "$state" in
        idle*|mixed*|allocated*) echo "SLURM is up: node $node ($cpus CPUs, ${memory} MB), partition debug"; exit 0 ;;
        down*|drain*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
echo "scripts/slurm_cluster.sh: the node did not become idle; see /var/log/slurm/" >&2
exit 1
