#!/usr/bin/env bash
# A single-node Slurm on this machine, for the end-to-end test of `bst-sweep slurm`
# (crates/bst-sweep/tests/slurm.rs) and for trying job arrays without a cluster:
#   scripts/slurm_local.sh start [DIR]   # prints `export SLURM_CONF=DIR/slurm.conf` on stdout
#   scripts/slurm_local.sh stop [DIR]
#   scripts/slurm_local.sh status [DIR]
# e.g. `eval "$(scripts/slurm_local.sh start)" && cargo test -p bst-sweep --test slurm`.
#
# Needs root (slurmd starts every job as its user) and a Debian machine: installs `slurm-wlm` and
# `munge` if missing. No systemd is needed: munged, slurmctld and slurmd run in the background
# with a localhost slurm.conf in DIR (default /tmp/bst-slurm): proctrack/linuxproc, task/none, no
# accounting, no cgroup plugin, the node's CPUs and memory as `slurmd -C` reports them, one
# partition `debug`, ports 16817/16818 (SLURM_LOCAL_PORT=N uses N and N+1) so that a real Slurm
# on the machine is left alone. The client tools (sbatch, squeue, sinfo) find this Slurm through
# SLURM_CONF. A munged that already answers is reused; `stop` ends only the daemons `start` began
# (by their pid files in DIR).
set -euo pipefail
say() { echo "[slurm-local] $*" >&2; }
cmd=${1:-}
dir=${2:-${SLURM_LOCAL_DIR:-/tmp/bst-slurm}}
port=${SLURM_LOCAL_PORT:-16817}
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

stop_pid() { # name: ends the daemon whose pid file `start` wrote
  local f="$dir/$1.pid"
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    say "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

case "$cmd" in
start)
  [ "$(id -u)" -eq 0 ] || { say "needs root (slurmd runs jobs as their users)"; exit 1; }
  if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    say "installing the Debian packages of slurm-wlm (slurmctld, slurmd, slurm-client) and munge"
    apt-get update -q=2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q=2 slurmctld slurmd slurm-client munge >/dev/null
  fi
  mkdir -p "$dir"/{state,spool,log}
  if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    say "already running (stop it first: $0 stop $dir)"
    echo "export SLURM_CONF=$conf"
    exit 0
  fi

  # munge: a key owned by munge (mode 0400), /run/munge, munged as the munge user
  if munge_ok; then
    say "munged already answers; reusing it"
  else
    if [ ! -s /etc/munge/munge.key ]; then # mungekey is munge >= 0.5.14; older ones take any 1 KiB
      mkdir -p /etc/munge
      mungekey -c -k /etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge && chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground >"$dir/log/munged.log" 2>&1 &
    echo $! >"$dir/munged.pid"
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || { say "munged did not come up: $(cat "$dir/log/munged.log")"; exit 1; }
    say "started munged (pid $(cat "$dir/munged.pid"))"
  fi

  # the node as slurmd sees it (declaring more CPUs or memory than this drains the node)
  node=$(slurmd -C | head -n1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  cat >"$conf" <<EOF
# written by scripts/slurm_local.sh: one node (this machine), no systemd, no cgroups
ClusterName=bstlocal
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.daemon.pid
SlurmdPidFile=$dir/slurmd.daemon.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldParameters=enable_configless
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
KillWait=30
MaxArraySize=1001
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  # no cgroup plugin is configured; this only stops slurmd from looking for systemd if it probes
  printf 'CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n' >"$dir/cgroup.conf"

  slurmctld -D -f "$conf" >"$dir/log/slurmctld.out" 2>&1 &
  echo $! >"$dir/slurmctld.pid"
  slurmd -D -N localhost -f "$conf" >"$dir/log/slurmd.out" 2>&1 &
  echo $! >"$dir/slurmd.pid"
  for _ in $(seq 60); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    # exact states: a suffix (idle*: not responding, idle~: powered off) means no jobs run
    case "$state" in idle|mixed|allocated) break ;; esac
    sleep 0.5
  done
  case "$state" in
  idle|mixed|allocated) say "up: node localhost ($cpus CPUs, $mem MB) $state, partition debug, $conf" ;;
  *)
    say "the node did not come up (state: ${state:-no answer}); logs in $dir/log:"
    tail -n 5 "$dir"/log/*.log >&2 || true
    exit 1 ;;
  esac
  echo "export SLURM_CONF=$conf"
  ;;
stop)
  stop_pid slurmd
  stop_pid slurmctld
  stop_pid munged
  ;;
status)
  sinfo -N -l 2>&1 && squeue 2>&1 ;;
*)
  echo "usage: $0 start|stop|status [DIR]   (DIR default /tmp/bst-slurm)" >&2
  exit 2 ;;
esac
