#!/usr/bin/env bash
# A real Slurm cluster on this machine, for the `slurm` tests and for trying the sbatch templates:
# its own munged, slurmctld and slurmd(s) from Debian's packages (slurm-wlm, munge), with every
# key, socket, spool directory, pid file and log under one directory; nothing in /etc is touched.
#
#   cluster/local_slurm.sh start [--hosts N] [--dir DIR]   # then: export SLURM_CONF=DIR/slurm.conf
#   cluster/local_slurm.sh stop [--dir DIR]                # cancels jobs, stops daemons, removes hosts
#   cluster/local_slurm.sh status [--dir DIR]
#
# Without --hosts: one node, this machine (its hostname, 127.0.0.1), in the root namespace.
# --hosts N (N >= 2): N "hosts" fth1..fthN, each a Linux network namespace joined to a bridge
# ftbr0 in the root namespace by a veth pair, on the private /24 FTUNE_NETNS_PREFIX (default
# 10.253.17, used only there): slurmctld listens on the bridge (.1), host i is .(i+1) and runs its
# own slurmd under its own hostname (UTS namespace) and /etc/hosts (mount namespace, bind mount).
# Jobs spanning hosts send MPI traffic over those interfaces; give mpirun
#   --mca btl tcp,self --mca btl_tcp_if_include PREFIX.0/24 --mca oob_tcp_if_include PREFIX.0/24
# slurmd is entered with `nsenter --net` + `unshare`, not `ip netns exec`, which remounts /sys and
# hides the cgroup mounts slurmd needs.
#
# Every node declares FTUNE_SLURM_CPUS CPUs (default: this machine's, at least 4) and slurmd is
# told to trust that (SlurmdParameters=config_overrides), so `sbatch -n 4` runs on 2 cores, as
# `mpirun --oversubscribe` does. Ports: FTUNE_SLURM_PORT (slurmctld, default 16817) and the next
# one (slurmd), away from a system Slurm's 6817/6818.
#
# start exits 0 when every node is idle, 77 when Slurm cannot run here (the reason on stderr: not
# root, packages missing, no network namespaces, a daemon that does not come up; its log is
# printed), 2 on a usage error. stop is safe to call twice and after a failed start; it ends only
# processes of this cluster: the daemons by their pid files, job processes by SLURM_CONF=DIR/...
# in their environment, and everything inside the host namespaces.
set -euo pipefail

ACTION=${1:-}
shift || true
DIR=${FTUNE_SLURM_DIR:-/tmp/ftune-slurm}
HOSTS=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --hosts) HOSTS=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    *) echo "local_slurm.sh: unknown option '$1' (use --hosts N, --dir DIR)" >&2; exit 2 ;;
  esac
done
DIR=$(realpath -m "$DIR")
PREFIX=${FTUNE_NETNS_PREFIX:-10.253.17}
BRIDGE=ftbr0
PORT=${FTUNE_SLURM_PORT:-16817}
CONF=$DIR/slurm.conf
NCPU=$(getconf _NPROCESSORS_ONLN)  # not nproc: it follows OMP_NUM_THREADS
CPUS=${FTUNE_SLURM_CPUS:-$((NCPU > 4 ? NCPU : 4))}
export SLURM_CONF=$CONF

cannot() { echo "local_slurm.sh: Slurm cannot start here: $*" >&2; exit 77; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2> /dev/null; }

# Waits until `sinfo` reports every node idle (slurmd registered), at most $1 seconds.
wait_idle() {
  local deadline=$((SECONDS + $1)) states=""
  while ((SECONDS < deadline)); do
    states=$(sinfo -h -N -o '%N %T' 2> /dev/null || true)
    if [[ -n $states ]] && ! grep -qv ' idle$' <<< "$states"; then return 0; fi
    sleep 0.5
  done
  echo "node states after $1 s: ${states:-none (slurmctld not answering)}" >&2
  return 1
}

show_logs() {
  local f
  for f in "$DIR"/munged.log "$DIR"/slurmctld.log "$DIR"/slurmd.*.log; do
    [[ -f $f ]] && { echo "--- $f (last lines)" >&2; tail -n 15 "$f" >&2; }
  done
  return 0
}

