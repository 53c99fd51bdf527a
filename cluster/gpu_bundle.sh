#!/usr/bin/env bash
# Packs the Debian 12 packages that ftune needs beside a CUDA PyTorch into one tarball, for GPU
# nodes without a package registry: cluster/gpu_build.sh unpacks it into a prefix there and
# builds. Run it on a Debian 12 (bookworm) amd64 machine that reaches Debian's registry.
#
#   cluster/gpu_bundle.sh OUT.tar
#
# The tarball holds ftune-deps/debs/*.deb and ftune-deps/MANIFEST.tsv (package, version, sha256,
# file; gpu_build.sh checks every sha256 before unpacking, and the node's glibc against the newest
# GLIBC_ symbol version the packages use, recorded in the manifest's header).
#
# What is in it: the packages of NEEDED below and every package they depend on, except those of
# NODE_HAS: the C/C++ toolchain and the base system, which a build node has in a version at least
# as new (Ubuntu 24.04, Debian 12/13). Those must never be shadowed by Debian 12's copies on
# LD_LIBRARY_PATH (libc6, libstdc++6, libgomp1: libtorch needs the node's newer ones). apt
# resolves the dependencies against a package database in which exactly NODE_HAS is installed,
# so that their own dependencies (perl's, the compilers') stay out as well.
# Not in it: libtorch, CUDA and NCCL (the PyTorch wheel or a libtorch archive brings them),
# Python.
set -euo pipefail

