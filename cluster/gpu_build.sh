#!/usr/bin/env bash
# Builds ftune on a GPU node that has no package registry: unpacks the dependency bundle of
# cluster/gpu_bundle.sh into a prefix (once), relocates Open MPI and HDF5's compiler wrapper
# there, finds libtorch and NCCL, configures and builds with every core, and writes
# BUILD_DIR/env.sh, which sets what running ftune and mpirun from the bundle needs.
#
#   cluster/gpu_build.sh [BUNDLE.tar]        # the bundle: only for the first build on a node
#   source build-gpu/env.sh                  # then: ftune env, mpirun -np 2 ftune train ...
#
# Environment (all optional):
#   FTUNE_DEPS  the prefix the bundle is unpacked into   (default /opt/ftune-deps)
#   BUILD_DIR   the build directory                      (default build-gpu)
#   PYTHON      the Python that has torch                (default python3)
#   Torch_DIR   a libtorch's share/cmake/Torch, or LIBTORCH=<unpacked libtorch archive>;
#               unset: the PyTorch wheel of $PYTHON, else the system's libtorch
#   NCCL_ROOT   a directory with include/nccl.h and lib/libnccl.so[.2]; unset: CMake looks in
#               the nvidia-nccl wheel beside torch, then in the CUDA toolkit and the system
#   CUDA_HOME   the CUDA toolkit a CUDA libtorch's CMake files need (default /usr/local/cuda)
#   JOBS        parallel compile jobs (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
DEPS=${FTUNE_DEPS:-/opt/ftune-deps}
BUILD_DIR=$(realpath -m "${BUILD_DIR:-build-gpu}")
PYTHON=${PYTHON:-python3}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
JOBS=${JOBS:-$(getconf _NPROCESSORS_ONLN)}  # not nproc: it follows OMP_NUM_THREADS
ARCH=x86_64-linux-gnu
LIB=$DEPS/usr/lib/$ARCH
# Where the bundle's shared libraries are (Debian 12 still puts some, zlib and libnl, in /lib).
BUNDLE_LD=$LIB:$LIB/openmpi/lib:$LIB/hdf5/openmpi:$DEPS/lib/$ARCH
say() { echo "gpu_build.sh: $*"; }
die() { echo "gpu_build.sh: $*" >&2; exit 1; }
[[ $# -le 1 && ${1:-} != -* ]] || die "usage: cluster/gpu_build.sh [BUNDLE.tar]  (see the header of this script)"

# Unpacks the bundle's packages into $DEPS and makes the copy work from there.
unpack() {
  local tarball=$1 tmp
  tmp=$(mktemp -d)
  tar -xf "$tarball" -C "$tmp" || die "cannot read $tarball"
  local top=$tmp/ftune-deps manifest=$tmp/ftune-deps/MANIFEST.tsv
  [[ -f $manifest ]] || die "$tarball has no ftune-deps/MANIFEST.tsv: not a bundle of cluster/gpu_bundle.sh"
  (cd "$top" && awk -F'\t' '!/^#/ && $1 != "package" { print $3 "  " $4 }' MANIFEST.tsv |
    sha256sum --quiet -c -) || die "$tarball: a package's sha256 differs from MANIFEST.tsv (listed above)"
  # Debian 12's libraries need this glibc (or newer) on the node.
  local need have
  need=$(sed -n 's/^# needs-glibc //p' "$manifest")
  have=$(getconf GNU_LIBC_VERSION | awk '{ print $2 }')
  if [[ -n $need && $(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n 1) != "$need" ]]; then
    die "the bundle's libraries need glibc >= $need; this node has $have (Ubuntu >= 23.04, Debian >= 12 do)"
  fi
  mkdir -p "$DEPS" || die "cannot create $DEPS: set FTUNE_DEPS to a writable directory"
  local deb
  for deb in "$top"/debs/*.deb; do
    if command -v dpkg-deb > /dev/null; then
      dpkg-deb -x "$deb" "$DEPS"
    else  # no dpkg (RHEL-like node): a .deb is an ar archive holding data.tar.*
      (cd "$tmp" && rm -f data.tar.* && ar x "$deb" && tar -xf data.tar.* -C "$DEPS")
    fi
  done
  relocate
  cp "$manifest" "$DEPS/MANIFEST.tsv"
  rm -rf "$tmp"
  say "unpacked $(grep -vc '^#\|^package' "$DEPS/MANIFEST.tsv") packages into $DEPS"
}

# The packages were made for /usr: point what names /usr at $DEPS/usr instead.
relocate() {
  local link target f
  # Absolute symbolic links (e.g. .so links into /lib): to the same path under $DEPS.
  while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    [[ $target == /* ]] && ln -sfn "$DEPS$target" "$link"
  done < <(find "$DEPS" -type l -print0)
  # The names Debian's alternatives system would create.
  for f in mpirun mpiexec mpicc mpicxx mpic++; do
    [[ -e $DEPS/usr/bin/$f.openmpi ]] && ln -sfn "$f.openmpi" "$DEPS/usr/bin/$f"
  done
  ln -sfn h5pcc.openmpi "$DEPS/usr/bin/h5pcc"
  # HDF5's compiler wrapper and the pkg-config files name their prefix literally. The wrapper
  # also links -lcrypto -lcurl -lsz, found in /usr/lib/<arch> by default and here only with -L.
  sed -i -e "s#^prefix=\"/usr\"#prefix=\"$DEPS/usr\"#" \
    -e "s#^H5BLD_LDFLAGS=\"#H5BLD_LDFLAGS=\"-L$LIB #" "$DEPS/usr/bin/h5pcc.openmpi"
  for f in "$LIB"/pkgconfig/*.pc "$DEPS"/usr/share/pkgconfig/*.pc; do
    [[ -f $f ]] && sed -i -E "s#^([A-Za-z_]+)=/usr(/|\$)#\\1=$DEPS/usr\\2#" "$f"
  done
  # PMIx's configuration names its plugin directory.
  sed -i "s#= /usr/#= $DEPS/usr/#" "$LIB/pmix2/share/pmix-mca-params.conf"
  # A link Debian's alternatives system makes: PSM's library, for Open MPI's ofi and psm plugins.
  f=$(find "$DEPS/usr/lib/libpsm1" -name 'libpsm_infinipath.so.1.*' -print -quit 2> /dev/null || true)
  [[ -n $f ]] && ln -sfn "$f" "$LIB/libpsm_infinipath.so.1"
  return 0
}

# What running the bundle's Open MPI and ftune needs (env.sh; this script uses the same).
# Open MPI finds its plugins, help files and wrapper data below OPAL_PREFIX; Debian puts its
# configuration in /etc/openmpi, outside the prefix, hence OPAL_SYSCONFDIR. PMIx has no prefix
# variable that moves its plugin directory, only one per directory: without them it loads the
# plugins of a system PMIx of another version from /usr (undefined symbols). LD_LIBRARY_PATH:
# the bundle's libraries depend on each other (libhdf5 -> libsz, libmpi -> libhwloc), which the
# executables' RUNPATH does not cover. Without ssh, Open MPI 4.1 refuses to start even on one
# node: name an agent that exists; local ranks never call it (under Slurm, srun starts them).
runtime_env() {  # LD_LIBRARY_PATH entries
  echo "export OPAL_PREFIX=$DEPS/usr OPAL_SYSCONFDIR=$DEPS/etc/openmpi"
  echo "export PMIX_PKGLIBDIR=$LIB/pmix2/lib/pmix PMIX_PKGDATADIR=$LIB/pmix2/share/pmix PMIX_SYSCONFDIR=$LIB/pmix2/share"
  echo "export LD_LIBRARY_PATH=$1\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  echo "command -v ssh > /dev/null || command -v rsh > /dev/null || export OMPI_MCA_plm_rsh_agent=false"
}
write_env() {
  local torch_lib=$1 nccl_lib=$2 ld=$BUNDLE_LD
  [[ -d $torch_lib ]] && ld="$ld:$torch_lib"
  [[ -d $nccl_lib ]] && ld="$ld:$nccl_lib"
  {
    echo "# Written by cluster/gpu_build.sh: source it to run ftune and the bundle's mpirun."
    echo "export FTUNE_DEPS=$DEPS FTUNE=$BUILD_DIR/ftune"
    echo "export PATH=$BUILD_DIR:$DEPS/usr/bin:\$PATH"
    runtime_env "$ld"
    echo 'if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi'
  } > "$BUILD_DIR/env.sh"
}

# --- the dependency bundle ----------------------------------------------------------------
if [[ $# == 1 ]]; then
  [[ -f $1 ]] || die "bundle '$1' not found (make it with cluster/gpu_bundle.sh on a Debian 12 machine)"
  if [[ -f $DEPS/MANIFEST.tsv ]] && tar -xOf "$1" ftune-deps/MANIFEST.tsv | cmp -s - "$DEPS/MANIFEST.tsv"; then
    say "$DEPS already holds this bundle"
  else
    unpack "$(realpath "$1")"
  fi
fi
[[ -f $DEPS/MANIFEST.tsv ]] ||
  die "no dependency bundle in $DEPS: run cluster/gpu_build.sh BUNDLE.tar (made by cluster/gpu_bundle.sh), or set FTUNE_DEPS"
export PATH=$DEPS/usr/bin:$PATH
eval "$(runtime_env "$BUNDLE_LD")"

# Every library the build and the run load from the bundle must resolve: a node image may lack
# a shared library that the bundle does not carry either (gpu_bundle.sh's NODE_HAS).
missing=$(for f in "$DEPS/usr/bin/orterun" "$DEPS/usr/bin/orted" "$LIB"/libmpi.so.40 \
  "$LIB"/libhdf5_openmpi.so.103 "$LIB"/libyaml-cpp.so.* "$LIB"/libpcre2-8.so.0 \
  "$LIB"/libdeflate.so.0 "$LIB"/libcrypto.so.3 "$DEPS/usr/bin/pkgconf"; do
  [[ -e $f ]] || { echo "  $f (not in the bundle)"; continue; }
  ldd "$f" | awk -v f="$(basename "$f")" '/not found/ { print "  " f ": " $1 }'
done | sort -u)
[[ -z $missing ]] || die "libraries missing on this node:
$missing
install them here, or add their Debian packages to NEEDED in cluster/gpu_bundle.sh and remake the bundle"
# The bundle's Open MPI, relocated, starts ranks on this node (as root too).
out=$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 60 \
  mpirun --oversubscribe -np 2 true 2>&1) || die "the bundle's mpirun cannot start 2 ranks here:
$out"
[[ -z $out ]] || { echo "$out"; say "(the bundle's mpirun started 2 ranks, with the messages above)"; }

# --- libtorch -------------------------------------------------------------------------------
torch_dir="" torch_lib="" torch_cuda=""
if [[ -n ${Torch_DIR:-} ]]; then
  torch_dir=$Torch_DIR
  torch_lib=$(realpath -m "$Torch_DIR/../../../lib")
elif [[ -n ${LIBTORCH:-} ]]; then
  [[ -d $LIBTORCH/share/cmake/Torch ]] || die "LIBTORCH=$LIBTORCH has no share/cmake/Torch (unpack a libtorch archive and point LIBTORCH at its libtorch/)"
  torch_dir=$LIBTORCH/share/cmake/Torch torch_lib=$LIBTORCH/lib
elif command -v "$PYTHON" > /dev/null &&
  info=$("$PYTHON" -c 'import os, torch; print(torch.utils.cmake_prefix_path); print(os.path.join(os.path.dirname(torch.__file__), "lib")); print(torch.__version__, torch.version.cuda or "")' 2> /dev/null); then
  { read -r torch_dir; read -r torch_lib; read -r torch_version torch_cuda; } <<< "$info"
  torch_dir=$torch_dir/Torch
  say "libtorch: the PyTorch wheel of $(command -v "$PYTHON"), torch $torch_version${torch_cuda:+, CUDA $torch_cuda}"
  [[ $("$PYTHON" -c 'import torch; print(torch.compiled_with_cxx11_abi())') == True ]] ||
    die "torch $torch_version was built with the old C++ ABI (_GLIBCXX_USE_CXX11_ABI=0); ftune's dependencies use the new one: install a cxx11-ABI torch (any PyTorch >= 2.7 wheel) or a cxx11 libtorch archive (LIBTORCH=...)"
else
  say "libtorch: no Torch_DIR, LIBTORCH or torch in $PYTHON; CMake looks for a system libtorch"
fi
if [[ -n $torch_cuda ]] && [[ ! -x $CUDA_HOME/bin/nvcc ]]; then
  die "torch is a CUDA $torch_cuda build; its CMake files need the CUDA toolkit (nvcc), not found at $CUDA_HOME: set CUDA_HOME"
fi
[[ -x $CUDA_HOME/bin/nvcc ]] && export PATH=$PATH:$CUDA_HOME/bin CUDACXX=$CUDA_HOME/bin/nvcc

# --- configure and build --------------------------------------------------------------------
gen=()
command -v ninja > /dev/null && [[ ! -f $BUILD_DIR/Makefile ]] && gen=(-G Ninja)
launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# The compiler searches /usr/include/<arch> for Debian's architecture-specific headers (OpenSSL's
# opensslconf.h, curl's, hwloc's); the bundle's own are in $DEPS/usr/include/<arch>, searched
# the same way: after every -I/-isystem directory, as the compiler's own.
arch_inc=$DEPS/usr/include/$ARCH
mkdir -p "$BUILD_DIR"
start=$SECONDS
cmake -S "$SRC" -B "$BUILD_DIR" "${gen[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release -DFTUNE_RELEASE_OPT=-O3 \
  ${torch_dir:+-DTorch_DIR="$torch_dir"} -DCMAKE_PREFIX_PATH="$DEPS/usr" \
  -DMPI_C_COMPILER="$DEPS/usr/bin/mpicc.openmpi" -DMPIEXEC_EXECUTABLE="$DEPS/usr/bin/mpiexec.openmpi" \
  -DHDF5_C_COMPILER_EXECUTABLE="$DEPS/usr/bin/h5pcc.openmpi" \
  -DCMAKE_C_STANDARD_INCLUDE_DIRECTORIES="$arch_inc" -DCMAKE_CXX_STANDARD_INCLUDE_DIRECTORIES="$arch_inc" \
  -DPKG_CONFIG_EXECUTABLE="$DEPS/usr/bin/pkgconf" -DFTUNE_PYTHON3="$(command -v "$PYTHON" || true)" \
  ${NCCL_ROOT:+-DNCCL_ROOT="$NCCL_ROOT"} ${CUDA_HOME:+-DCUDAToolkit_ROOT="$CUDA_HOME"} \
  > "$BUILD_DIR/configure.log" 2>&1 || { cat "$BUILD_DIR/configure.log"; die "configure failed (log above, also in $BUILD_DIR/configure.log)"; }
grep 'ftune:' "$BUILD_DIR/configure.log" | sed 's/^-- /gpu_build.sh: /'
configured=$((SECONDS - start))
cmake --build "$BUILD_DIR" -j "$JOBS" || die "build failed (errors above)"
nccl_lib=$(sed -n 's/^NCCL_LIBRARY:FILEPATH=//p' "$BUILD_DIR/CMakeCache.txt")
[[ -n $nccl_lib && $nccl_lib != *NOTFOUND ]] && nccl_lib=$(dirname "$nccl_lib") || nccl_lib=""
write_env "$torch_lib" "$nccl_lib"
say "configured in ${configured} s, built in $((SECONDS - start - configured)) s with $JOBS jobs: $BUILD_DIR/ftune"
say "to run it: source $BUILD_DIR/env.sh"
