"""Readers of the original's NumPy cache layouts (`data_numpy_dir`, HT_REFERENCE 4.2).

1. `<dir>/<name>.npy`: one array [class, sample, H, W, C]. A 4-D array [class, sample, H, W] gets
   a trailing channel axis (the original skipped this for 4-D arrays, which made rot90 turn the
   wrong axes; see HT_REFERENCE 4.2). bool arrays become uint8 0/255.
2. `<dir>/<name>/`: every non-hidden file, in sorted name order, holds a list (object array) of
   per-class arrays [n_i, H, W, C] with variable n_i (e.g. tieredImageNet `chunk_NNN.npy`).
   Classes get consecutive ids in that order.
"""

from __future__ import annotations

import pathlib
import zipfile

import numpy as np

from ht_data.dataset import ClassDataset
from ht_data.errors import DataError


def _as_images(block: np.ndarray, source: pathlib.Path, sample_rank: int) -> np.ndarray:
  """Adds the channel axis to [.., H, W] blocks and maps bool to 0/255, as the original intended."""
  block = np.asarray(block)
  if block.ndim == sample_rank:          # no channel axis
    block = block[..., np.newaxis]
  if block.ndim != sample_rank + 1:
    raise DataError(f"{source} holds an array of shape {block.shape}; expected "
                    f"{'[class, sample, H, W(, C)]' if sample_rank == 4 else '[sample, H, W(, C)] per class'}")
  if block.dtype == np.bool_:
    block = block.astype(np.uint8) * np.uint8(255)
  elif not (np.issubdtype(block.dtype, np.integer) or np.issubdtype(block.dtype, np.floating)):
    raise DataError(f"{source} holds images of dtype {block.dtype}; expected uint8, bool or float "
                    "pixels 0..255")
  return block


def _load(path: pathlib.Path, **kwargs):
  try:
    return np.load(path, **kwargs)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"NumPy cache file {path} cannot be read ({e}); rebuild or delete it") from e


def read_array_cache(path: pathlib.Path, name: str) -> ClassDataset:
  """Layout 1: a single .npy array indexed [class, sample, ...]."""
  # Memory-mapped: episodes gather a few rows, so a 1+ GB miniImageNet array need not be read.
  array = _load(path, mmap_mode="r", allow_pickle=False)
  if not isinstance(array, np.ndarray):
    raise DataError(f"NumPy cache file {path} is not a single .npy array; rebuild it")
  return ClassDataset(name, _as_images(array, path, sample_rank=4))


def read_folder_cache(folder: pathlib.Path, name: str) -> ClassDataset:
  """Layout 2: files of per-class array lists, concatenated in sorted file-name order."""
  files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
  if not files:
    raise DataError(f"NumPy cache folder {folder} holds no files; rebuild the {name} cache there")
  classes: list[np.ndarray] = []
  for path in files:
    # allow_pickle is required: the original's chunk files are object arrays of per-class arrays
    # (np.save of a ragged list). Only load cache files you built yourself.
    records = _load(path, allow_pickle=True)
    if isinstance(records, np.lib.npyio.NpzFile):
      records.close()
      raise DataError(f"NumPy cache file {path} is an .npz archive; each file must hold one list of "
                      "per-class arrays (np.save)")
    for record in records:
      classes.append(_as_images(record, path, sample_rank=3))
  return ClassDataset(name, classes)


def load_numpy_cache(data_dir: str | pathlib.Path, name: str) -> ClassDataset:
  """`<data_dir>/<name>.npy` if it exists, else the folder `<data_dir>/<name>/`."""
  data_dir = pathlib.Path(data_dir)
  path, folder = data_dir / f"{name}.npy", data_dir / name
  if path.is_file():
    return read_array_cache(path, name)
  if folder.is_dir():
    return read_folder_cache(folder, name)
  raise DataError(f"No NumPy cache for dataset {name!r} in {data_dir}: expected {path.name} or the folder "
                  f"{name}/; build it (HT_REFERENCE 4.2) or set --config.data.dir or HT_DATA_DIR")
