#!/usr/bin/env bash
# Bring up a real single-node SLURM (Debian packages, no systemd) for the cluster tests.
#
# Idempotent: a second run finds the daemons up and returns in well under a second.
# Never fails CI: if the packages cannot be installed (apt unavailable, not root) it
# warns and exits 0; the SLURM tests then skip with the reason (tests/test_cluster.py).
#
# Pitfalls handled (issue 6): munged runs as the munge user with /run/munge present;
# /run/slurm exists; RealMemory stays below what `slurmd -C` reports (else the node
# drains); proctrack/linuxproc and task/none (no cgroups, no systemd); partition
# `debug`; the node advertises SLURM_UP_CPUS CPUs (default 8) through
# SlurmdParameters=config_overrides so a driver and two one-core worker jobs all run
# at once on a 2-core machine; the controller and node address is 127.0.0.1.
set -uo pipefail

START=$(date +%s.%N)
CPUS=${SLURM_UP_CPUS:-8}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
HOST=$(hostname -s)

say() { echo "slurm-up: $*"; }
elapsed() { awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }
give_up() { say "WARNING: $* -- SLURM not started; the SLURM tests will skip ($(elapsed) s)"; exit 0; }

node_state() { sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n1; }

if [ "$(id -u)" != 0 ]; then
    give_up "needs root (to install packages and start daemons)"
fi

# 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d: keep the packages' init scripts from starting daemons during install
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    ok=1
    { apt-get update -qq -o Acquire::Retries=3 && apt-get install -y -qq -o Acquire::Retries=3 --no-install-recommends \
        slurmctld slurmd slurm-client munge; } >/tmp/slurm-up-apt.log 2>&1 || ok=0
    rm -f /usr/sbin/policy-rc.d
    [ "$ok" = 1 ] || give_up "apt-get install failed (see /tmp/slurm-up-apt.log: $(tail -n1 /tmp/slurm-up-apt.log))"
fi

# 2. munge: key, runtime directories, daemon as the munge user
id munge >/dev/null 2>&1 || give_up "the munge package did not create the munge user"
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || give_up "munged did not start"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null 2>&1 || give_up "munge credentials do not round-trip"
fi

# 3. slurm.conf (RealMemory below slurmd -C, CPUs overridden)
mkdir -p "$CONF_DIR" /run/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
REAL_MEM=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
[ -n "$REAL_MEM" ] || give_up "slurmd -C did not report RealMemory"
MEM=$(( REAL_MEM * 9 / 10 ))
NEW=$(mktemp)
cat > "$NEW" <<EOF
# written by .ci/slurm-up.sh: one node, no systemd, no cgroups
ClusterName=ci
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerParameters=sched_interval=1
MessageTimeout=10
KillWait=2
InactiveLimit=0
MinJobAge=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
if ! cmp -s "$NEW" "$CONF"; then
    mv "$NEW" "$CONF"; chmod 0644 "$CONF"; changed=1
else
    rm -f "$NEW"
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$changed" = 1 ]; then  # new configuration: restart what runs with the old one
    for pid in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
        running "$pid" && kill "$(cat "$pid")" && sleep 1
    done
fi

# 4. daemons (they daemonise themselves)
if ! running /run/slurm/slurmctld.pid; then
    say "starting slurmctld"
    slurmctld || give_up "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
if ! running /run/slurm/slurmd.pid; then
    say "starting slurmd"
    slurmd || give_up "slurmd did not start (see /var/log/slurm/slurmd.log)"
fi

# 5. wait for the node to be usable; resume it if it came up drained or down
state=""
for i in $(seq 300); do
    state=$(node_state)
    case "$state" in
        idle*|mixed*|allocated*|completing*) break ;;
        drain*|down*|fail*) [ $(( i % 10 )) = 1 ] && scontrol update nodename="$HOST" state=resume 2>/dev/null ;;
    esac
    sleep 0.1
done
case "$state" in
    idle*|mixed*|allocated*|completing*) ;;
    *) give_up "node $HOST is '${state:-unknown}' ($(scontrol show node "$HOST" 2>/dev/null | grep -o 'Reason=.*'))" ;;
esac
say "up: node $HOST $state, $CPUS CPUs, RealMemory=$MEM MB, partition debug ($(elapsed) s)"
