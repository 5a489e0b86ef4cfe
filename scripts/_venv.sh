# Sourced by the entry scripts: create (or reuse) .venv and install the project into it.
# The install is skipped when pyproject.toml has not changed since the last one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HT_VENV:-$ROOT/.venv}"
EXTRAS="${HT_EXTRAS:-test}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
STAMP="$VENV/.ht-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "Installing hypertransformer[$EXTRAS] into $VENV (first run only) ..." >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]" >&2
  touch "$STAMP"
fi
PY="$VENV/bin/python"
cd "$ROOT"
# mimalloc as malloc for everything started from here (ht_jax/allocator.py: 1.3x faster steps on
# the CPU); HT_ALLOCATOR=system keeps glibc's.
eval "$("$PY" -m ht_jax.allocator)"
