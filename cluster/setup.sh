#!/usr/bin/env bash
# Installs every Debian package ftune's build, tests and demo need, then
# configures and builds. Idempotent: re-running only rebuilds what changed.
#
#   cluster/setup.sh            # install + build into ./build
#   BUILD_DIR=... cluster/setup.sh
#   FTUNE_SKIP_APT=1 cluster/setup.sh   # build only (packages already there)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

PACKAGES=(
  g++ cmake ninja-build make pkg-config git ca-certificates
  libtorch-dev                      # tensors + autograd (1.13, CPU)
  libopenblas0-pthread              # fast BLAS behind libtorch (reference BLAS is ~13x slower here)
  libopenmpi-dev openmpi-bin        # launch, CPU collectives
  libhdf5-openmpi-dev hdf5-tools    # parallel HDF5 shards and checkpoints, h5dump/h5ls
  zlib1g-dev libdeflate-dev         # checkpoint crc32: libdeflate's (SIMD, ~3x zlib's), zlib's crc32_combine
  libyaml-cpp-dev                   # configs
  libgtest-dev libgmock-dev         # tests
  nlohmann-json3-dev libcli11-dev libfmt-dev
  libpcre2-dev                      # Llama-3 pre-tokenizer regex
  libssl-dev                        # sha256 of tokenizer files and inputs
  python3                           # small helper scripts (no pip packages needed)
  slurm-wlm munge iproute2          # slurm tests: a local cluster, netns hosts (cluster/local_slurm.sh)
)

if [ -z "${FTUNE_SKIP_APT:-}" ]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # Node.js + npm (tokenizer files and the reference tokenizer for tests): any install will do;
  # Debian's packages only when the commands are missing (a NodeSource nodejs bundles npm and
  # conflicts with Debian's npm package).
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # OpenBLAS must be the BLAS libtorch loads (Debian's alternatives choose it when installed).
fi

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "setup: built $BUILD_DIR/ftune"
