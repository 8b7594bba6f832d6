#!/usr/bin/env bash
# GTA against grouped-query attention on models that read: two tiny colour readers trained by
# one recipe from one seed, then `benchmarks/gta.py --readers` on 200 held-out colour items.
#
# Both readers are stages 1-2 of recipes/tiny/warm_start.sh (400 steps of reading drills from a
# fresh random tiny model, then 400 steps of protocol episodes mixed with drills); the GTA one
# has its text decoder's attention swapped for fresh grouped-tied attention before step 1
# (ATTENTION=gta: every other initial weight is the GQA run's). The two train side by side, one
# core each, on the same training split and frame cache. Accuracy is with oracle aim (the
# needle shown on the retrieve's turn), so it measures reading, not aiming.
# Run time on two cores: training about 35 min, evaluation about 10 min.
# Re-running skips what is finished; an interrupted stage resumes from its last checkpoint.
# Usage: recipes/tiny/gta_readers.sh [RUN_DIR]   (default runs/colour; GTA under RUN_DIR-gta)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/colour}
GTA_RUN="$RUN-gta"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

mkdir -p "$RUN/frames" "$GTA_RUN"
[ -e "$GTA_RUN/frames" ] || ln -s "$(realpath "$RUN/frames")" "$GTA_RUN/frames"
# the GQA run writes the training split first; the GTA run reads it
UNTIL=2-protocol recipes/tiny/warm_start.sh "$RUN" &
gqa=$!
while [ ! -f "$RUN/data/train-s1000/annotations.json" ]; do
  kill -0 "$gqa" 2>/dev/null || { wait "$gqa"; exit 1; }
  sleep 10
done
ATTENTION=gta UNTIL=2-protocol DATA="$RUN/data" recipes/tiny/warm_start.sh "$GTA_RUN"
wait "$gqa"

H="$RUN/data/heldout-s5000"
[ -f "$H/annotations.json" ] || vmtr synth "$H" --n 200 --seed 5000 --kinds colour
python benchmarks/gta.py --readers "$RUN/2-protocol/final" "$GTA_RUN/2-protocol/final" \
  --heldout "$H" --work "$RUN/eval/gta" | tee "$RUN/eval/gta.txt"
