#!/usr/bin/env bash
# The colour RL warm start: the four-kind tiny model (recipes/tiny/train_tiny.sh), its aim
# trained away.
#
# A warm start for "RL learns where to look" must read colours and say where the border was,
# but its retrieves must not aim. Trained from scratch (recipes/tiny/warm_start.sh) it reads
# colours (100 % with oracle aim) but does not name the border: its first reply names the
# border's first-turn frames exactly in 5 % of held-out items, also after 200 steps of drills on
# the first turn's frames (it writes one range for every item), though a linear probe on its
# tower tells border frames from others 100 %. The four-kind model of train_tiny.sh names them
# in 70 % (it learned to over hours of drills), but its last supervised stages scripted its
# retrieves from those frames. So this stage continues it on colour items with every scripted
# retrieve one of the eight aligned 8-frame blocks picked at random (never the border's or the
# needle's), half the examples drills on the first turn's frames (the loss on what they read)
# so the naming stays.
# The report checks it: needles shown near the random-block bar (it no longer aims), border
# named kept, oracle aim >= 95 % (reading is not the limit).
# Run time on one CPU core: about 35 min training, 12 min evaluation.
# Usage: recipes/tiny/unaimed_start.sh [RUN_DIR [START]]  (default runs/colour, whose data/ it
# writes as warm_start.sh does; START: the four-kind model recipes/tiny/train_tiny.sh makes,
# default runs/tiny/17-rl/checkpoint-30)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/colour}
START=${2:-runs/tiny/17-rl/checkpoint-30}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
D="$RUN/data"
recipes/tiny/colour_splits.sh "$D" "train-s1000 1000 510" "heldout-s5000 5000 200"
# stage NAME FROM STEPS CAPTION_SHARE SEED: one curriculum stage into RUN/NAME (skipped when
# finished, resumed when interrupted)
stage() {
  local out="$RUN/$1" resume=()
  if [ -f "$out/report.json" ]; then return; fi
  if ls "$out"/checkpoints/step-* >/dev/null 2>&1; then resume=(--resume); fi
  mkdir -p "$RUN/frames" "$out"
  [ -e "$out/frames" ] || ln -s ../frames "$out/frames"
  python -m recipes.tiny.curriculum --out "$out" --model "$2" --data "$D/train-s1000" \
    --steps "$3" --save-every 25 --answer-form needle --batch-size 8 --lr 2e-4 --warmup 10 \
    --seed "$5" --eval-items 30 --caption-share "$4" --caption-layout first-turn \
    --caption-content-loss --content-weight 5 --single-turn-share 0.2 --retrieve-block 8 \
    --retrieve-again 0.5 "${resume[@]}"
}
# 1. half drills: the naming comes back (99 %) and greedy retrieves stop aiming, but sampled at
# temperature 0.6 half of its valid first retrieves still hold the first border frame named
# (random blocks: one in eight)
stage unaimed "$START" 200 0.5 6
# 2. three quarters episodes, whose scripted random blocks are what trains the aim away
stage unaimed-2 "$RUN/unaimed/final" 300 0.25 7
OUT="$RUN/unaimed-2"
E="$RUN/eval/unaimed-2"
H="$D/heldout-s5000"
for spec in "multi-turn" "oracle-aim --oracle-aim" "single-16 --mode single-turn --frames 16"; do
  set -- $spec
  name=$1
  shift
  [ -f "$E/$name/results.json" ] || vmtr eval synthetic --data "$H" -o "$E/$name" \
    --model "$OUT/final" --temperature 0 --max-new-tokens 96 "$@" >/dev/null
done
python recipes/tiny/warm_start_report.py --data "$H" --retrieve-block 8 --json-out "$E/table.json" \
  "multi-turn, own retrieves=$E/multi-turn" "multi-turn, oracle aim=$E/oracle-aim" \
  "single-turn, 16 uniform frames=$E/single-16" | tee "$E/table.md"
# sampled as RL samples (temperature 0.6): how often a first retrieve holds the border frame named
[ -f "$E/sampled.txt" ] || python recipes/tiny/sample_probe.py "$OUT/final" "$H" \
  --temperature 0.6 --items 60 --seeds 3 > "$E/sampled.txt"
cat "$E/sampled.txt"
echo "warm start: $OUT/final"
