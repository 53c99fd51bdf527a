#!/usr/bin/env bash
# No ftune binary may refer to std::filesystem (parallel/files.h says why: the PyTorch wheel's
# libtorch.so exports its own build of those functions, and binaries bound to that copy crashed).
#   no_filesystem_test.sh FILE...
# FILEs are executables (their imported dynamic symbols are checked) and static libraries (their
# objects' undefined symbols). Fails naming each file, object and symbol that mentions the
# mangled namespace St10filesystem (std::filesystem, any ABI).
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 FILE..." >&2
  exit 2
fi
command -v nm >/dev/null || { echo "no_filesystem_test: nm (binutils) is missing" >&2; exit 2; }

bad=0
for f in "$@"; do
  if [ ! -f "$f" ]; then
    echo "no_filesystem_test: $f does not exist (build all targets first)"
    bad=1
    continue
  fi
  case "$f" in
    *.a) flags=(--undefined-only --print-file-name) ;;  # lib.a:object.o: U symbol
    *) flags=(--dynamic --undefined-only --print-file-name) ;;
  esac
  # "name:  U mangled" -> "name: needs mangled", demangled; grep finds nothing in a clean file.
  hits=$(nm "${flags[@]}" "$f" | grep 'St10filesystem' | sed -E 's/^(.*): +U +/\1: needs /' || true)
  if [ -n "$hits" ]; then
    bad=1
    c++filt <<<"$hits"
  fi
done
if [ "$bad" -ne 0 ]; then
  echo "FAILED: use parallel/files.h (ftune::files), not <filesystem>"
  exit 1
fi
echo "no std::filesystem symbol in $# file(s)"
