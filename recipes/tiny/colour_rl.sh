#!/usr/bin/env bash
# RL that learns where to look: the Video-MTR ablation in miniature on colour questions.
#
# From the colour warm start of recipes/tiny/unaimed_start.sh (reads colours, 100 % with oracle
# aim; names the border's frames in 100 % of held-out items; its retrieves show the needle as often
# as random blocks do), three GRPO arms that differ only in the reward -- answer only, the gated
# bi-level reward (the released code's), the bi-level reward without the gate -- each with three
# RL seeds, the vision tower fixed (reading is the warm start's; RL trains where to look and when
# to answer). Then every arm is asked the held-out colour questions multi-turn and the table and
# the accuracy / needles-shown curves are drawn into docs/colour_rl.png, the README's plot
# (benchmarks/rl_ablation.py).
# Rollouts sample at temperature 0.6 (at 1.0 a from-scratch warm start wrote 57 % of its first
# replies invalid, at 0.6 8 %; recipes/tiny/sample_probe.py). Runs resume from their checkpoints
# (every 10 steps), so re-running continues. lr 3e-5: at 1e-4 the gated arm sharpened its aim
# (first retrieves holding the border frame named: 55 % -> 72 % in 20 steps), then, after a
# batch where answering at once paid, every sample of every group answered at turn 1 by step 26
# and never retrieved again (with no retrieving sample in a group GRPO has nothing to restore it
# from).
# RL's credit covers the whole reply, as Video-MTR's: with --train-tokens action the first aim
# improved but the decision to retrieve again after a miss, which this model states in its think
# text, drifted untrained (docs/tiny-model.md). GRPO groups whose samples all scored the same are
# left out of the update (no gradient), which spares a third to two thirds of a step's passes.
# Usage: [STEPS=N] recipes/tiny/colour_rl.sh [RUN_DIR] (default runs/colour; the warm start must
# exist). STEPS (default 200) carries every run on from its last checkpoint to N steps; the table
# is then of checkpoint-N and the curves run to N.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/colour}
STEPS=${STEPS:-200}
D="$RUN/data"
mkdir -p "${RUN}-rl"
if [ ! -f "$D/heldout-s7000/annotations.json" ]; then
  vmtr synth "$D/heldout-s7000" --n 200 --seed 7000 --kinds colour
fi
for held in "heldout-s5000 5000" "heldout-s7000 7000"; do
  set -- $held
  python benchmarks/rl_ablation.py --start "$RUN/unaimed-2/final" --train "$D/train-s1000" \
    --heldout "$D/$1" --heldout-seed "$2" --n 200 --steps "$STEPS" --lr 3e-5 --kl-coef 0 \
    --temperature 0.6 --seed 0 1 2 --parallel 2 --freeze-vision --out "${RUN}-rl" --plot docs/colour_rl.png \
    | tee "${RUN}-rl/table-$1-${STEPS}.md"
done
