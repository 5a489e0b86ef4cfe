"""Shared command-line flags and the one-sentence error reporting of the entry points."""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/omniglot_1shot_v1.py.",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, evaluations.")


def user_errors() -> tuple[type[BaseException], ...]:
  from ht_data import DataError
  from ht_jax.checkpoint import CheckpointMismatchError
  from ht_jax.model.plan import ConfigError
  from ht_jax.train import TrainingDivergedError
  return (DataError, ConfigError, CheckpointMismatchError, TrainingDivergedError)


def run(fn) -> None:
  """Calls fn(); an error the user can fix ends the program with its one sentence, no traceback."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)   # Orbax logs every save at INFO
  if CONFIG.value is None or not WORKDIR.value:
    sys.exit("error: pass --config=configs/<name>.py and --workdir=DIR.")
  try:
    fn()
  except user_errors() as e:
    sys.exit(f"error: {e}")
