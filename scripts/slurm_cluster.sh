#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on this machine, for running slurm/*.sbatch for real.
#
# Usage (as root, Debian/Ubuntu): scripts/slurm_cluster.sh [start|stop|status]
# It installs slurm-wlm and munge with apt if they are missing, writes a munge key and a slurm.conf for
# localhost (one node, one partition "debug", CPUs oversubscribed four times so that -n 8 fits on 2 cores),
# starts munged, slurmctld and slurmd, and waits until the node is idle. Idempotent: a running cluster is left
# as it is. Not for production: root runs the daemons and the jobs. Exit code 3: the packages could not be
# installed (no package mirror reachable).
set -euo pipefail

action=${1:-start}
conf=/etc/slurm/slurm.conf
node=$(hostname -s)

stop() {
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
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

[ -n "$(pgrep -x slurmctld || true)" ] || /usr/sbin/slurmctld
[ -n "$(pgrep -x slurmd || true)" ] || /usr/sbin/slurmd

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
