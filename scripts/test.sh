#!/usr/bin/env bash
# The test command: sets up .venv on first use, then runs the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k sampler
source "$(dirname "$0")/_venv.sh"
# Two workers: most of the time is single-threaded XLA compilation, so 2 cores halve it.
exec "$PY" -m pytest -n 2 "$@"
