#!/usr/bin/env bash
# One round of rejection-sampling fine-tuning on the policy's own first aims that hit.
#
# GRPO moved the bundled model's first aim little in 800 steps, while supervised fine-tuning
# teaches the scripted aim in 100-200 (aim_imitation.sh). This takes supervised steps without a
# script: the policy answers LIMIT training questions of seed 2000 sampled at temperature 1.0
# (`vmtr eval synthetic`), recipes/tiny/select_first_hits.py keeps the episodes right with the
# evidence seen within two turns (the highest under the gated reward with a turn decay above the
# format term), and `vmtr train sft` fine-tunes the policy on them, loss on its replies only.
# Then the held-out colour questions multi-turn, greedy, 96 new tokens a reply, against START.
# Run time on the 2-core development machine, beside other jobs: sampling 800 questions about
# 7 min, 100 fine-tuning steps about 6 min, 2-4 min an evaluation.
# Usage: [LIMIT=N] [STEPS=K] [LR=X] recipes/tiny/rft_round.sh [START [OUT]]
#   START: a checkpoint or model folder (default vmtr/assets/tiny, the bundled model)
#   OUT: samples, the fine-tuned run and evaluations (default runs/rft); data: runs/colour/data.
set -euo pipefail
cd "$(dirname "$0")/../.."
START=${1:-vmtr/assets/tiny}
OUT=${2:-runs/rft}
LIMIT=${LIMIT:-800}
STEPS=${STEPS:-100}
LR=${LR:-1e-4}
D=runs/colour/data
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
recipes/tiny/colour_splits.sh "$D" "train-s2000 2000 1600" "heldout-s5000 5000 200" \
  "heldout-s7000 7000 200"
# an interrupted sampling run resumes where it stopped (`vmtr eval` keeps finished questions)
vmtr eval synthetic --data "$D/train-s2000" -o "$OUT/samples" --model "$START" --limit "$LIMIT" \
  --temperature 1.0 --max-new-tokens 96 --batch-size 8 >/dev/null
python recipes/tiny/select_first_hits.py "$OUT/samples/samples.jsonl" "$OUT/kept.jsonl"
[ -d "$OUT/sft/final" ] || vmtr train sft --episodes "$OUT/kept.jsonl" --out "$OUT/sft" \
  --model "$START" --steps "$STEPS" --batch-size 8 --lr "$LR" --warmup 10 --seed 0 \
  --save-every 50 >/dev/null
for held in heldout-s5000 heldout-s7000; do
  for name in start sft; do
    model=$START
    [ "$name" = sft ] && model=$OUT/sft/final
    [ -f "$OUT/eval/$held/$name/results.json" ] || vmtr eval synthetic --data "$D/$held" \
      -o "$OUT/eval/$held/$name" --model "$model" --temperature 0 --max-new-tokens 96 \
      --batch-size 8 >/dev/null
  done
  python recipes/tiny/warm_start_report.py --data "$D/$held" "start=$OUT/eval/$held/start" \
    "one round=$OUT/eval/$held/sft" | tee "$OUT/table-$held.md"
  python recipes/tiny/miss_anatomy.py --data "$D/$held" "start=$OUT/eval/$held/start" \
    "one round=$OUT/eval/$held/sft" > "$OUT/misses-$held.md"
done
