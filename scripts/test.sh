#!/usr/bin/env bash
# The test command: sets up .venv on first use, then runs the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k sampler
source "$(dirname "$0")/_venv.sh"
exec "$PY" -m pytest "$@"
