#!/usr/bin/env bash
# Can the tiny model carry out a precise aim at all? A probe, not a recipe stage.
#
# The RL policies' first retrieve shows the needle about half the time, far below the fixed rules
# of aim_ceiling.py. Either the model cannot carry out such a rule (a capacity limit, which no
# reward would lift) or RL does not find it (a credit limit). This fine-tunes a model, supervised,
# on scripted episodes whose retrieves follow the curriculum's aim (`--retrieve-aim 1`: from the
# first border frame the reply names to the label after the last, then from the label before it;
# aim_ceiling.py's "scripted aim" rows say how often the script itself shows the needle), with
# the un-aimed warm start's mix of reading drills, and asks its checkpoints the held-out colour
# questions multi-turn (greedy, 96 new tokens a reply). A student that shows the needle about as
# often as its script can carry out an aim that precise; the gap to the script is what imitation
# loses. Its retrieves are scripted to aim, so it is never a candidate for the bundled model.
# Run time on the 2-core development machine: about 5 s a step beside two other jobs (17 min for
# 200 steps), then 3-4 min an evaluation.
# Usage: [STEPS=N] [EVAL_EVERY=K] recipes/tiny/aim_imitation.sh [START [OUT]]
#   START: a checkpoint or model folder (default vmtr/assets/tiny, the bundled model)
#   OUT: the run and its evaluations (default runs/aim-imitation); data: runs/colour/data.
set -euo pipefail
cd "$(dirname "$0")/../.."
START=${1:-vmtr/assets/tiny}
OUT=${2:-runs/aim-imitation}
STEPS=${STEPS:-200}
EVAL_EVERY=${EVAL_EVERY:-100}
D=runs/colour/data
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
recipes/tiny/colour_splits.sh "$D" "train-s2000 2000 1600" "heldout-s5000 5000 200" \
  "heldout-s7000 7000 200"
resume=()
if ls "$OUT"/run/checkpoints/step-* >/dev/null 2>&1; then resume=(--resume); fi
if [ ! -d "$OUT/run/final" ]; then
  mkdir -p "$OUT/frames" "$OUT/run"
  [ -e "$OUT/run/frames" ] || ln -s ../frames "$OUT/run/frames"
  python -m recipes.tiny.curriculum --out "$OUT/run" --model "$START" --data "$D/train-s2000" \
    --steps "$STEPS" --save-every 50 --keep-checkpoints 4 --answer-form needle --batch-size 8 \
    --lr 2e-4 --warmup 10 --seed 11 --eval-items 30 --caption-share 0.25 \
    --caption-layout first-turn --caption-content-loss --content-weight 5 \
    --single-turn-share 0.2 --retrieve-again 1.0 --retrieve-aim 1 "${resume[@]}"
fi
python recipes/tiny/aim_ceiling.py --train "$D/train-s2000" \
  --heldout "$D/heldout-s5000" "$D/heldout-s7000" | grep scripted | tee "$OUT/script.md"
for held in heldout-s5000 heldout-s7000; do
  rows=()
  for ((step = EVAL_EVERY; step <= STEPS; step += EVAL_EVERY)); do
    dir="$OUT/eval/$held/step-$step"
    [ -f "$dir/results.json" ] || vmtr eval synthetic --data "$D/$held" -o "$dir" \
      --model "$OUT/run/checkpoints/step-$(printf %06d "$step")" --temperature 0 \
      --max-new-tokens 96 --batch-size 8 >/dev/null
    rows+=("step $step=$dir")
  done
  python recipes/tiny/warm_start_report.py --data "$D/$held" "${rows[@]}" \
    | tee "$OUT/table-$held.md"
  python recipes/tiny/miss_anatomy.py --data "$D/$held" "${rows[@]}" > "$OUT/misses-$held.md"
done
