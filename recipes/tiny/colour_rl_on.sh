#!/usr/bin/env bash
# Past 200 steps: does RL keep lifting the best gated policy, and under which credit?
#
# colour_rl.sh stops every arm at 200 GRPO steps. This carries a gated policy (colour.sh passes
# that script's best run) on under the gated bi-level reward, from the same start and RL seed, in
# up to four ways run side by side (one thread each):
#   recipe    -- colour_rl.sh's flags unchanged (whole-reply credit, no KL term);
#   anchored  -- the policy gradient on the action and the decision sentence only, a KL term to
#                the start on the rest of the reply (what it names and saw), and questions whose
#                last group all answered right alike passed over with chance 0.8
#                (`--train-tokens decision --kl-tokens untrained --kl-coef 0.1 --skip-solved 0.8`);
#   turn      -- turn-level GRPO credit (`--credit turn`): a second retrieve is judged against the
#                group's other second turns (whatever first retrieves they followed) rather than
#                taking its whole episode's standing;
#   branch    -- the recipe plus branching at the decision (`--branch 4`): per group, one episode
#                whose first retrieve missed the needle is replayed up to that retrieve and
#                continued four times, a GRPO group of its own, so the search after a miss is
#                judged against searches from the same place (vmtr.policies.branching);
#   sooner    -- branch, with the code reward's turn decay at 0.2 (`--turn-decay 0.2`): at the
#                released 0.1 an extra turn's format term cancels the decay, so a right answer
#                pays the same whether the first retrieve or a second found the needle and the
#                first aim is credited only through the risk of never finding it; at 0.2 a first
#                retrieve that shows it outranks a miss made good, also in groups that all answer
#                right (which the released reward leaves flat);
#   explore   -- branch, its rollouts sampled at temperature 1.0 instead of 0.6 (the flag given
#                last wins): at 0.6 a group's four samples of a carried-on policy take one first
#                retrieve between them in most groups, so GRPO has no other first aim to compare;
#   both      -- sooner and explore together: the tie broken and more first aims tried;
#   first     -- sooner plus branching at the first decision (`--branch-first 4
#                --branch-first-temperature 1.0`): per group, one episode's first reply is
#                replayed up to its <retrieve> tag and four ranges are sampled from there at
#                temperature 1.0, each played out, a group of their own, so first aims that follow
#                the same reading are compared (vmtr.policies.branching.branch_first).
# After its training each arm's checkpoints (every EVAL_EVERY steps) are asked the 200 held-out
# colour questions of seed 5000 multi-turn (greedy, 96 new tokens a reply, as colour_rl.sh's
# tables), its last one also seed 7000; then recipes/tiny/warm_start_report.py prints one table
# per held-out set, the start's row first, into OUT/table-heldout-s*.md, and
# recipes/tiny/miss_anatomy.py says which turn first showed the needle; each arm's checkpoint with
# the most seed-5000 answers is named in OUT/best-ARM-heldout-s5000.txt.
# Resumable: runs continue from their last checkpoint, finished evaluations are kept.
# Run time on the 2-core development machine: 15-25 s a step for each of two runs side by side
# (about 1 h for 200 steps), then 3-4 min for each evaluation.
# Usage: [STEPS=N] [EVAL_EVERY=K] [ARMS="recipe turn"] [TRAIN_SEED=S TRAIN_N=N]
#        recipes/tiny/colour_rl_on.sh [START [OUT]]
#   START: a checkpoint or model folder (default vmtr/assets/tiny, the bundled model)
#   OUT: where runs and evaluations go (default runs/colour-rl-on); data: runs/colour/data.
#   TRAIN_SEED, TRAIN_N: the training split, train-sSEED of N colour questions (default 1000 and
#   510, colour_rl.sh's); 8 prompts a step draw 1,600 in 200 steps (each step at random), so
#   1,600 asks a question once on average, 510 about three times.
set -euo pipefail
cd "$(dirname "$0")/../.."
START=${1:-vmtr/assets/tiny}
OUT=${2:-runs/colour-rl-on}
STEPS=${STEPS:-200}
read -r -a ARMS <<< "${ARMS:-recipe anchored turn}"
EVAL_EVERY=${EVAL_EVERY:-50}
D=runs/colour/data
TRAIN_SEED=${TRAIN_SEED:-1000}
TRAIN_N=${TRAIN_N:-510}
recipes/tiny/colour_splits.sh "$D" "train-s$TRAIN_SEED $TRAIN_SEED $TRAIN_N" \
  "heldout-s5000 5000 200" "heldout-s7000 7000 200"