usage() { echo "usage: cluster/gpu_bundle.sh OUT.tar   (on Debian 12 amd64 with its registry)" >&2; exit 2; }
[[ $# == 1 && $1 != -* ]] || usage
OUT=$(realpath -m "$1")

# shellcheck disable=SC1091
. /etc/os-release
if [[ ${VERSION_CODENAME:-} != bookworm || $(dpkg --print-architecture) != amd64 ]]; then
  echo "gpu_bundle.sh: this is ${PRETTY_NAME:-an unknown system} ($(dpkg --print-architecture 2> /dev/null || echo '?'));" \
    "the bundle is made of Debian 12 (bookworm) amd64 packages: run it on such a machine" >&2
  exit 2
fi
apt-cache show --no-all-versions openmpi-bin > /dev/null 2>&1 || {
  echo "gpu_bundle.sh: apt knows no package openmpi-bin; run 'apt-get update' (as root) first" >&2
  exit 2
}

NEEDED=(
  openmpi-bin libopenmpi-dev  # mpirun + libmpi 4.1, relocatable with OPAL_PREFIX
  libhdf5-openmpi-dev         # parallel HDF5 1.10 (shards, checkpoints) and its h5pcc wrapper
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev
  libfmt-dev                  # used only where libtorch has no fmt of its own (see CMakeLists.txt)
  libpcre2-dev                # Llama-3 pre-tokenizer regex
  libdeflate-dev zlib1g-dev   # checkpoint crc32
  libssl-dev                  # sha256 of tokenizer files
  libgtest-dev libgmock-dev googletest
  pkgconf                     # pkg-config for PCRE2 and libdeflate
)
NODE_HAS=(
  # C/C++ toolchain (the node builds with its own g++)
  libc6 libc6-dev libc-dev-bin linux-libc-dev libcrypt1 libcrypt-dev libnsl2 libnsl-dev
  libtirpc3 libtirpc-dev libtirpc-common rpcsvc-proto gcc-12-base gcc-12 cpp-12 libgcc-s1
  libgcc-12-dev libstdc++6 libgomp1 libatomic1 libitm1 libquadmath0 libasan8 liblsan0 libtsan2
  libubsan1 libcc1-0 libisl23 libmpc3 libmpfr6 binutils binutils-common
  binutils-x86-64-linux-gnu libbinutils libctf0 libctf-nobfd0 libgprofng0 libjansson4
  # Fortran (only Open MPI's and HDF5's Fortran bindings use it; ftune has none)
  gfortran-12 libgfortran-12-dev libgfortran5
  # base system
  perl perl-base perl-modules-5.36 libperl5.36 libgdbm6 libgdbm-compat4 tar dpkg debconf
  debianutils adduser passwd libpam0g libpam-modules libpam-modules-bin libaudit1
  libaudit-common libcap-ng0 libselinux1 libsemanage2 libsemanage-common libsepol2 libacl1
  libbz2-1.0 liblzma5 libzstd1 libudev1 libuuid1 libtinfo6 libmd0 libdb5.3 libgmp10
  # ssh (a cluster node has its own), autotools (libltdl-dev's), documentation scripts
  openssh-client autoconf automake autotools-dev m4 libjs-jquery libjs-jquery-ui
  # hwloc's optional plugins (X11, OpenCL, libxml2 + ICU): hwloc works without them
  libhwloc-plugins
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/archives/partial" "$work/ftune-deps/debs"
# apt downloads as user _apt where it can (as root): let it write there.
chmod 755 "$work" "$work/ftune-deps"
if [[ $(id -u) == 0 ]] && id _apt > /dev/null 2>&1; then chown _apt "$work/ftune-deps/debs"; fi

# A dpkg database in which exactly NODE_HAS is installed (their candidate versions), without
# their own relations: what they depend on is the node's business, not the bundle's. Held, since
# apt otherwise "upgrades" them to the archive's copy, whose relations differ from these.
apt-cache show --no-all-versions "${NODE_HAS[@]}" > "$work/status" ||
  { echo "gpu_bundle.sh: a package of NODE_HAS is unknown to apt (message above)" >&2; exit 1; }
sed -i -E -e '/^Package: /a Status: hold ok installed' \
  -e '/^(Pre-)?Depends|^Recommends|^Suggests|^Breaks|^Conflicts|^Replaces|^Enhances/d' "$work/status"

# Every package apt would install on top of that: 'URI' name_version_arch.deb size SHA256:...
apt-get -qq --print-uris --no-install-recommends -o Debug::NoLocking=1 \
  -o Dir::State::status="$work/status" -o Dir::Cache::Archives="$work/archives" \
  install "${NEEDED[@]}" > "$work/uris" ||
  { echo "gpu_bundle.sh: apt could not resolve ${NEEDED[*]} (message above)" >&2; exit 1; }
mapfile -t pkgs < <(awk '{ split($2, f, "_"); gsub("%3a", ":", f[2]); print f[1] "=" f[2] }' "$work/uris")
((${#pkgs[@]} > 0)) || { echo "gpu_bundle.sh: apt resolved no packages" >&2; exit 1; }
echo "gpu_bundle.sh: downloading ${#pkgs[@]} packages"
(cd "$work/ftune-deps/debs" && apt-get -qq download "${pkgs[@]}")

# The newest glibc symbol version any ELF file of the bundle needs: the node's glibc must be it
# or newer (gpu_build.sh checks).
mkdir "$work/x"
for d in "$work"/ftune-deps/debs/*.deb; do dpkg-deb -x "$d" "$work/x"; done
glibc=$(find "$work/x" -type f \( -name '*.so*' -o -path '*/bin/*' \) -print0 |
  xargs -0 grep -aoh 'GLIBC_2\.[0-9]*' 2> /dev/null | sort -t. -k2,2n -u | tail -n 1)

{
  echo "# ftune GPU-node dependencies: Debian 12 (bookworm) amd64 packages, made $(date -u +%F)" \
    "on $(hostname) by cluster/gpu_bundle.sh"
  echo "# needs-glibc ${glibc#GLIBC_}"
  printf 'package\tversion\tsha256\tfile\n'
  for d in "$work"/ftune-deps/debs/*.deb; do
    printf '%s\t%s\t%s\t%s\n' "$(dpkg-deb -f "$d" Package)" "$(dpkg-deb -f "$d" Version)" \
      "$(sha256sum "$d" | cut -d' ' -f1)" "debs/$(basename "$d")"
  done
} > "$work/ftune-deps/MANIFEST.tsv"

mkdir -p "$(dirname "$OUT")"
tar -cf "$OUT" -C "$work" ftune-deps
n=$(ls "$work"/ftune-deps/debs | wc -l)
echo "gpu_bundle.sh: $OUT: $n packages, $(du -h "$OUT" | cut -f1), needs glibc >= ${glibc#GLIBC_}" \
  "on the node; copy it there and run: cluster/gpu_build.sh $(basename "$OUT")"
