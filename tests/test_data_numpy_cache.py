"""Readers of the original's NumPy cache layouts, on tiny synthetic files."""

import random

import numpy as np
import pytest

from configs.common import base_config
from ht_data.dataset import load_dataset
from ht_data.errors import DataError
from ht_data.numpy_cache import load_numpy_cache


def test_five_dim_array_is_used_as_is(tmp_path):
  data = np.arange(3 * 4 * 5 * 5 * 3, dtype=np.uint8).reshape(3, 4, 5, 5, 3)
  np.save(tmp_path / "toy.npy", data)
  dataset = load_numpy_cache(tmp_path, "toy")
  assert dataset.num_classes == 3 and dataset.image_shape == (5, 5, 3)
  np.testing.assert_array_equal(dataset.images[2], data[2])


def test_four_dim_bool_array_gets_channel_and_0_255(tmp_path):
  data = np.zeros((2, 3, 4, 4), bool)
  data[1, 2, 0, 0] = True
  np.save(tmp_path / "toy.npy", data)
  dataset = load_numpy_cache(tmp_path, "toy")
  assert dataset.images.shape == (2, 3, 4, 4, 1) and dataset.images.dtype == np.uint8
  assert dataset.images[1, 2, 0, 0, 0] == 255 and dataset.images.sum() == 255


def test_folder_of_chunks_with_variable_class_sizes(tmp_path):
  folder = tmp_path / "tiered"
  folder.mkdir()
  rng = np.random.default_rng(0)
  classes = [rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8) for n in (3, 5, 2, 4)]
  # Ragged lists become object arrays, the original's chunk format; names sort as the class order.
  for name, chunk in (("chunk_001.npy", classes[2:]), ("chunk_000.npy", classes[:2])):
    records = np.empty(len(chunk), object)
    records[:] = chunk
    np.save(folder / name, records, allow_pickle=True)
  (folder / ".hidden").write_text("ignored")
  dataset = load_numpy_cache(tmp_path, "tiered")
  assert dataset.num_classes == 4
  np.testing.assert_array_equal(dataset.class_sizes, [3, 5, 2, 4])
  for got, want in zip(dataset.images, classes):
    np.testing.assert_array_equal(got, want)


def test_folder_records_without_channel(tmp_path):
  folder = tmp_path / "grey"
  folder.mkdir()
  np.save(folder / "a.npy", np.zeros((2, 3, 4, 4), np.uint8))   # equal sizes: a plain 4-D array
  dataset = load_numpy_cache(tmp_path, "grey")
  assert dataset.image_shape == (4, 4, 1) and dataset.num_classes == 2


def test_load_dataset_reads_cache_and_shuffles(tmp_path):
  data = np.arange(5, dtype=np.uint8)[:, None, None, None, None] * np.ones((5, 2, 3, 3, 1), np.uint8)
  np.save(tmp_path / "toy.npy", data)
  config = base_config().data
  config.dir, config.train_dataset, config.shuffle_labels_seed = str(tmp_path), "toy:0-2", 7
  dataset = load_dataset(config)
  keys = list(range(5))
  random.Random(7).shuffle(keys)
  assert [int(block[0, 0, 0, 0]) for block in dataset.images] == keys


def test_missing_cache(tmp_path):
  with pytest.raises(DataError, match="No NumPy cache for dataset 'mini'.*mini.npy or the folder mini/"):
    load_numpy_cache(tmp_path, "mini")


def test_bad_cache_files(tmp_path):
  (tmp_path / "broken.npy").write_bytes(b"garbage")
  with pytest.raises(DataError, match="broken.npy cannot be read"):
    load_numpy_cache(tmp_path, "broken")
  np.save(tmp_path / "flat.npy", np.zeros((2, 3, 4), np.uint8))
  with pytest.raises(DataError, match=r"shape \(2, 3, 4\)"):
    load_numpy_cache(tmp_path, "flat")
  folder = tmp_path / "mixed"
  folder.mkdir()
  np.save(folder / "a.npy", np.zeros((1, 2, 4, 4, 1), np.uint8))
  np.save(folder / "b.npy", np.zeros((1, 2, 5, 5, 1), np.uint8))
  with pytest.raises(DataError, match="one image shape"):
    load_numpy_cache(tmp_path, "mixed")
