#!/usr/bin/env bash
# Scaling experiment: `ftune train` over a sweep of world sizes and layouts (dp, tp, ZeRO stage)
# on one config, with the same micro-batch per data-parallel rank (weak scaling in dp; tp splits
# each replica's work). Writes, per layout, the median over the steps after warm-up of
#   tokens/s (global), tokens/s per rank, scaling efficiency = tokens/s / (ranks x tokens/s of the
#   1-rank run), and the fraction of step time rank 0 spent blocked in communication
#   (metrics.jsonl comm_wait_s: time inside Work::Wait) and waiting for data (data_wait_s),
# into OUT/scaling.csv and a plot OUT/scaling.svg + .png (gnuplot; without it, the CSV only).
# A benchmark, not a test: it is not run by CTest. The plot needs gnuplot (Debian gnuplot-nox).
#
#   cluster/scaling.sh [--config C] [--ranks "1 2 4"] [--steps N] [--out DIR] [--build DIR]
#                      [--launcher "mpirun ..."] [--set key=value ...]
# Without --config: a 4-layer, 256-wide Llama on generated text (seq 256, micro-batch 4).
# Layouts per world size n: dp=n with ZeRO 0..3 (ZeRO 1-3 for n > 1), tp=2 x dp=n/2, tp=n
# (tp must divide the attention and KV heads). Each rank runs FTUNE_SCALING_THREADS torch threads
# (default 1). Under Slurm, pass --launcher "srun --mpi=pmix" (or mpirun) inside an allocation.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONFIG=""
RANKS="1 2 4"
STEPS=12
WARMUP=3
OUT=runs/scaling
BUILD=build
LAUNCHER=""
SETS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --config) CONFIG=$(realpath "$2"); shift 2 ;;
    --ranks) RANKS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --launcher) LAUNCHER=$2; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    *) echo "scaling.sh: unknown option '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
((STEPS > WARMUP)) || { echo "scaling.sh: --steps must exceed the $WARMUP warm-up steps" >&2; exit 2; }
FTUNE=$ROOT/$BUILD/ftune
[[ -x $FTUNE ]] || { echo "scaling.sh: $FTUNE not found; build first (cluster/setup.sh)" >&2; exit 2; }
THREADS=${FTUNE_SCALING_THREADS:-1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=$THREADS
# shellcheck disable=SC2206
LAUNCH=(${LAUNCHER:-mpirun --oversubscribe --bind-to none})
NP_FLAG=-np
[[ ${LAUNCH[0]} == srun ]] && NP_FLAG=-n
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
WORK=$OUT/work
rm -rf "$WORK"
mkdir -p "$WORK"

if [[ -z $CONFIG ]]; then
  python3 "$ROOT/cluster/synthetic_text.py" "$WORK/text.jsonl" 3000
  CONFIG=$WORK/scaling.yaml
  cat > "$CONFIG" <<YAML
run: {output_dir: $WORK/run}
tokenizer: {path: $ROOT/tests/fixtures/data/tokenizer}
model: {arch: {vocab_size: 8192, hidden_size: 256, intermediate_size: 768, num_hidden_layers: 4,
               num_attention_heads: 8, num_key_value_heads: 4}}
data: {inputs: [$WORK/text.jsonl], max_seq_len: 256, packing: true, split: {test_ratio: 0.0},
       dir: $WORK/data}
train: {micro_batch: 4, clip: 1.0}
optim: {lr: 1.0e-4, schedule: constant}
checkpoint: {every: 0}
log: {progress: lines, every: 1000}
YAML
  "$FTUNE" prepare --config "$CONFIG" > "$WORK/prepare.log" 2>&1 \
    || { cat "$WORK/prepare.log"; echo "scaling.sh: prepare failed" >&2; exit 1; }
fi

layouts() {  # world size -> "dp tp zero" lines
  local n=$1 z
  if ((n == 1)); then echo "1 1 0"; return; fi
  for z in 0 1 2 3; do echo "$n 1 $z"; done
  ((n > 2 && n % 2 == 0)) && echo "$((n / 2)) 2 0"
  echo "1 $n 0"
}

echo "ranks,dp,tp,zero,threads_per_rank,tokens_per_s,tokens_per_s_per_rank,scaling_efficiency,step_s,comm_frac,data_frac,final_loss" > "$OUT/scaling.csv"
base_tps=""
for n in $RANKS; do
  while read -r dp tp zero; do
    name=n${n}_dp${dp}_tp${tp}_z${zero}
    run=$WORK/$name
    cmd=("$FTUNE" train --config "$CONFIG" --set run.output_dir="$run" --set train.steps="$STEPS"
         --set parallel.dp="$dp" --set parallel.tp="$tp" --set parallel.zero="$zero"
         --set run.threads="$THREADS" --set checkpoint.resume=false "${SETS[@]}")
    ((n > 1)) && cmd=("${LAUNCH[@]}" "$NP_FLAG" "$n" "${cmd[@]}")
    if ! "${cmd[@]}" > "$run.log" 2>&1 < /dev/null; then  # mpirun would read the layout list
      echo "scaling.sh: $name failed; last lines of $run.log:" >&2
      tail -n 5 "$run.log" >&2
      continue
    fi
    row=$(python3 - "$run/metrics.jsonl" "$n" "$dp" "$tp" "$zero" "$THREADS" "$WARMUP" "${base_tps:-0}" <<'PY'
import json, statistics, sys
path, n, dp, tp, zero, threads, warmup, base = sys.argv[1:]
n, warmup, base = int(n), int(warmup), float(base)
rows = [json.loads(l) for l in open(path) if '"tokens_per_s"' in l][warmup:]
med = lambda k: statistics.median(r[k] for r in rows)
total = [r["step_s"] + r["data_wait_s"] for r in rows]
tps = statistics.median(r["tokens"] / t for r, t in zip(rows, total))
comm = statistics.median(r["comm_wait_s"] / t for r, t in zip(rows, total))
data = statistics.median(r["data_wait_s"] / t for r, t in zip(rows, total))
eff = tps / (n * base) if base > 0 else 1.0
print(f"{n},{dp},{tp},{zero},{threads},{tps:.1f},{tps / n:.1f},{eff:.3f},"
      f"{statistics.median(total):.4f},{comm:.3f},{data:.3f},{rows[-1]['loss']:.6f}")
PY
)
    echo "$row" >> "$OUT/scaling.csv"
    [[ -z $base_tps && $n == 1 ]] && base_tps=$(cut -d, -f6 <<< "$row")
    echo "$name: $row"
  done < <(layouts "$n")
done

python3 - "$OUT/scaling.csv" "$(getconf _NPROCESSORS_ONLN)" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"\nmachine: {sys.argv[2]} cores, load {sys.argv[3]} at the end; medians over the steps after warm-up")
print("| ranks | dp | tp | zero | tokens/s | tokens/s/rank | efficiency | step s | comm | data wait |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['ranks']} | {r['dp']} | {r['tp']} | {r['zero']} | {float(r['tokens_per_s']):.0f} | "
          f"{float(r['tokens_per_s_per_rank']):.0f} | {float(r['scaling_efficiency']):.2f} | "
          f"{float(r['step_s']):.3f} | {100 * float(r['comm_frac']):.0f}% | {100 * float(r['data_frac']):.1f}% |")
