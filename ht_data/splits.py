"""Class-id selection: dataset specs, evaluation presets and the Omniglot alphabet split.

Ids are those after the optional seed shuffle (`load_dataset`). In the "alphabet" split (Omniglot
only, no shuffle) every id set comes from Lake's background/evaluation alphabets instead:
train = background characters except those of the last 5 background alphabets (by alphabet id),
val = the characters of those 5 alphabets, test = all 659 evaluation characters.
"""

from __future__ import annotations

import re

import numpy as np

from ht_data.download import ensure_omniglot
from ht_data.errors import DataError
from ht_data.omniglot import OmniglotMetadata, read_omniglot_metadata
from ht_data.paths import resolve_data_dir

SPLIT_MODES = ("seed2022", "alphabet")
VAL_ALPHABETS = 5   # background alphabets held out for validation in the alphabet split

# eval_datasets presets of the original evaluator (HT_REFERENCE 10): inclusive (first, last) ids.
EVAL_PRESETS: dict[str, dict[str, tuple[int, int]]] = {
    "omniglot": {"train": (0, 1149), "val": (1150, 1199), "test": (1200, 1622)},
    "miniimagenet": {"train": (0, 63), "val": (64, 79), "test": (80, 99)},
    "tieredimagenet": {"train": (0, 350), "val": (351, 447), "test": (448, 607)},
}

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_dataset_spec(spec: str) -> tuple[str, np.ndarray | None]:
  """"name" -> (name, None); "name:a-b,c" -> (name, int64 ids a..b and c, in the given order)."""
  text = str(spec).strip()
  name, sep, ranges = text.partition(":")
  name = name.strip()
  if not _NAME.match(name):
    raise DataError(f"Dataset spec {spec!r} has no valid dataset name; write it as 'name' or "
                    "'name:0-1149,1200'")
  if not sep:
    return name, None
  ids: list[int] = []
  for item in ranges.split(","):
    match = _ITEM.match(item.strip())
    if match is None:
      raise DataError(f"Dataset spec {spec!r} has the bad range {item.strip()!r}; use inclusive ranges "
                      "like 'name:0-1149,1200'")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if last < first:
      raise DataError(f"Dataset spec {spec!r} has the empty range {item.strip()!r}; write ranges as low-high")
    ids.extend(range(first, last + 1))
  if len(set(ids)) != len(ids):
    # A repeated class could fill two label slots of one episode.
    raise DataError(f"Dataset spec {spec!r} lists some class ids more than once; make its ranges disjoint")
  return name, np.asarray(ids, np.int64)


def check_split_mode(data_cfg) -> str:
  """Returns config.data.split after checking it is known and fits the dataset."""
  split = str(data_cfg.split)
  if split not in SPLIT_MODES:
    raise DataError(f"config.data.split is {split!r}; use one of {', '.join(SPLIT_MODES)}")
  if split == "alphabet" and parse_dataset_spec(data_cfg.train_dataset)[0] != "omniglot":
    raise DataError(f"config.data.split='alphabet' needs the omniglot dataset, not {data_cfg.train_dataset!r}; "
                    "use split='seed2022' for other datasets")
  return split


def _metadata(data_cfg, metadata: OmniglotMetadata | None) -> OmniglotMetadata:
  if metadata is not None:
    return metadata
  data_dir = resolve_data_dir(data_cfg)
  ensure_omniglot(data_dir, download=bool(data_cfg.download))
  return read_omniglot_metadata(data_dir)


def alphabet_split(metadata: OmniglotMetadata) -> dict[str, np.ndarray]:
  """train/val/test global character ids of the Omniglot alphabet split (sorted, int64)."""
  background = np.flatnonzero(metadata.alphabet_is_background)
  val_alphabets = np.sort(background)[-VAL_ALPHABETS:]
  is_val = np.isin(metadata.character_alphabet, val_alphabets)
  return {
      "train": np.flatnonzero(metadata.character_is_background & ~is_val),
      "val": np.flatnonzero(is_val),
      "test": np.flatnonzero(~metadata.character_is_background),
  }


def train_class_ids(data_cfg, metadata: OmniglotMetadata | None = None) -> np.ndarray:
  """Training classes: the train_dataset range, or 0..use_labels-1 when it has none."""
  if check_split_mode(data_cfg) == "alphabet":
    return alphabet_split(_metadata(data_cfg, metadata))["train"]
  _, ids = parse_dataset_spec(data_cfg.train_dataset)
  if ids is None:
    if int(data_cfg.use_labels) < 1:
      raise DataError(f"config.data.use_labels is {data_cfg.use_labels} and train_dataset has no class range; "
                      "set one of them")
    ids = np.arange(int(data_cfg.use_labels), dtype=np.int64)
  return ids


def monitor_class_ids(data_cfg, metadata: OmniglotMetadata | None = None) -> np.ndarray:
  """Classes of the training-time monitoring episode (test_dataset; test split in alphabet mode)."""
  if check_split_mode(data_cfg) == "alphabet":
    return alphabet_split(_metadata(data_cfg, metadata))["test"]
  train_name, _ = parse_dataset_spec(data_cfg.train_dataset)
  name, ids = parse_dataset_spec(data_cfg.test_dataset)
  if ids is None:
    raise DataError(f"config.data.test_dataset {data_cfg.test_dataset!r} needs a class range, "
                    "e.g. 'omniglot:1200-1622'")
  if name != train_name:
    # Only the train_dataset is loaded, so the monitor ids must index that same dataset.
    raise DataError(f"config.data.test_dataset names {name!r} but train_dataset names {train_name!r}; "
                    "use the same dataset in both")
  return ids


def split_class_ids(data_cfg, eval_cfg, metadata: OmniglotMetadata | None = None) -> dict[str, np.ndarray]:
  """{"train", "val", "test"} class ids of the evaluator.

  The preset comes from config.eval.datasets; when that is empty, from the train dataset's name.
  """
  if check_split_mode(data_cfg) == "alphabet":
    return alphabet_split(_metadata(data_cfg, metadata))
  preset = str(eval_cfg.datasets).strip() or parse_dataset_spec(data_cfg.train_dataset)[0]
  if preset not in EVAL_PRESETS:
    raise DataError(f"Unknown evaluation preset {preset!r} (config.eval.datasets); use one of "
                    f"{', '.join(EVAL_PRESETS)}")
  return {split: np.arange(first, last + 1, dtype=np.int64)
          for split, (first, last) in EVAL_PRESETS[preset].items()}
