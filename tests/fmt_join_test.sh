#!/usr/bin/env bash
# unit: every source that calls fmt::join includes <fmt/ranges.h>. Since fmt 11 fmt::join lives
# there, and the PyTorch wheels ship fmt >= 11 first on the include path: a file that gets join
# through <fmt/format.h> builds with Debian's fmt 9/10 and breaks only on a GPU machine.
# Usage: fmt_join_test.sh <source-dir>
set -euo pipefail
cd "$1"
n=0 bad=()
while IFS= read -r f; do
  n=$((n + 1))
  grep -q '#include <fmt/ranges.h>' "$f" || bad+=("$f")
done < <(grep -rl --include='*.cpp' --include='*.h' 'fmt::join' parallel models data runtime launch tests)
((n > 0)) || { echo "FAIL: no source calls fmt::join (is $1 the source tree?)"; exit 1; }
if ((${#bad[@]})); then
  echo "FAIL: these call fmt::join without #include <fmt/ranges.h>:"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "PASS: $n sources call fmt::join, each includes <fmt/ranges.h>"
