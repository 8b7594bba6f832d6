#!/usr/bin/env bash
# The bundled colour model from scratch: every step, each skipped once done, each resumable.
#
#   1. recipes/tiny/train_tiny.sh: the four-kind tiny model (about 4 h on one core, then 70 min
#      on two; it reads colours and names the border's frames, and its retrieves were scripted
#      to aim);
#   2. recipes/tiny/unaimed_start.sh: that model's aim trained away on colour items (25 min);
#   3. recipes/tiny/colour_rl.sh: the three reward arms x three RL seeds from it, 200 GRPO steps
#      each, and the table and curves on two held-out colour sets (15-35 s a step with two
#      runs sharing two cores, by how busy the machine is: 4-9 h for the nine runs, and 1 h of
#      evaluation);
#   4. recipes/tiny/colour_rl_on.sh: the gated arm's best run carried on for 300 more steps with
#      the same flags (about 1.5 h), its checkpoints asked the seed-5000 questions every 50;
#   5. recipes/tiny/colour_rl_on.sh again: that run's checkpoint with the most seed-5000 answers
#      carried on 400 more steps with branching at the decision (`--branch 4`; 15-25 s a step,
#      about 1.5 h, then 40 min of evaluation);
#   6. recipes/tiny/bundle_colour.py: the branching run's checkpoint that answers the most
#      seed-5000 questions multi-turn becomes `--model tiny`, its card written from its held-out
#      runs on both sets (seed 7000 chose nothing).
# Usage: recipes/tiny/colour.sh   (runs/tiny and runs/colour; git-ignored)
set -euo pipefail
cd "$(dirname "$0")/../.."
START=runs/tiny/17-rl/checkpoint-30
[ -f "$START/config.json" ] || recipes/tiny/train_tiny.sh runs/tiny
recipes/tiny/unaimed_start.sh runs/colour "$START"
recipes/tiny/colour_rl.sh runs/colour
BEST=$(cat runs/colour-rl/best-gated-bi-level-reward-heldout-s5000.txt)
ARMS=recipe STEPS=300 recipes/tiny/colour_rl_on.sh "$BEST" runs/colour-rl-on
ON=$(cat runs/colour-rl-on/best-recipe-heldout-s5000.txt)
ARMS=branch STEPS=400 recipes/tiny/colour_rl_on.sh "$ON" runs/branch-on
python recipes/tiny/bundle_colour.py "$(cat runs/branch-on/best-branch-heldout-s5000.txt)" \
  --continues "$BEST" "$ON" --arm "gated bi-level, branching" \
  --heldout runs/colour/data/heldout-s5000 runs/colour/data/heldout-s7000
