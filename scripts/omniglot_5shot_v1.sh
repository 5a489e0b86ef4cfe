#!/usr/bin/env bash
# The original's tf/scripts/omniglot_5shot_v1.sh: trains configs/omniglot_5shot_v1.py (the script's flag values).
# Extra flags pass through, as in the original, e.g.
#   scripts/omniglot_5shot_v1.sh --workdir=runs/omniglot_5shot_v1 --config.data.dir=/data
# Evaluate alongside with: python -m ht_jax.evaluate --config=configs/omniglot_5shot_v1.py --workdir=... --watch
source "$(dirname "$0")/_venv.sh"
case " $* " in *" --workdir"*) ;; *) set -- --workdir="runs/omniglot_5shot_v1" "$@" ;; esac
exec "$PY" -m ht_jax.train --config=configs/omniglot_5shot_v1.py "$@"
