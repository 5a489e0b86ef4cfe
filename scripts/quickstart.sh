#!/usr/bin/env bash
# The main job: sets up .venv on first use, trains the short default (5-way 1-shot Omniglot,
# about ten minutes on a 2-core CPU), evaluates it, prints the results table, writes the plot.
#   scripts/quickstart.sh [--workdir DIR] [--config.train.steps=N ...]
# Omniglot is read from --config.data.dir, else $HT_DATA_DIR, else ~/.cache/hypertransformer
# (downloaded there from the official repository when missing).
source "$(dirname "$0")/_venv.sh"
WORKDIR="runs/quickstart"
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) WORKDIR="$2"; shift 2 ;;
    --workdir=*) WORKDIR="${1#--workdir=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
# Inside a checkout that has the project's shared data beside it, use that copy.
if [ -z "${HT_DATA_DIR:-}" ] && [ -f "$ROOT/../shared/data/omniglot_background.npz" ]; then
  export HT_DATA_DIR="$ROOT/../shared/data"
fi
CONFIG="configs/quickstart.py"
"$PY" -m ht_jax.train --config="$CONFIG" --workdir="$WORKDIR" "${ARGS[@]}"
"$PY" -m ht_jax.evaluate --config="$CONFIG" --workdir="$WORKDIR" --once "${ARGS[@]}"
echo "Plot: $WORKDIR/eval/accuracy.png   Metrics: $WORKDIR/metrics.jsonl   TensorBoard: $WORKDIR/tensorboard"
