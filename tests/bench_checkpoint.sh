#!/usr/bin/env bash
# Checkpoint throughput beside dd on the same disk, in the same run (not part of CTest).
#   bash tests/bench_checkpoint.sh <build-dir> [size MB] [ranks] [dir]
# Prints the load (uptime), dd's sequential write (conv=fsync) and read (cold: page cache
# dropped, where allowed; then warm) of a file of the checkpoint's size, then
# CheckpointTest.Benchmark's lines: write GB/s (create to rename, incl. checksums and fsync, with
# its phases), training-blocking time per save with checkpoint.async off and on, and read GB/s
# (collective load incl. checksum verification), cold (page cache dropped) and warm.
set -euo pipefail
BUILD=$1
MB=${2:-1000}
NP=${3:-2}
DIR=${4:-$BUILD/test_tmp/bench_checkpoint}
rm -rf "$DIR" && mkdir -p "$DIR"
echo "== load: $(uptime)"
drop() { sync; (echo 3 > /proc/sys/vm/drop_caches) 2> /dev/null && echo "(page cache dropped)" || echo "(page cache NOT dropped)"; }
echo "== dd write ${MB} MB (conv=fsync) into $DIR"
dd if=/dev/zero of="$DIR/dd.bin" bs=1M count="$MB" conv=fsync 2>&1 | tail -1
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
rm -rf "$DIR"