write_conf() {  # node lines on stdin
  cat > "$CONF" <<CONF
# Written by cluster/local_slurm.sh: a throwaway cluster under $DIR.
ClusterName=ftune
SlurmctldHost=$1($2)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$DIR/munge/munge.sock,cred_expire=10
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
# Per node: the PMIx plugin makes its client directories under TmpFS, and the hosts share /tmp.
TmpFS=$DIR/tmp/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=600
MessageTimeout=20
$(cat)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  mkdir -p "$DIR/munge"
  chmod 700 "$DIR/munge"
  head -c 1024 /dev/urandom > "$DIR/munge/munge.key"
  chmod 600 "$DIR/munge/munge.key"
  munged --force --socket="$DIR/munge/munge.sock" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munge/seed" \
    || { show_logs; cannot "munged did not start"; }
}

start_netns_hosts() {
  ip link show "$BRIDGE" > /dev/null 2>&1 && cannot "bridge $BRIDGE exists already (another cluster? run: $0 stop)"
  ip route | grep -q "^$PREFIX\." && cannot "$PREFIX.0/24 is already routed here; choose FTUNE_NETNS_PREFIX"
  ip link add "$BRIDGE" type bridge || cannot "cannot create a bridge (ip link add type bridge)"
  echo "$BRIDGE" > "$DIR/bridge"
  ip addr add "$PREFIX.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  {
    echo "127.0.0.1 localhost"
    echo "$PREFIX.1 $(hostname -s)"
    for ((i = 1; i <= HOSTS; i++)); do echo "$PREFIX.$((i + 1)) fth$i"; done
  } > "$DIR/hosts"
  for ((i = 1; i <= HOSTS; i++)); do
    local ns=fth$i
    ip netns add "$ns" || cannot "cannot create network namespace $ns (ip netns add)"
    echo "$ns" >> "$DIR/netns"
    ip link add "v$ns" type veth peer name eth0 netns "$ns"
    ip link set "v$ns" master "$BRIDGE" up
    ip -n "$ns" addr add "$PREFIX.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
}

start() {
  [[ $(id -u) == 0 ]] || cannot "needs root (daemons as root, network namespaces)"
  local c
  for c in munged slurmctld slurmd sbatch sinfo scontrol; do
    command -v "$c" > /dev/null || cannot "'$c' not found (apt-get install slurm-wlm munge)"
  done
  if [[ $HOSTS != 0 ]]; then
    ((HOSTS >= 2)) || { echo "local_slurm.sh: --hosts needs N >= 2" >&2; exit 2; }
    command -v ip > /dev/null && command -v nsenter > /dev/null && command -v unshare > /dev/null \
      || cannot "'ip' (iproute2) or nsenter/unshare (util-linux) not found"
  fi
  alive "$DIR/slurmctld.pid" && cannot "a cluster is already running under $DIR ($0 stop --dir $DIR)"
  if [[ -d $DIR && -n $(ls -A "$DIR") ]] && ! head -n 1 "$CONF" 2> /dev/null | grep -q "cluster/local_slurm.sh"; then
    echo "local_slurm.sh: $DIR is not empty and not one of this script's directories; choose --dir" >&2
    exit 2
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR/ctld" "$DIR/spool"
  trap 'rc=$?; if ((rc)); then echo "local_slurm.sh: start failed; stopping what was started" >&2; stop > /dev/null 2>&1; fi; exit $rc' EXIT
  start_munge
  local node_names=()
  if [[ $HOSTS == 0 ]]; then
    local me; me=$(hostname -s)
    node_names=("$me")
    echo "NodeName=$me NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN" | write_conf "$me" 127.0.0.1
  else
    start_netns_hosts
    for ((i = 1; i <= HOSTS; i++)); do node_names+=("fth$i"); done
    for ((i = 1; i <= HOSTS; i++)); do
      echo "NodeName=fth$i NodeAddr=$PREFIX.$((i + 1)) NodeHostname=fth$i CPUs=$CPUS State=UNKNOWN"
    done | write_conf "$(hostname -s)" "$PREFIX.1"
  fi
  # FTUNE_LOCAL_SLURM marks the daemons and the slurmstepds they fork, for stop.
  env FTUNE_LOCAL_SLURM="$DIR" slurmctld -f "$CONF" -i || { show_logs; cannot "slurmctld did not start"; }
  local n
  for n in "${node_names[@]}"; do
    mkdir -p "$DIR/spool/$n" "$DIR/tmp/$n"
    if [[ $HOSTS == 0 ]]; then
      env FTUNE_LOCAL_SLURM="$DIR" slurmd -f "$CONF" -N "$n" \
        || { show_logs; cannot "slurmd $n did not start"; }
    else
      env FTUNE_LOCAL_SLURM="$DIR" nsenter --net="/run/netns/$n" unshare --uts --mount sh -c \
        'hostname "$1" && mount --bind "$2/hosts" /etc/hosts && exec slurmd -f "$3" -N "$1"' \
        sh "$n" "$DIR" "$CONF" || { show_logs; cannot "slurmd $n did not start"; }
    fi
  done
  if ! wait_idle 40; then
    show_logs
    cannot "the nodes did not register with slurmctld within 40 s"
  fi
  trap - EXIT
  echo "local Slurm up: nodes ${node_names[*]} ($CPUS CPUs each), logs in $DIR"
  echo "export SLURM_CONF=$CONF"
}

