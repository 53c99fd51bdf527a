#!/usr/bin/env bash
# Checkpoint throughput beside dd on the same disk, in the same run (not part of CTest).
#   bash tests/bench_checkpoint.sh <build-dir> [size MB] [ranks] [dir]
# Prints the load (uptime), dd's sequential write (conv=fsync, three times: this disk varies) and
# read (cold: page cache dropped, where allowed; then warm) of a file of the checkpoint's size,
# then CheckpointTest.Benchmark's lines: write GB/s (create to rename, incl. checksums and fsync,
# with its phases) with checkpoint.direct_io off and on, training-blocking time per save with
# checkpoint.async off and on, and read GB/s (collective load incl. checksum verification), cold
# (page cache dropped) and warm; last, the medians as ratios to dd's medians.
# Env: GAP_MS (pause between saves, the stand-in for training steps; default 300),
#      FTUNE_CKPT_BENCH_MODES (default bda: buffered sync, direct sync, async).
set -euo pipefail
BUILD=$1
MB=${2:-1000}
NP=${3:-2}
DIR=${4:-$BUILD/test_tmp/bench_checkpoint}
rm -rf "$DIR" && mkdir -p "$DIR"
OUT=$(mktemp)
trap 'rm -f "$OUT"; rm -rf "$DIR"' EXIT
{
echo "== load: $(uptime)"
drop() { sync; (echo 3 > /proc/sys/vm/drop_caches) 2> /dev/null && echo "(page cache dropped)" || echo "(page cache NOT dropped)"; }
for i in 1 2 3; do
  echo "== dd write ${MB} MB (conv=fsync) into $DIR"
  rm -f "$DIR/dd.bin"
  dd if=/dev/zero of="$DIR/dd.bin" bs=1M count="$MB" conv=fsync 2>&1 | tail -1
done
drop
echo "== dd read (cold)"
dd if="$DIR/dd.bin" of=/dev/null bs=1M 2>&1 | tail -1
echo "== dd read (warm)"
dd if="$DIR/dd.bin" of=/dev/null bs=1M 2>&1 | tail -1
rm -f "$DIR/dd.bin"
echo "== checkpoint ($NP ranks)"
FTUNE_CKPT_BENCH_MB=$MB FTUNE_CKPT_BENCH_DIR=$DIR FTUNE_CKPT_BENCH_DROP_CACHES=1 \
FTUNE_CKPT_BENCH_GAP_MS=${GAP_MS:-300} OMP_NUM_THREADS=1 \
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$NP" "$BUILD/tests/checkpoint_test" \
  --gtest_filter='*Benchmark' 2>&1 | grep -E "BENCH|written in" || true
} | tee "$OUT"
python3 - "$OUT" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read().splitlines()
def gbps(line):  # dd's figure, in GB/s
    m = re.search(r"copied, [\d.]+ s, ([\d.]+) (GB|MB)/s", line)
    return float(m.group(1)) / (1000 if m.group(2) == "MB" else 1)
dd_w, dd_r, label = [], [], ""
for l in text:
    if l.startswith("=="): label = l
    elif "copied" in l:
        (dd_w if "write" in label else dd_r if "cold" in label else []).append(gbps(l))
if not dd_w: sys.exit("no dd figures")
w = statistics.median(dd_w)
print(f"== summary: dd write median {w:.2f} GB/s of {dd_w}; dd cold read {dd_r}")
modes = {}
for l in text:
    m = re.match(r"BENCH async=(\d) direct_io=(\d) .*write_GBps=([\d.]+) blocking_s=([\d.]+)", l)
    if m: modes.setdefault((m.group(1), m.group(2)), []).append((float(m.group(3)), float(m.group(4))))
for (a, d), v in modes.items():
    g = statistics.median(x[0] for x in v)
    print(f"   async={a} direct_io={d}: write median {g:.2f} GB/s = {100 * g / w:.0f}% of dd; "
          f"blocking per save {', '.join(f'{x[1]:.2f}' for x in v)} s")
reads = [float(re.search(r"read_GBps=([\d.]+)", l).group(1)) for l in text if l.startswith("BENCH read cold")]
if reads and dd_r:
    g = statistics.median(reads)
    print(f"   cold read median {g:.2f} GB/s = {100 * g / dd_r[0]:.0f}% of dd")
PY