RECIPE="--train-tokens reply --kl-tokens reply --kl-coef 0"
BRANCH="$RECIPE --branch 4"
declare -A CREDIT=(
  [recipe]="$RECIPE"
  [anchored]="--train-tokens decision --kl-tokens untrained --kl-coef 0.1 --skip-solved 0.8"
  [turn]="$RECIPE --credit turn"
  [branch]="$BRANCH"
  [sooner]="$BRANCH --turn-decay 0.2"
  [explore]="$BRANCH --temperature 1.0"
  [both]="$BRANCH --turn-decay 0.2 --temperature 1.0"
  [first]="$BRANCH --turn-decay 0.2 --branch-first 4 --branch-first-temperature 1.0"
)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# evaluate NAME MODEL HELDOUT: one greedy multi-turn run, kept once finished
evaluate() {
  local dir="$OUT/eval/$3/$1"
  [ -f "$dir/results.json" ] || vmtr eval synthetic --data "$D/$3" -o "$dir" --model "$2" \
    --temperature 0 --max-new-tokens 96 --batch-size 8 >/dev/null
}
# arm NAME: train it to STEPS (checkpoints every 25 steps), then evaluate its checkpoints
arm() {
  mkdir -p "$OUT/$1"
  # shellcheck disable=SC2086
  python -m vmtr.cli train rl --data "$D/train-s$TRAIN_SEED/annotations.json" --out "$OUT/$1" \
    --model "$START" --algo grpo --steps "$STEPS" --prompts-per-step 8 --samples-per-prompt 4 \
    --actor-lr 3e-5 --temperature 0.6 --top-p 1.0 --ppo-epochs 2 --max-new-tokens 64 \
    --save-every 25 --seed 3 --max-turns 3 --freeze-vision --loss-agg seq-mean-token-mean \
    ${CREDIT[$1]} >> "$OUT/$1.log" 2>&1
  for ((step = EVAL_EVERY; step <= STEPS; step += EVAL_EVERY)); do
    evaluate "$1-$step" "$OUT/$1/checkpoint-$step" heldout-s5000
  done
  evaluate "$1-$STEPS" "$OUT/$1/checkpoint-$STEPS" heldout-s7000
}
for name in "${ARMS[@]}"; do
  arm "$name" &
done
wait
for held in heldout-s5000 heldout-s7000; do
  evaluate start "$START" "$held"
  rows=("start=$OUT/eval/$held/start")
  for name in "${ARMS[@]}"; do
    for ((step = EVAL_EVERY; step <= STEPS; step += EVAL_EVERY)); do
      if [ "$held" = heldout-s5000 ] || [ "$step" = "$STEPS" ]; then
        rows+=("$name-$step=$OUT/eval/$held/$name-$step")
      fi
    done
  done
  python recipes/tiny/warm_start_report.py --data "$D/$held" "${rows[@]}" | tee "$OUT/table-$held.md"
  python recipes/tiny/miss_anatomy.py --data "$D/$held" "${rows[@]}" > "$OUT/misses-$held.md"
done
# each arm's checkpoint that answers the most seed-5000 questions, the earliest on a tie (what
# recipes/tiny/colour.sh bundles), into OUT/best-ARM-heldout-s5000.txt
for name in "${ARMS[@]}"; do
  python -c "
import json, sys
from pathlib import Path
out, name, steps, every = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
scores = {
    step: json.loads((out / 'eval/heldout-s5000' / f'{name}-{step}/results.json').read_text())['accuracy']
    for step in range(every, steps + 1, every)
}
best = max(scores, key=lambda step: (scores[step], -step))
(out / f'best-{name}-heldout-s5000.txt').write_text(f'{out}/{name}/checkpoint-{best}\\n')
" "$OUT" "$name" "$STEPS" "$EVAL_EVERY"
done
