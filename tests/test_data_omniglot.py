"""The Omniglot .npz reader, its validation errors, and data-directory resolution."""

import os
import pathlib
import shutil

import numpy as np
import pytest

from configs.common import base_config
from ht_data.download import ensure_omniglot
from ht_data.errors import DataError
from ht_data.omniglot import BACKGROUND_FILE, EVALUATION_FILE, read_omniglot
from ht_data.paths import resolve_data_dir

SHARED = pathlib.Path(os.environ["HT_DATA_DIR"])   # set by conftest.py


def test_reader_returns_all_classes_by_global_id(omniglot):
  shared = np.load(SHARED / EVALUATION_FILE)
  labels, drawer = shared["labels"], shared["drawer"]
  assert omniglot.images.shape == (1623, 20, 28, 28, 1) and omniglot.images.dtype == np.uint8
  for row in (0, 777, 13179):
    np.testing.assert_array_equal(omniglot.images[labels[row], drawer[row], :, :, 0], shared["images"][row])
  assert omniglot.images.max() == 255 and omniglot.images.mean() < 40   # ink = 255 on a black background
  meta = omniglot.metadata
  assert meta.character_is_background.sum() == 964 and not meta.character_is_background[964:].any()
  assert meta.alphabet_names[meta.character_alphabet[0]] == "Arcadian"


def _write_tables(arrays):
  arrays.update(character_names=np.full(1623, "A/character01"), alphabet_names=np.full(50, "A"),
                character_alphabet=np.zeros(1623, np.int16),
                alphabet_is_background=np.arange(50) < 30)
  return arrays


def _copy_shared(tmp_path):
  for name in (BACKGROUND_FILE, EVALUATION_FILE):
    shutil.copy(SHARED / name, tmp_path / name)


def test_garbage_file_names_file_and_fix(tmp_path):
  _copy_shared(tmp_path)
  (tmp_path / BACKGROUND_FILE).write_bytes(b"this is not a zip archive" * 10)
  with pytest.raises(DataError, match=f"{BACKGROUND_FILE}.*not a readable .npz.*delete"):
    read_omniglot(tmp_path)


def test_truncated_file(tmp_path):
  _copy_shared(tmp_path)
  path = tmp_path / EVALUATION_FILE
  path.write_bytes(path.read_bytes()[:100_000])
  with pytest.raises(DataError, match=EVALUATION_FILE):
    read_omniglot(tmp_path)


def test_wrong_image_shape(tmp_path):
  n = 40
  arrays = _write_tables({"images": np.zeros((n, 27, 27), np.uint8), "labels": np.repeat([0, 1], 20),
                          "drawer": np.tile(np.arange(20), 2)})
  for name in (BACKGROUND_FILE, EVALUATION_FILE):
    np.savez(tmp_path / name, **arrays)
  with pytest.raises(DataError, match=r"images has shape \(40, 27, 27\).*expected \(N, 28, 28\) uint8"):
    read_omniglot(tmp_path)


def test_missing_key_and_wrong_drawing_count(tmp_path):
  arrays = _write_tables({"images": np.zeros((39, 28, 28), np.uint8), "labels": np.repeat([0, 1], 20)[:39],
                          "drawer": np.tile(np.arange(20), 2)[:39]})
  np.savez(tmp_path / BACKGROUND_FILE, **arrays)
  with pytest.raises(DataError, match="exactly 20 drawings"):
    read_omniglot(tmp_path)
  del arrays["drawer"]
  np.savez(tmp_path / BACKGROUND_FILE, **arrays)
  with pytest.raises(DataError, match=r"lacks the arrays \['drawer'\]"):
    read_omniglot(tmp_path)


def test_incomplete_character_set(tmp_path):
  arrays = _write_tables({"images": np.zeros((20, 28, 28), np.uint8), "labels": np.zeros(20, np.int32),
                          "drawer": np.arange(20)})
  arrays["character_alphabet"][1000] = 40   # an evaluation alphabet
  np.savez(tmp_path / BACKGROUND_FILE, **arrays)
  arrays.update(labels=np.full(20, 1000, np.int32))
  np.savez(tmp_path / EVALUATION_FILE, **arrays)
  with pytest.raises(DataError, match="cover only 2 of 1623"):
    read_omniglot(tmp_path)


def test_missing_data_dir_without_download(tmp_path):
  with pytest.raises(DataError, match=r"Omniglot not found in .*missing.*HT_DATA_DIR.*download=True"):
    ensure_omniglot(tmp_path / "missing", download=False)
  assert not (tmp_path / "missing").exists()


def test_existing_files_need_no_download(monkeypatch):
  # A closed port as download source: any network access would fail.
  monkeypatch.setenv("HT_OMNIGLOT_URL", "http://127.0.0.1:9/nothing")
  paths = ensure_omniglot(SHARED, download=True)
  assert [p.name for p in paths] == [BACKGROUND_FILE, EVALUATION_FILE]


def test_resolve_data_dir_order(monkeypatch, tmp_path):
  data = base_config().data
  data.dir = str(tmp_path / "explicit")
  monkeypatch.setenv("HT_DATA_DIR", str(tmp_path / "env"))
  assert resolve_data_dir(data) == tmp_path / "explicit"
  data.dir = ""
  assert resolve_data_dir(data) == tmp_path / "env"
  monkeypatch.delenv("HT_DATA_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert resolve_data_dir(data) == tmp_path / "xdg" / "hypertransformer"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert resolve_data_dir(data) == tmp_path / "home" / ".cache" / "hypertransformer"