# PIDs of processes whose environment has $1 (one "KEY=VALUE"), without this script's ancestors.
pids_with_env() {
  local p self=" " a=$$
  while [[ $a -gt 1 ]]; do self+="$a "; a=$(ps -o ppid= -p "$a" | tr -d ' '); done
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $self == *" $p "* ]] && continue
    { tr '\0' '\n' < "/proc/$p/environ"; } 2> /dev/null | grep -qxF "$1" && echo "$p"
  done
  return 0
}

stop() {
  [[ -d $DIR ]] || { echo "local_slurm.sh: nothing under $DIR"; return 0; }
  if alive "$DIR/slurmctld.pid"; then
    local jobs; jobs=$(squeue -h -o %i 2> /dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086
      scancel $jobs 2> /dev/null || true
      local deadline=$((SECONDS + 15))
      while ((SECONDS < deadline)) && [[ -n $(squeue -h -o %i 2> /dev/null || true) ]]; do sleep 0.5; done
    fi
  fi
  local f pids=()
  for f in "$DIR"/slurmd.*.pid "$DIR"/slurmctld.pid; do
    alive "$f" && pids+=("$(cat "$f")")
  done
  mapfile -t -O "${#pids[@]}" pids < <(pids_with_env "FTUNE_LOCAL_SLURM=$DIR"; pids_with_env "SLURM_CONF=$CONF")
  if [[ -f $DIR/netns ]]; then
    local ns
    while read -r ns; do
      mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2> /dev/null)
    done < "$DIR/netns"
  fi
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2> /dev/null || true
    local deadline=$((SECONDS + 10)) p left
    while ((SECONDS < deadline)); do
      left=()
      for p in "${pids[@]}"; do kill -0 "$p" 2> /dev/null && left+=("$p"); done
      ((${#left[@]})) || break
      sleep 0.2
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2> /dev/null || true; done
  fi
  alive "$DIR/munged.pid" && { kill "$(cat "$DIR/munged.pid")" 2> /dev/null || true; }
  if [[ -f $DIR/netns ]]; then
    while read -r ns; do
      ip link del "v$ns" 2> /dev/null || true
      ip netns del "$ns" 2> /dev/null || true
    done < "$DIR/netns"
    rm -f "$DIR/netns"
  fi
  if [[ -f $DIR/bridge ]]; then
    ip link del "$(cat "$DIR/bridge")" 2> /dev/null || true
    rm -f "$DIR/bridge"
  fi
  echo "local Slurm under $DIR stopped"
}

status() {
  alive "$DIR/slurmctld.pid" || { echo "no local Slurm running under $DIR"; return 1; }
  sinfo -N -o '%N %T %C %o'
  squeue
}

case $ACTION in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [--hosts N] [--dir DIR] | stop [--dir DIR] | status [--dir DIR]" >&2; exit 2 ;;
esac
