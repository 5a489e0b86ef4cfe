"""ht_data is NumPy-only: importing it must not pull in any deep-learning framework."""

import pathlib
import subprocess
import sys

import ht_data


def test_imports_no_framework():
  code = ("import sys, ht_data; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'torch', 'tensorflow', 'flax'}))")
  repo = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
  assert result.stdout.strip() == "[]"


def test_public_names_exist():
  missing = [name for name in ht_data.__all__ if not hasattr(ht_data, name)]
  assert not missing
  assert issubclass(ht_data.DataError, ValueError)
