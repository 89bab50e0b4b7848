#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for bnsweep's Slurm tests and for trying the Slurm
# launcher without a cluster: scripts/slurm-local.sh start|stop|status
#
# start: as root and without systemd, installs Debian's slurmctld, slurmd, slurm-client, munge,
# and for accounting slurmdbd and mariadb-server, when missing; starts munged and MariaDB,
# writes /etc/slurm/slurmdbd.conf and /etc/slurm/slurm.conf for this host (the node line from
# `slurmd -C`, select/cons_tres, proctrack/linuxproc, partition "local"), starts slurmdbd,
# registers the cluster, starts slurmctld and slurmd, and waits until sinfo shows the node idle
# (at most SLURM_LOCAL_WAIT seconds, 120 by default). Every failure is one line on stderr and a
# non-zero exit. Accounting makes sacct answer, which submitit asks for each job's state (a
# cancelled job is seen as cancelled, not waited for).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm
WAIT=${SLURM_LOCAL_WAIT:-120}

PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"

fail() { echo "slurm-local: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || fail "must run as root (it installs packages and starts daemons)"; }

install() {
    local cmd missing=0
    for cmd in slurmctld slurmd sinfo munged slurmdbd mariadbd; do
        command -v "$cmd" >/dev/null || missing=1
    done
    [ "$missing" = 0 ] && return
    echo "slurm-local: installing $PACKAGES (apt-get)"
    # shellcheck disable=SC2086
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES; } \
        >/tmp/slurm-local-apt.log 2>&1 \
        || fail "apt-get install of $PACKAGES failed (log: /tmp/slurm-local-apt.log)"
}

start_munge() {
    if pgrep -x munged >/dev/null; then return; fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
    chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
    munge -n | unmunge >/dev/null 2>&1 || fail "munge does not answer (munge -n | unmunge failed)"
}

start_accounting() {
    if ! mariadb -e 'select 1' >/dev/null 2>&1; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null 2>&1 \
            || fail "mariadb-install-db failed"
        runuser -u mysql -- /usr/sbin/mariadbd --socket=/run/mysqld/mysqld.sock \
            >/var/log/slurm/mariadb.log 2>&1 &
        local waited=0
        until mariadb -e 'select 1' >/dev/null 2>&1; do
            [ "$waited" -ge 60 ] && fail "MariaDB does not answer after 60s (log: /var/log/slurm/mariadb.log)"
            sleep 1
            waited=$((waited + 1))
        done
    fi
    mariadb -e "create user if not exists 'slurm'@'localhost' identified by 'slurm';
                grant all on slurm_acct_db.* to 'slurm'@'localhost';" \
        || fail "could not create MariaDB's slurm user"
    cat >/etc/slurm/slurmdbd.conf <<CONF
# written by bnsweep's scripts/slurm-local.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
CONF
    chmod 600 /etc/slurm/slurmdbd.conf
    pgrep -x slurmdbd >/dev/null || slurmdbd || fail "slurmdbd did not start (see $LOGS/slurmdbd.log)"
    local waited=0
    until sacctmgr -n list cluster >/dev/null 2>&1; do
        [ "$waited" -ge 60 ] && fail "slurmdbd does not answer after 60s (see $LOGS/slurmdbd.log)"
        sleep 1
        waited=$((waited + 1))
    done
    register
}

# Registers the cluster with slurmdbd unless it is registered already (a restart after stop, or
# a machine whose MariaDB kept an earlier start's database). -P prints whole names: the default
# listing cuts them to 10 characters ("bnsweep-l+"), which never matched.
register() {
    local out
    sacctmgr -n -P list cluster format=cluster | grep -qx bnsweep-local && return
    out=$(sacctmgr -i add cluster bnsweep-local 2>&1) \
        || fail "sacctmgr could not add the cluster: $(echo "$out" | tr -s '\n ' ' ')"
}

write_conf() {
    local host node
    host=$(hostname -s)
    node=$(slurmd -C | head -n 1)  # NodeName=<host> CPUs=… RealMemory=…
    [[ $node == NodeName=* ]] || fail "slurmd -C gave no node line: $node"
    mkdir -p /etc/slurm "$LOGS" /var/spool/slurmctld /var/spool/slurmd
    cat >"$CONF" <<CONF
# written by bnsweep's scripts/slurm-local.sh: a one-node cluster on $host
ClusterName=bnsweep-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
KillWait=5
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

state() { sinfo -h -N -o %T 2>/dev/null | head -n 1; }

start() {
    need_root
    install
    start_munge
    if [ "$(state)" = idle ] || [ "$(state)" = mixed ] || [ "$(state)" = allocated ]; then
        echo "slurm-local: already running: $(sinfo -h -N -o '%N %T %c CPUs')"
        return
    fi
    mkdir -p /etc/slurm "$LOGS"
    write_conf  # sacctmgr reads slurm.conf's accounting settings
    start_accounting
    pgrep -x slurmctld >/dev/null || slurmctld || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
    pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (see $LOGS/slurmd.log)"
    local waited=0
    until [ "$(state)" = idle ]; do
        if [ "$waited" -ge "$WAIT" ]; then
            fail "the node is not idle after ${WAIT}s (sinfo: $(state || true); logs in $LOGS)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "slurm-local: up in ${waited}s: $(sinfo -h -N -o '%N %T %c CPUs, partition %P')"
}

stop() {
    need_root
    scancel --user=root 2>/dev/null || true
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    pkill -x slurmdbd 2>/dev/null || true
    echo "slurm-local: stopped"
}

status() {
    if ! command -v sinfo >/dev/null; then echo "slurm-local: not installed"; exit 3; fi
    local s
    s=$(state)
    if [ -z "$s" ]; then echo "slurm-local: not running"; exit 3; fi
    sinfo -N -o '%N %T %c %P'
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    register) need_root; register ;;
    *) echo "usage: scripts/slurm-local.sh start|stop|status|register" >&2; exit 2 ;;
esac
