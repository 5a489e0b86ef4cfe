"""`ClassDataset` (images grouped by class) and `load_dataset(config.data)`."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from ht_data.download import ensure_omniglot
from ht_data.errors import DataError
from ht_data.omniglot import read_omniglot
from ht_data.paths import resolve_data_dir
from ht_data.splits import check_split_mode, parse_dataset_spec


@dataclasses.dataclass
class ClassDataset:
  """Images grouped by class: class k is `images[k]`, an array [n_k, H, W, C] of raw 0..255 values.

  `images` is either one array [classes, n, H, W, C] (equal class sizes: fastest to sample) or a
  list of per-class arrays with variable n_k (tieredImageNet). All classes share H, W, C.
  """
  name: str
  images: list[np.ndarray] | np.ndarray

  def __post_init__(self):
    if len(self.images) == 0:
      raise DataError(f"Dataset {self.name!r} has no classes; check its files in the data directory")
    shapes = {tuple(block.shape[1:]) for block in self.images}
    ranks = {block.ndim for block in self.images}
    if ranks != {4} or len(shapes) != 1:
      raise DataError(f"Dataset {self.name!r} must hold per-class arrays [n, H, W, C] of one image shape, "
                      f"found shapes {sorted(shapes)[:3]}; rebuild its NumPy cache")

  @property
  def num_classes(self) -> int:
    return len(self.images)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of every image."""
    return tuple(self.images[0].shape[1:])

  @property
  def class_sizes(self) -> np.ndarray:
    """int64 [num_classes]: number of images of each class."""
    if isinstance(self.images, np.ndarray):
      return np.full(self.images.shape[0], self.images.shape[1], np.int64)
    return np.asarray([block.shape[0] for block in self.images], np.int64)


def dataset_name(data_cfg) -> str:
  """The dataset named by `config.data.train_dataset` (the part before ':')."""
  return parse_dataset_spec(data_cfg.train_dataset)[0]


def shuffled_class_order(num_classes: int, seed: int) -> list[int]:
  """The original's permutation: `keys = list(range(n)); random.seed(seed); random.shuffle(keys)`.

  A local random.Random(seed) gives the identical sequence without touching the global state.
  New class i is original class keys[i].
  """
  keys = list(range(num_classes))
  random.Random(seed).shuffle(keys)
  return keys


def permute_classes(dataset: ClassDataset, keys: list[int]) -> ClassDataset:
  if isinstance(dataset.images, np.ndarray):
    return ClassDataset(dataset.name, dataset.images[np.asarray(keys)])
  return ClassDataset(dataset.name, [dataset.images[k] for k in keys])


def _invert(images):
  if isinstance(images, np.ndarray):
    return np.subtract(255, images, dtype=images.dtype) if images.dtype == np.uint8 else 255 - images
  return [_invert(block) for block in images]


def load_dataset(data_cfg) -> ClassDataset:
  """Loads the dataset of `config.data.train_dataset`, then applies the optional class shuffle.

  omniglot: the two .npz files (downloaded when missing and config.data.download is True).
  Others: the NumPy cache `<data_dir>/<name>.npy` or `<data_dir>/<name>/` (HT_REFERENCE 4.2).
  With split "seed2022" and shuffle_labels_seed > 0, class ids are permuted as in the original;
  the "alphabet" split (omniglot only) keeps Lake's global character ids.
  """
  from ht_data.numpy_cache import load_numpy_cache   # here: numpy_cache imports ClassDataset from us

  name = dataset_name(data_cfg)
  split = check_split_mode(data_cfg)
  data_dir = resolve_data_dir(data_cfg)
  if name == "omniglot":
    ensure_omniglot(data_dir, download=bool(data_cfg.download))
    dataset = ClassDataset(name, read_omniglot(data_dir).images)
  else:
    dataset = load_numpy_cache(data_dir, name)
  if data_cfg.get("invert_images", False):   # white background, dark ink (the PNGs' polarity)
    dataset = ClassDataset(dataset.name, _invert(dataset.images))
  seed = int(data_cfg.shuffle_labels_seed)
  if seed > 0 and split == "seed2022":
    dataset = permute_classes(dataset, shuffled_class_order(dataset.num_classes, seed))
  return dataset
