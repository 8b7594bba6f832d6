#!/usr/bin/env bash
# The bundled colour model from scratch: every step, each skipped once done, each resumable.
#
#   1. recipes/tiny/train_tiny.sh: the four-kind tiny model (about 4 h on one core, then 70 min
#      on two; it reads colours and names the border's frames, and its retrieves were scripted
#      to aim);
#   2. recipes/tiny/unaimed_start.sh: that model's aim trained away on colour items (25 min);
#   3. recipes/tiny/colour_rl.sh: the three reward arms x three RL seeds from it, 200 GRPO steps
#      each, and the table and curves on two held-out colour sets (about 35 s a step with two
#      runs sharing two cores: about 9 h for the nine runs, and 1 h of evaluation);
#   4. recipes/tiny/bundle_colour.py: the gated arm's run whose last checkpoint answers the most
#      seed-5000 questions multi-turn becomes `--model tiny`, its card written from its
#      held-out runs on both sets.
# Usage: recipes/tiny/colour.sh   (runs/tiny and runs/colour; git-ignored)
set -euo pipefail
cd "$(dirname "$0")/../.."
START=runs/tiny/17-rl/checkpoint-30
[ -f "$START/config.json" ] || recipes/tiny/train_tiny.sh runs/tiny
recipes/tiny/unaimed_start.sh runs/colour "$START"
recipes/tiny/colour_rl.sh runs/colour
BEST=$(cat runs/colour-rl/best-gated-bi-level-reward-heldout-s5000.txt)
python recipes/tiny/bundle_colour.py "$BEST" \
  --heldout runs/colour/data/heldout-s5000 runs/colour/data/heldout-s7000
