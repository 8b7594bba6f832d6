#!/usr/bin/env bash
# Reproduce the bundled tiny model (vmtr/assets/tiny) from scratch, end to end:
#   1. generate the training split (two synthetic sets: 1-minute and 2-minute videos),
#   2. warm-start a freshly initialised tiny Qwen2.5-VL with `vmtr train sft` (450 steps, free
#      random retrieve ranges, evaluated at 300 and 450 steps),
#   3. fine-tune that for 120 steps with retrieves scripted as random aligned 8-frame blocks: the
#      free ranges left greedy decoding writing malformed ranges ("2, 4, 4"),
#   4. copy the result, with vmtr_tiny.json saying how it was made, into vmtr/assets/tiny.
# Data, checkpoints and logs stay under runs/ (git-ignored). Re-running skips finished stages;
# an interrupted training run continues from its last checkpoint.
# Usage: scripts/train_tiny.sh [RUN_DIR]   (default runs/tiny; one CPU core, about 1.5 hours)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/tiny}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Training phases: the run stops at each step count, is evaluated on held-out items, then
# continues with --resume (the cosine schedule is recomputed for the new total).
PHASES=${PHASES:-"300 450"}
BATCH=${BATCH:-4}
LR=${LR:-5e-4}
WARMUP=${WARMUP:-20}
SEED=${SEED:-0}

# seed, minutes, items (item i of a seed is the same whatever the count)
for spec in "1000 1.0 1000" "1001 2.0 560"; do
  set -- $spec
  dir="$RUN/data/train-s$1"
  if [ ! -f "$dir/annotations.json" ]; then
    python -c "
import time
from vmtr.eval.synthetic import SyntheticSettings, generate
t = time.time()
generate('$dir', SyntheticSettings(n_items=$3, seed=$1, minutes=$2))
print('generated $dir in', round(time.time() - t, 1), 's')
"
  fi
done

if vmtr train --help >/dev/null 2>&1; then TRAIN=(vmtr train); else TRAIN=(python -m vmtr.cli_train); fi
for STEPS in $PHASES; do
  done_steps=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['steps'])" \
    "$RUN/sft/report.json" 2>/dev/null || echo 0)
  if [ "$done_steps" -ge "$STEPS" ]; then continue; fi
  RESUME=()
  if ls "$RUN"/sft/checkpoints/step-* >/dev/null 2>&1; then RESUME=(--resume); fi
  "${TRAIN[@]}" sft --data "$RUN/data/train-s1000" --data "$RUN/data/train-s1001" \
    --out "$RUN/sft" --model tiny --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" \
    --warmup "$WARMUP" --seed "$SEED" --save-every 25 --eval-items 40 "${RESUME[@]}"
  cp "$RUN/sft/report.json" "$RUN/sft/report-step$STEPS.json"
done

BLOCK_STEPS=${BLOCK_STEPS:-120}
if [ ! -f "$RUN/sft-blocks/report.json" ]; then
  mkdir -p "$RUN/sft-blocks"
  ln -sfn ../sft/frames "$RUN/sft-blocks/frames"  # reuse the decoded pools
  RESUME=()
  if ls "$RUN"/sft-blocks/checkpoints/step-* >/dev/null 2>&1; then RESUME=(--resume); fi
  "${TRAIN[@]}" sft --data "$RUN/data/train-s1000" --data "$RUN/data/train-s1001" \
    --out "$RUN/sft-blocks" --model "$RUN/sft/final" --steps "$BLOCK_STEPS" --batch-size "$BATCH" \
    --lr 3e-4 --warmup 10 --seed 1 --save-every 20 --eval-items 40 --retrieve-block 8 \
    "${RESUME[@]}"
fi

python - "$RUN" "$BATCH" "$LR" "$SEED" "$PHASES" <<'PY'
import json, shutil, sys
from pathlib import Path

from transformers import AutoModelForImageTextToText

from vmtr.models.tiny import TINY_DIR

run, batch, lr, seed = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
report = json.loads((run / "sft-blocks" / "report.json").read_text())
first = json.loads((run / "sft" / "report.json").read_text())
e = report["eval"]
shutil.rmtree(TINY_DIR, ignore_errors=True)
shutil.copytree(report["final"], TINY_DIR)
params = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(TINY_DIR).parameters())
reads = e.get("reads_shown_needles")
skill = (
    "learned the reply format"
    if e["invalid_turns"] <= 0.1 * e["items"]
    else "often still breaks the reply format"
)
if reads is not None:
    skill += (
        f", and its first reply names the shapes its frames show in {reads:.0%} of the "
        "held-out cases where one is shown"
    )
info = {
    "trained": True,
    "description": (
        f"tiny Qwen2.5-VL ({params / 1e6:.1f} M parameters) trained from scratch on CPU with "
        f"{first['steps'] + report['steps']} supervised steps "
        f"({batch * (first['steps'] + report['steps'])} scripted trajectories of synthetic "
        f"videos). It {skill}; it got {e['accuracy']:.0%} of {e['items']} held-out "
        f"synthetic questions right (chance 25%) in {e['mean_turns']:.1f} turns on average. "
        "It was taught random retrieve ranges, never where to look (that is left to RL)"
        + (
            f"; {e['invalid_turns']} of its greedy replies broke the protocol"
            if e["invalid_turns"]
            else ""
        )
        + ". It knows nothing of real videos."
    ),
    "recipe": "scripts/train_tiny.sh",
    "sft": {
        "steps": first["steps"] + report["steps"],
        "phases": f"{sys.argv[5]} (free ranges), then {report['steps']} (aligned blocks)",
        "batch_size": batch,
        "lr": lr,
        "seed": seed,
    },
    "heldout_eval": e,
    "heldout_eval_before_blocks": first["eval"],
}
(TINY_DIR / "vmtr_tiny.json").write_text(json.dumps(info, indent=2) + "\n")
print(info["description"])
PY
du -sh "$(python -c 'from vmtr.models.tiny import TINY_DIR; print(TINY_DIR)')"
