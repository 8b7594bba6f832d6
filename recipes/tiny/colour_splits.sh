#!/usr/bin/env bash
# The colour splits a tiny-model recipe reads, generated once: each SPLIT is "NAME SEED N", the
# folder DATA/NAME of N colour questions from `vmtr synth --seed SEED --kinds colour`; a folder
# that already holds its annotations is left as it is.
# Usage: recipes/tiny/colour_splits.sh DATA "NAME SEED N" [...]
set -euo pipefail
data=$1
shift
for split in "$@"; do
  read -r name seed n <<< "$split"
  [ -f "$data/$name/annotations.json" ] || vmtr synth "$data/$name" --n "$n" --seed "$seed" \
    --kinds colour
done
