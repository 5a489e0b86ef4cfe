"""Where the data lives: config value, then environment, then the user cache."""

import os
import pathlib

DATA_DIR_ENV = "HT_DATA_DIR"


def resolve_data_dir(data_cfg) -> pathlib.Path:
  """Returns the data directory for `config.data`.

  Order: `data_cfg.dir` when non-empty, else `$HT_DATA_DIR` when non-empty, else
  `$XDG_CACHE_HOME/hypertransformer` (default `~/.cache/hypertransformer`).
  The directory is not created here; the downloader creates it when it writes.
  """
  configured = str(data_cfg.dir or "").strip()
  if configured:
    return pathlib.Path(configured).expanduser()
  from_env = os.environ.get(DATA_DIR_ENV, "").strip()
  if from_env:
    return pathlib.Path(from_env).expanduser()
  cache_root = os.environ.get("XDG_CACHE_HOME", "").strip()
  base = pathlib.Path(cache_root).expanduser() if cache_root else pathlib.Path.home() / ".cache"
  return base / "hypertransformer"
