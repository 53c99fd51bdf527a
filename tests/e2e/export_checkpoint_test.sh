#!/usr/bin/env bash
# e2e: `ftune export --checkpoint RUN_DIR|CKPT --out DIR`: the HF directory of a checkpoint is
# byte-identical to the one `ftune train` exported from the live model at the same step, works
# with `ftune generate`, follows model.dtype (bf16) and falls back past a damaged checkpoint.
# Usage: export_checkpoint_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
write_config
"$FTUNE" train --config base.yaml --set train.steps=6 > train.log 2>&1 || { cat train.log; fail "train failed"; }
[[ $(latest_of run/checkpoints) == step_00000006.h5 ]] || fail "no final checkpoint"

# 1. From the run directory (newest checkpoint) == the live export at the end of training.
"$FTUNE" export --checkpoint run --out hf > export1.log 2>&1 || { cat export1.log; fail "export failed"; }
for f in config.json model.safetensors tokenizer.json generation_config.json; do
  [[ -f hf/$f ]] || fail "hf/$f missing"
done
cmp hf/model.safetensors run/final/model.safetensors || fail "checkpoint export differs from the live model's export"
"$FTUNE" generate --model hf --prompt "What is the capital of France?" --max-new-tokens 4 > gen.log 2>&1 \
  || { cat gen.log; fail "generate on the exported model failed"; }

# 2. A given file, an older step; under mpirun too.
"$FTUNE" export --checkpoint run/checkpoints/step_00000004.h5 --out hf4 > export2.log 2>&1 || { cat export2.log; fail "export of a file failed"; }
grep -q "step 4" export2.log || { cat export2.log; fail "not step 4"; }
if [[ ${#MPIRUN[@]} -gt 0 ]]; then
  "${MPIRUN[@]}" -np 2 "$FTUNE" export --checkpoint run/checkpoints/step_00000004.h5 --out hf4b > export3.log 2>&1 \
    || { cat export3.log; fail "export under mpirun failed"; }
  cmp hf4/model.safetensors hf4b/model.safetensors || fail "mpirun export differs"
fi

# 3. A damaged newest checkpoint: warned about by name, the previous one is exported.
python3 - <<'PY'
import os
p = "run/checkpoints/step_00000006.h5"
size = os.path.getsize(p)
with open(p, "r+b") as f:   # damage tensor bytes in the middle of the file
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in f.read(64)))
PY
"$FTUNE" export --checkpoint run --out hf_fb > export4.log 2>&1 || { cat export4.log; fail "fallback export failed"; }
grep -q "step_00000006.h5 is unusable" export4.log || { cat export4.log; fail "no warning naming the damaged checkpoint"; }
cmp hf_fb/model.safetensors hf4/model.safetensors || fail "fallback did not export step 4"

# 4. bf16 run: exported as bfloat16 (from the fp32 masters).
"$FTUNE" train --config base.yaml --set train.steps=2 --set model.dtype=bf16 \
  --set run.output_dir="$SCRATCH/bf" > bf.log 2>&1 || { cat bf.log; fail "bf16 train failed"; }
"$FTUNE" export --checkpoint bf --out hf_bf > export5.log 2>&1 || { cat export5.log; fail "bf16 export failed"; }
grep -q '"torch_dtype": *"bfloat16"' hf_bf/config.json || { cat hf_bf/config.json; fail "not bfloat16"; }
echo PASS
