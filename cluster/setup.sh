#!/usr/bin/env bash
# Installs the Debian packages ftune needs, then configures and builds. Idempotent:
# re-running only rebuilds what changed.
#
#   cluster/setup.sh            # every package; build every target (tests too) into ./build
#   cluster/setup.sh ftune      # only what the named targets need: the packages of the ftune
#                               # binary, tests not configured (cluster/demo.sh; ~half the build)
#   BUILD_DIR=... cluster/setup.sh
#   FTUNE_SKIP_APT=1 cluster/setup.sh   # build only (packages already there)
#   FTUNE_SKIP_BUILD=1 cluster/setup.sh # packages only
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
TARGETS=("$@")

# What the ftune binary needs to build and run (cluster/demo.sh).
PACKAGES=(
  g++ cmake ninja-build pkg-config
  libtorch-dev                      # tensors + autograd (1.13, CPU)
  libopenblas0-pthread              # fast BLAS behind libtorch (reference BLAS is ~13x slower here)
  libopenmpi-dev openmpi-bin        # launch, CPU collectives
  libhdf5-openmpi-dev               # parallel HDF5 shards and checkpoints
  zlib1g-dev libdeflate-dev         # checkpoint crc32: libdeflate's (SIMD, ~3x zlib's), zlib's crc32_combine
  libyaml-cpp-dev                   # configs
  nlohmann-json3-dev libcli11-dev libfmt-dev
  libpcre2-dev                      # Llama-3 pre-tokenizer regex
  libssl-dev                        # sha256 of tokenizer files and inputs
  python3                           # small helper scripts (no pip packages needed)
)
# What the tests and the other scripts need besides.
[ ${#TARGETS[@]} -gt 0 ] || PACKAGES+=(
  make git ca-certificates
  hdf5-tools                        # h5dump/h5ls
  python3-jinja2                    # the chat template parity test's reference engine
  python3-protobuf                  # decodes the TensorBoard event files in a test
  libgtest-dev libgmock-dev         # tests
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
  if [ ${#TARGETS[@]} -eq 0 ]; then
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # OpenBLAS must be the BLAS libtorch loads (Debian's alternatives choose it when installed).
fi

[ -z "${FTUNE_SKIP_BUILD:-}" ] || exit 0

# Named targets: the test suites stay unconfigured (their packages may be missing); the full
# build (no arguments, e.g. from cluster/run_tests.sh) configures them again.
tests=ON
[ ${#TARGETS[@]} -eq 0 ] || tests=OFF
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFTUNE_BUILD_TESTS=$tests >/dev/null
if [ ${#TARGETS[@]} -gt 0 ]; then
  cmake --build "$BUILD_DIR" -j"$(nproc)" --target "${TARGETS[@]}"
  echo "setup: built ${TARGETS[*]} in $BUILD_DIR"
else
  cmake --build "$BUILD_DIR" -j"$(nproc)"
  echo "setup: built $BUILD_DIR/ftune and the tests"
fi
