#!/usr/bin/env bash
# The second build environment: builds ftune in a Debian 13 (trixie) root and runs its unit, mpi
# and e2e tests there (libtorch 2.6, OpenMPI 5, HDF5 1.14, g++ 14; Debian 12 has 1.13, 4.1, 1.10).
# It is the only place without a GPU where the libtorch 2.x code paths run, and the one where
# OpenMPI 5 and HDF5 1.14 sit under the collective checkpoint and MPI-IO code. CI runs it after
# cluster/run_tests.sh (.ci/run); needs root, debootstrap and Debian's package registry.
#
#   cluster/trixie_env.sh                    # make/refresh the root, build, ctest -L 'unit|mpi|e2e'
#   cluster/trixie_env.sh -R tokenizer -V    # extra arguments go to ctest
#   FTUNE_TRIXIE_SHELL=1 cluster/trixie_env.sh   # a shell in the root instead of the tests
#
# Cached between runs under FTUNE_TRIXIE_ROOT (default /var/cache/ftune/trixie; outside the clone,
# ~3 GB): the root itself (re-made when its debootstrap did not finish, apt re-run when the
# package list below changes), the build directory (/build in the root: a later run rebuilds
# only what changed), a ccache (/ccache) and the tokenizer tests' npm packages (/npm).
# The clone is bind-mounted at /src; the mounts live in a private mount namespace, so they end
# with this script even when it is killed, and never show outside it.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
ROOT=$(realpath -m "${FTUNE_TRIXIE_ROOT:-/var/cache/ftune/trixie}")  # as /proc/PID/root shows it
MIRROR=${FTUNE_TRIXIE_MIRROR:-http://deb.debian.org/debian}

# cluster/setup.sh's list under trixie's names, without Slurm (only unit|mpi|e2e run here), plus
# procps (the e2e tests' ps) and ccache; Node.js + npm for the tokenizer and chat template parity
# tests, python3-jinja2 for the latter; python3-protobuf for the TensorBoard test.
PACKAGES=(
  g++ cmake ninja-build make pkg-config git ca-certificates ccache procps
  libtorch-dev libopenblas0-pthread
  libopenmpi-dev openmpi-bin
  libhdf5-openmpi-dev hdf5-tools
  zlib1g-dev libdeflate-dev libyaml-cpp-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev libssl-dev
  python3 python3-jinja2 python3-protobuf nodejs npm
)

[ "$(id -u)" -eq 0 ] || { echo "trixie_env: needs root (debootstrap, chroot, mount)" >&2; exit 1; }

# Re-run in a private mount namespace: every mount below disappears with this process tree.
if [ -z "${FTUNE_TRIXIE_NS:-}" ]; then
  FTUNE_TRIXIE_NS=1 exec unshare --mount --propagation private "$0" "$@"
fi

mkdir -p "$(dirname "$ROOT")"
# One user of the root at a time (apt, the build directory and the mounts are shared).
exec 9> "$ROOT.lock"
if ! flock -n 9; then
  echo "trixie_env: waiting for another run on $ROOT"
  flock 9
fi

# Never delete a root something is mounted into (the clone would go with it).
mounted_under_root() { awk -v r="$ROOT/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; }

if [ ! -e "$ROOT/.ftune-debootstrap-done" ]; then
  if mounted_under_root; then
    echo "trixie_env: something is mounted under $ROOT; unmount it first" >&2
    exit 1
  fi
  command -v debootstrap > /dev/null || {
    echo "trixie_env: installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
  }
  rm -rf "$ROOT"  # an unfinished debootstrap cannot be resumed
  echo "trixie_env: debootstrap trixie into $ROOT"
  start=$SECONDS
  debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 \
    || { tail -30 "$ROOT.debootstrap.log"; exit 1; }
  touch "$ROOT/.ftune-debootstrap-done"
  echo "trixie_env: debootstrap took $((SECONDS - start)) s"
fi

# --- mounts (private namespace; the trap also unmounts where a process inside outlives us) -----
mounts=()
cleanup() {
  local i p
  # Killed early (Ctrl-C, a CI timeout): end what still runs in the root (only this run can, it
  # holds the lock) before its mounts go, else a compiler or rank goes on without /src.
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2> /dev/null)" = "$ROOT" ] && { kill "${p#/proc/}" 2> /dev/null || true; }
  done
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[i]}" 2> /dev/null || umount -l "${mounts[i]}" || true
  done
}
trap cleanup EXIT
mnt() {  # mnt <target-in-root> <mount args...>
  mkdir -p "$ROOT$1"
  mount "${@:2}" "$ROOT$1"
  mounts+=("$ROOT$1")
}
mnt /proc -t proc proc
mnt /sys --bind /sys          # hwloc (OpenMPI's topology) reads /sys
mnt /dev --bind /dev
mnt /dev/shm -t tmpfs -o mode=1777 tmpfs   # OpenMPI's shared-memory transport, private to this run
mnt /src --bind "$SRC"
# Name resolution as on the host: npm's registry, and mpirun resolving this host's name.
cp /etc/resolv.conf /etc/hosts "$ROOT/etc/"
# TLS as on the host: where the host reaches the npm registry through CAs of its own (a proxy's,
# under /usr/local/share/ca-certificates), node in the root trusts the host's bundle too
# (NODE_EXTRA_CA_CERTS below); without it the tokenizer parity test found no registry and skipped.
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ftune-host-ca.crt"

in_root() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# --- packages: apt only when the list differs from the one last installed ---------------------
want=$(printf '%s\n' "${PACKAGES[@]}" | sort)
if [ "$want" != "$(cat "$ROOT/.ftune-packages" 2> /dev/null)" ]; then
  echo "trixie_env: apt-get install in the root"
  start=$SECONDS
  # No daemon may start inside the root; no fsync per unpacked file (the root is a cache: one
  # that a crash leaves broken is re-made by deleting it).
  printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
  chmod +x "$ROOT/usr/sbin/policy-rc.d"
  echo force-unsafe-io > "$ROOT/etc/dpkg/dpkg.cfg.d/ftune-unsafe-io"
  in_root apt-get update -qq
  in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${PACKAGES[@]}" > "$ROOT.apt.log" 2>&1 || { tail -30 "$ROOT.apt.log"; exit 1; }
  in_root apt-get clean
  echo "$want" > "$ROOT/.ftune-packages"
  echo "trixie_env: apt took $((SECONDS - start)) s"
fi

# --- build + tests: the README's test command, inside the root ---------------------------------
# The build directory belongs to one clone: ninja trusts file times, so another clone's sources,
# older on disk than objects built from a newer tree, would look up to date (a stale object then
# fails to link). A different clone starts the directory afresh; ccache keeps that quick.
if [ "$(cat "$ROOT/build/.ftune-src" 2> /dev/null)" != "$SRC" ]; then
  rm -rf "$ROOT/build"
  mkdir -p "$ROOT/build"
  echo "$SRC" > "$ROOT/build/.ftune-src"
fi
# ccache in the root (the host's cache holds other compilers' objects); its sloppiness lets the
# precompiled libtorch header be cached too. FTUNE_NPM_DIR keeps the tokenizer test's reference
# packages between runs.
env_inside=(
  CCACHE_DIR=/ccache CCACHE_BASEDIR=/src CCACHE_MAXSIZE=5G
  CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
  FTUNE_NPM_DIR=/npm FTUNE_SKIP_APT=1 BUILD_DIR=/build
)
[ -f "$ROOT/etc/ftune-host-ca.crt" ] && env_inside+=(NODE_EXTRA_CA_CERTS=/etc/ftune-host-ca.crt)
[ -n "${CCACHE_DISABLE:-}" ] && env_inside+=(CCACHE_DISABLE=1)
if [ -n "${FTUNE_TRIXIE_SHELL:-}" ]; then
  in_root env "${env_inside[@]}" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    bash -c 'cd /src && exec bash -i'
  exit
fi
in_root env "${env_inside[@]}" /src/cluster/run_tests.sh -L 'unit|mpi|e2e' "$@"