PY

plot_to() {  # terminal line, output file
  gnuplot <<GP
$1
set output "$2"
set datafile separator ","
set key autotitle columnhead
set multiplot layout 1,3 title "ftune scaling ($(getconf _NPROCESSORS_ONLN) cores, $THREADS thread(s) per rank)"
set xlabel "layout (ranks dp tp zero)"
set xtics rotate by -45 font ",8"
set grid ytics
set style data linespoints
set style fill solid 0.8
set boxwidth 0.8
lbl(c1,c2,c3,c4) = sprintf("%d: dp%d tp%d z%d", c1, c2, c3, c4)
set title "throughput"
set ylabel "tokens/s"
set yrange [0:*]
plot "$OUT/scaling.csv" using 0:6:xtic(lbl(\$1,\$2,\$3,\$4)) with boxes notitle
set title "scaling efficiency"
set ylabel "tokens/s / (ranks x 1-rank tokens/s)"
set yrange [0:1.2<*]
plot "$OUT/scaling.csv" using 0:8:xtic(lbl(\$1,\$2,\$3,\$4)) with boxes notitle, 1 with lines dt 2 lc "black" title "ideal"
set title "fraction of step time"
set ylabel "fraction"
set yrange [0:1]
set key top left
plot "$OUT/scaling.csv" using 0:10:xtic(lbl(\$1,\$2,\$3,\$4)) title "communication (blocked in Wait)", \
     "" using 0:11 title "data wait"
unset multiplot
GP
}
if command -v gnuplot > /dev/null; then
  plot_to 'set terminal svg size 1200,420 font "sans,11"' "$OUT/scaling.svg"
  plot_to 'set terminal pngcairo size 1200,420 font "sans,10"' "$OUT/scaling.png"
  echo "wrote $OUT/scaling.csv, $OUT/scaling.svg and $OUT/scaling.png"
else
  echo "wrote $OUT/scaling.csv (no plot: gnuplot not found; apt-get install gnuplot-nox)"
fi
