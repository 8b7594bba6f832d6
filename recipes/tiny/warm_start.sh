#!/usr/bin/env bash
# The colour warm start for RL: a tiny model, trained from scratch, that reads a needle's colour
# and writes the protocol's turns, but whose retrieves never aim.
#
# Every scripted retrieve is a random range that depends neither on the border nor on the
# needles: two random first-turn labels in stage 2, one of the eight aligned 8-frame blocks
# ("16, 23") in stages 3-4. The replies still say which frames showed the border ("Border:
# frames 20 to 24."), the evidence a policy can learn to aim from; the aiming is left to RL.
# Most episodes retrieve once and answer on the next turn (`--retrieve-again 0.5`: half of
# those whose first retrieve missed the needle retrieve again).
#
#   1. `vmtr synth --kinds colour`: the training split (510 2-minute videos, one needle each);
#   2. stage 1, reading drills (4 consecutive frames, the loss on what is read, the auxiliary
#      needle loss on the vision tower) from a fresh random tiny model;
#   3. stages 2-4, protocol episodes mixed with 8-frame reading drills;
#   4. `vmtr eval synthetic` on 200 held-out colour items (seed 5000): its own retrieves, oracle
#      aim (every retrieve rewritten to the needle's frames, which measures reading alone) and
#      16 uniform frames, with the bar that random blocks give (warm_start_report.py).
# Run time on one shared CPU core: data 10 min, stages 25 + 34 + 16 + 11 min, evaluation 8 min
# (about 1 h 45 min). Result: RUN/4-blocks/final.
# Data, checkpoints and results stay under RUN (git-ignored). Re-running skips finished steps;
# an interrupted stage continues from its last checkpoint.
# Usage: recipes/tiny/warm_start.sh [RUN_DIR]   (default runs/colour)
# Environment: ATTENTION=gta trains the text decoder with fresh grouped-tied attention instead
# of the model's own (every other initial weight as with GQA); UNTIL=NAME stops after stage NAME;
# DATA=DIR reads the splits from DIR instead of RUN/data (written there when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/colour}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
D=${DATA:-$RUN/data}

# split NAME SEED N: a colour-only split of N 2-minute videos (skipped when written)
split() {
  if [ ! -f "$D/$1/annotations.json" ]; then
    vmtr synth "$D/$1" --n "$3" --seed "$2" --kinds colour --workers "${WORKERS:-1}"
  fi
}
split train-s1000 1000 510

# stage NAME FROM STEPS [curriculum options...]: train RUN/NAME from FROM (tiny: a fresh
# random tiny model; else a path under RUN) for STEPS steps. Finished stages are skipped; an
# interrupted one resumes.
stage() {
  local name=$1 from=$2 steps=$3
  shift 3
  local out="$RUN/$name" model=$from resume=()
  if [ "$from" != tiny ]; then model="$RUN/$from"; else model=tiny-init; fi
  if [ ! -f "$out/report.json" ]; then
    if ls "$out"/checkpoints/step-* >/dev/null 2>&1; then resume=(--resume); fi
    # one frame cache for every stage (decoding a video costs more than a training step)
    mkdir -p "$RUN/frames" "$out"
    [ -e "$out/frames" ] || ln -s ../frames "$out/frames"
    python -m recipes.tiny.curriculum --out "$out" --model "$model" --steps "$steps" \
      --data "$D/train-s1000" --attention "${ATTENTION:-model}" \
      --save-every 25 --answer-form needle --vision-aux-weight 1 "${resume[@]}" "$@"
  fi
  if [ "${UNTIL:-}" = "$name" ]; then exit 0; fi
}

# 1. Reading drills only: 4 consecutive frames, the loss on colours, shapes, digits and letters.
stage 1-read tiny 400 --batch-size 16 --lr 5e-4 --warmup 30 --seed 1 --eval-items 0 \
  --caption-share 1 --caption-frames 4 --caption-content-loss

# 2. Protocol episodes (70 %; a fifth of them with a one-turn budget) mixed with 8-frame reading
# drills (30 %), the loss on what replies read weighted 5x (never the random retrieve digits).
# Retrieves copy two random first-turn labels; after a retrieve that missed the needle, half of
# the episodes retrieve again and half answer, guessing. Stage 1's last checkpoint carries the
# auxiliary heads.
stage 2-protocol 1-read/checkpoints/step-000400 400 --batch-size 8 --lr 3e-4 --warmup 20 \
  --seed 2 --eval-items 30 --caption-share 0.3 --caption-frames 8 \
  --caption-content-loss --content-weight 5 --single-turn-share 0.2 --retrieve-labels \
  --retrieve-again 0.5
# 3. The same episodes with each retrieve one of the eight aligned blocks of 8 frames ("16, 23"),
# picked at random: after stage 2 greedy decoding wrote no valid first-turn label range
# ("<retrieve>29</retrieve>"), while a handful of fixed ranges is learned well-formed.
stage 3-blocks 2-protocol/checkpoints/step-000400 200 --batch-size 8 --lr 3e-4 --warmup 10 \
  --seed 3 --eval-items 30 --caption-share 0.15 --caption-frames 8 --caption-content-loss \
  --content-weight 5 --single-turn-share 0.2 --retrieve-block 8 --retrieve-again 0.5
# 4. 150 more steps of stage 3's mix at a lower rate: sampled at temperature 1 (as RL samples),
# stage 3 wrote a valid first reply only a quarter of the time.
stage 4-blocks 3-blocks/checkpoints/step-000200 150 --batch-size 8 --lr 2e-4 --warmup 5 \
  --seed 4 --eval-items 30 --caption-share 0.1 --caption-frames 8 --caption-content-loss \
  --content-weight 5 --single-turn-share 0.2 --retrieve-block 8 --retrieve-again 0.5
WARM="$RUN/4-blocks/final"
E="$RUN/eval/4-blocks"

# 3. Held-out colour questions (seed 5000, as `vmtr synth --kinds colour` writes them), greedy:
# its own retrieves, oracle aim (reading alone) and 16 uniform frames in one turn.
split heldout-s5000 5000 200
H="$D/heldout-s5000"
for spec in "multi-turn" "oracle-aim --oracle-aim" "single-16 --mode single-turn --frames 16"; do
  set -- $spec
  name=$1
  shift
  vmtr eval synthetic --data "$H" -o "$E/$name" --model "$WARM" --temperature 0 \
    --max-new-tokens 96 "$@" >/dev/null
done
python recipes/tiny/warm_start_report.py --data "$H" --retrieve-block 8 --json-out "$E/table.json" \
  "multi-turn, own retrieves=$E/multi-turn" "multi-turn, oracle aim=$E/oracle-aim" \
  "single-turn, 16 uniform frames=$E/single-16" | tee "$E/table.md"
echo "warm start: $WARM"
