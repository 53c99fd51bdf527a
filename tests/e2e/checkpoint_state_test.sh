#!/usr/bin/env bash
# e2e (issue 18, defects 1 and 2): damage outside the tensors is never resumed from silently.
# One flipped bit in the newest checkpoint's loader cursor attribute, and a `latest` naming a
# missing file or holding garbage: `ftune train` warns naming the file and the reason, resumes
# from the previous good checkpoint, and its losses from there on are bit-identical to an
# uninterrupted run.
# Usage: checkpoint_state_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
write_config
train() {  # out_dir log
  "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/$1" --set checkpoint.keep=10 \
    > "$2" 2>&1 || { cat "$2"; fail "run $1 failed"; }
}
train ref ref.log
losses ref/metrics.jsonl > ref.losses
# A run "killed" after its step-8 checkpoint: its checkpoints up to step 8, no metrics yet.
prepare() {
  mkdir -p "$1/checkpoints"
  for s in 2 4 6 8; do cp ref/checkpoints/step_0000000$s.h5 "$1/checkpoints/"; done
  echo step_00000008.h5 > "$1/checkpoints/latest"
}
# flip_attr_bit FILE ATTR BIT: flips one bit of an int64 /state attribute's stored value in the
# file (its bytes follow the attribute's name in the object header) and checks with h5dump that
# exactly that value changed.
value_of() { h5dump -a "/state/$2" "$1" | sed -n 's/^ *(0): *\([-0-9]*\).*/\1/p'; }
flip_attr_bit() {
  local before; before=$(value_of "$1" "$2")
  python3 - "$1" "$2" "$3" "$before" <<'PY'
import struct, sys
path, name, bit, value = sys.argv[1], sys.argv[2].encode() + b"\0", int(sys.argv[3]), int(sys.argv[4])
data = bytearray(open(path, "rb").read())
at = data.find(name)
assert at >= 0 and data.find(name, at + 1) < 0, "attribute name not found once"
v = data.find(struct.pack("<q", value), at + len(name))
assert at < v < at + len(name) + 128, "value not found after the name"
data[v + bit // 8] ^= 1 << (bit % 8)
open(path, "wb").write(data)
PY
  local after; after=$(value_of "$1" "$2")
  [[ $after == $((before ^ (1 << $3))) ]] || fail "the flip missed $2 ($before -> $after)"
}
expect() {  # log pattern what
  grep -q -- "$2" "$1" || { cat "$1"; fail "$3"; }
}

# 1. One bit of the loader cursor of step 8 (the issue's case: resumed silently at another
#    cursor and diverged).
prepare cursor
flip_attr_bit cursor/checkpoints/step_00000008.h5 loader_cursor 1
train cursor cursor.log
expect cursor.log "step_00000008.h5 is unusable.*checksum mismatch in the training state" \
  "no warning naming the damaged state"
expect cursor.log "resumed from .*step_00000006.h5: step 6" "did not fall back to step 6"
losses cursor/metrics.jsonl > cursor.losses
compare_losses ref.losses cursor.losses 7 0 || fail "cursor: losses after the fallback differ"

# 2. and 3. `latest` names a file that does not exist, or is garbage: the newest file instead.
latest_case() {  # name content warning
  prepare "$1"
  printf "$2" > "$1/checkpoints/latest"
  train "$1" "$1.log"
  expect "$1.log" "$3" "$1: no warning about the latest pointer"
  expect "$1.log" "resumed from .*step_00000008.h5: step 8" "$1: did not resume from step 8"
  losses "$1/metrics.jsonl" > "$1.losses"
  compare_losses ref.losses "$1.losses" 9 0 || fail "$1: losses differ"
}
latest_case missing 'step_00000010.h5\n' \
  "latest names step_00000010.h5, which does not exist.*step_00000008.h5"
latest_case garbage '\x7fELF\x01\xfe garbage\n' \
  "latest names '.*', which is not a checkpoint file name"
echo "PASS"
