#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the tests: munged, slurmctld and slurmd, run as
# root without systemd or cgroups (Debian's slurm 22.05). Installs the packages first when they are
# missing and apt-get can. Usage: tests/cluster/start.sh [DIR]  (default /tmp/train-slurm)
# Writes DIR/slurm.conf and DIR/started.pids (only the daemons this script started, for stop.sh),
# and prints the line to use the cluster: export SLURM_CONF=DIR/slurm.conf
# Exit 0: the node is idle and takes jobs; 3: SLURM is not installed and cannot be (the tests skip);
# 1: it is installed but did not start (the tests fail; the reason is on stderr).
set -euo pipefail
dir=$(realpath -m "${1:-/tmp/train-slurm}")
say() { echo "tests/cluster/start.sh: $*" >&2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        say "slurmctld/slurmd/munge are not installed and cannot be (needs root and apt-get)"; exit 3
    fi
    say "installing slurmctld slurmd slurm-client munge (about 10 s)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge; } >"${TMPDIR:-/tmp}/train-slurm-apt.log" 2>&1 \
        || { say "apt-get install failed; see ${TMPDIR:-/tmp}/train-slurm-apt.log"; exit 3; }
fi
if [[ $(id -u) != 0 ]]; then say "the test cluster runs its daemons as root (SlurmUser=root)"; exit 3; fi

mkdir -p "$dir"/{state,spool,log}
: >"$dir/started.pids"

# munge: slurm's authentication. munged refuses to run as root; a stale socket from a dead munged
# makes every later start hang at authentication, so check it answers and clean up if not.
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    [[ -f /etc/munge/munge.key ]] || { mungekey --create >/dev/null 2>&1 || create-munge-key >/dev/null 2>&1; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.1; done
    (munge -n | unmunge) >/dev/null 2>&1 || { say "munged did not start"; exit 1; }
    echo "$(cat /run/munge/munged.pid) munged" >>"$dir/started.pids"
fi

cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat >"$dir/slurm.conf" <<CONF
# Written by tests/cluster/start.sh: one node (this machine), no systemd, no cgroups, no accounting.
ClusterName=train-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
# a requeued job starts after cred_expire + 1 s (121 s by default)
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# sbatch --wait polls after 2 s, then 4x longer while under MinJobAge/2, up to 32 s: with the default
# (300 s) a 15-s job is seen ended at 42 s. Keeping an ended job's record 16 s makes it poll every 8 s,
# still twice within the record's life.
MinJobAge=16
KillWait=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" -c -i   # -c: clear any old state; daemonises
for _ in $(seq 50); do [[ -s "$dir/slurmctld.pid" ]] && break; sleep 0.1; done
echo "$(cat "$dir/slurmctld.pid") slurmctld" >>"$dir/started.pids"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 50); do [[ -s "$dir/slurmd.pid" ]] && break; sleep 0.1; done
echo "$(cat "$dir/slurmd.pid") slurmd" >>"$dir/started.pids"

for _ in $(seq 300); do
    [[ $(sinfo -h -o %T 2>/dev/null) == idle ]] && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.1
done
say "the node did not become idle; see $dir/log/"; exit 1
