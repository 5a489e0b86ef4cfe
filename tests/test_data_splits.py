"""Dataset specs, evaluation presets, the seed-2022 class shuffle and the Omniglot alphabet split."""

import random

import numpy as np
import pytest

from configs.common import base_config
from ht_data.dataset import ClassDataset, load_dataset, permute_classes, shuffled_class_order
from ht_data.errors import DataError
from ht_data.splits import (alphabet_split, monitor_class_ids, parse_dataset_spec, split_class_ids,
                            train_class_ids)


def omniglot_config(**data):
  config = base_config()
  config.data.train_dataset = "omniglot:0-1149"
  config.data.test_dataset = "omniglot:1200-1622"
  config.data.shuffle_labels_seed = 2022
  config.data.download = False
  config.eval.datasets = "omniglot"
  for key, value in data.items():
    config.data[key] = value
  return config


def test_parse_dataset_spec_ranges_and_single_ids():
  name, ids = parse_dataset_spec("omniglot:0-3,7, 10-11")
  assert name == "omniglot"
  np.testing.assert_array_equal(ids, [0, 1, 2, 3, 7, 10, 11])
  assert parse_dataset_spec("miniimagenet") == ("miniimagenet", None)


@pytest.mark.parametrize("spec", ["", ":0-5", "omniglot:", "omniglot:5-2", "omniglot:a-b", "omniglot:-3",
                                  "omniglot:0-3,2", "omni glot:0-1"])
def test_parse_dataset_spec_rejects_bad_strings(spec):
  with pytest.raises(DataError, match="spec"):
    parse_dataset_spec(spec)


def test_seed2022_split_sizes_and_disjointness():
  config = omniglot_config()
  splits = split_class_ids(config.data, config.eval)
  assert {k: v.size for k, v in splits.items()} == {"train": 1150, "val": 50, "test": 423}
  everything = np.concatenate(list(splits.values()))
  np.testing.assert_array_equal(np.sort(everything), np.arange(1623))   # disjoint and complete
  np.testing.assert_array_equal(train_class_ids(config.data), splits["train"])
  np.testing.assert_array_equal(monitor_class_ids(config.data), splits["test"])


@pytest.mark.parametrize("preset, sizes", [("miniimagenet", (64, 16, 20)), ("tieredimagenet", (351, 97, 160))])
def test_other_presets(preset, sizes):
  config = omniglot_config()
  config.eval.datasets = preset
  splits = split_class_ids(config.data, config.eval)
  assert tuple(splits[k].size for k in ("train", "val", "test")) == sizes
  assert splits["train"][0] == 0 and splits["test"][-1] == sum(sizes) - 1


def test_unknown_preset_lists_valid_ones():
  config = omniglot_config()
  config.eval.datasets = "cifar"
  with pytest.raises(DataError, match="omniglot, miniimagenet, tieredimagenet"):
    split_class_ids(config.data, config.eval)


def test_empty_preset_falls_back_to_train_dataset_name():
  config = omniglot_config()
  config.eval.datasets = ""
  assert split_class_ids(config.data, config.eval)["val"][0] == 1150


def test_train_ids_without_range_use_use_labels():
  config = omniglot_config(train_dataset="omniglot", use_labels=5)
  np.testing.assert_array_equal(train_class_ids(config.data), np.arange(5))


def test_monitor_ids_need_range_and_same_dataset():
  with pytest.raises(DataError, match="class range"):
    monitor_class_ids(omniglot_config(test_dataset="omniglot").data)
  with pytest.raises(DataError, match="same dataset"):
    monitor_class_ids(omniglot_config(test_dataset="emnist:8-61").data)


def test_unknown_split_mode():
  with pytest.raises(DataError, match="seed2022, alphabet"):
    train_class_ids(omniglot_config(split="vinyals").data)
  with pytest.raises(DataError, match="omniglot"):
    train_class_ids(omniglot_config(split="alphabet", train_dataset="miniimagenet:0-63").data)


def test_shuffle_equals_python_random_global_state():
  state = random.getstate()
  try:
    keys = list(range(1623))
    random.seed(2022)
    random.shuffle(keys)
  finally:
    random.setstate(state)
  assert shuffled_class_order(1623, 2022) == keys
  assert keys[:5] == [265, 521, 1334, 1080, 857]   # pinned: the original's permutation
  # new class i = original class keys[i]
  dataset = ClassDataset("toy", np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1, 1))
  order = shuffled_class_order(10, 3)
  assert [int(block[0, 0, 0, 0]) for block in permute_classes(dataset, order).images] == order


def test_load_dataset_applies_the_seed_shuffle(omniglot):
  dataset = load_dataset(omniglot_config().data)
  keys = shuffled_class_order(1623, 2022)
  assert dataset.images.shape == (1623, 20, 28, 28, 1)
  np.testing.assert_array_equal(dataset.images[[0, 1, 1622]], omniglot.images[[keys[0], keys[1], keys[1622]]])
  unshuffled = load_dataset(omniglot_config(shuffle_labels_seed=0).data)
  np.testing.assert_array_equal(unshuffled.images, omniglot.images)
  alphabet_mode = load_dataset(omniglot_config(split="alphabet").data)   # the alphabet split never shuffles
  np.testing.assert_array_equal(alphabet_mode.images[:50], omniglot.images[:50])


def test_invert_images_flips_polarity(omniglot):
  inverted = load_dataset(omniglot_config(shuffle_labels_seed=0, invert_images=True).data)
  assert inverted.images.dtype == np.uint8
  np.testing.assert_array_equal(inverted.images[:3], 255 - omniglot.images[:3])


def test_alphabet_split(omniglot):
  meta = omniglot.metadata
  config = omniglot_config(split="alphabet")
  splits = split_class_ids(config.data, config.eval)   # reads the metadata from HT_DATA_DIR
  direct = alphabet_split(meta)
  for key in ("train", "val", "test"):
    np.testing.assert_array_equal(splits[key], direct[key])
  assert splits["test"].size == 659 and np.all(splits["test"] >= 964)
  assert set(meta.character_alphabet[splits["val"]]) == {25, 26, 27, 28, 29}
  assert set(meta.character_alphabet[splits["train"]]) == set(range(25))
  assert set(meta.character_alphabet[splits["test"]]) == set(range(30, 50))
  everything = np.concatenate(list(splits.values()))
  np.testing.assert_array_equal(np.sort(everything), np.arange(1623))
  assert splits["train"].size + splits["val"].size == 964
  # In this mode the numeric ranges are ignored everywhere.
  np.testing.assert_array_equal(train_class_ids(config.data), splits["train"])
  np.testing.assert_array_equal(monitor_class_ids(config.data), splits["test"])
