"""Reader of the two Omniglot .npz files (format: shared/data/README.md).

Returns every character as one uint8 array `[1623, 20, 28, 28, 1]` indexed by the global
character id (Lake's 4-digit file number - 1), ink = 255, plus the alphabet of each character.
Only the keys we need are decompressed, so the large `images_105` member is never read here.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zipfile

import numpy as np

from ht_data.errors import DataError

BACKGROUND_FILE = "omniglot_background.npz"
EVALUATION_FILE = "omniglot_evaluation.npz"
OMNIGLOT_FILES = (BACKGROUND_FILE, EVALUATION_FILE)
NUM_CHARACTERS = 1623
NUM_ALPHABETS = 50
DRAWINGS_PER_CHARACTER = 20
IMAGE_SIDE = 28

_ROW_KEYS = ("images", "labels", "drawer")
_TABLE_KEYS = ("character_names", "alphabet_names", "character_alphabet", "alphabet_is_background")


@dataclasses.dataclass(frozen=True)
class OmniglotMetadata:
  """Per-character and per-alphabet tables, indexed by global ids."""
  character_alphabet: np.ndarray       # int [1623]: alphabet id of each character
  character_is_background: np.ndarray  # bool [1623]: character belongs to images_background
  character_names: np.ndarray          # str [1623]: "Alphabet_folder/characterXX"
  alphabet_names: np.ndarray           # str [50]
  alphabet_is_background: np.ndarray   # bool [50]


@dataclasses.dataclass(frozen=True)
class OmniglotData:
  images: np.ndarray        # uint8 [1623, 20, 28, 28, 1], ink = 255; [character id, drawer]
  metadata: OmniglotMetadata


def _fix_hint(path: pathlib.Path) -> str:
  return f"delete {path} so that it is downloaded again (config.data.download=True) or restore a good copy"


def _open_npz(path: pathlib.Path):
  if not path.is_file():
    raise DataError(f"Omniglot file {path} is missing; set --config.data.dir or HT_DATA_DIR to the folder "
                    f"holding {BACKGROUND_FILE} and {EVALUATION_FILE}, or allow the download "
                    "(config.data.download=True)")
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"Omniglot file {path} is not a readable .npz archive ({e}); {_fix_hint(path)}") from e


def _read_keys(path: pathlib.Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Reads `keys` from one .npz, turning every failure into a DataError naming the file."""
  with _open_npz(path) as archive:
    missing = [k for k in keys if k not in archive.files]
    if missing:
      raise DataError(f"Omniglot file {path} lacks the arrays {missing}; {_fix_hint(path)}")
    try:
      return {k: archive[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise DataError(f"Omniglot file {path} is corrupt ({e}); {_fix_hint(path)}") from e


def _check(condition: bool, path: pathlib.Path, problem: str) -> None:
  if not condition:
    raise DataError(f"Omniglot file {path} is invalid: {problem}; {_fix_hint(path)}")


def _check_tables(tables: dict[str, np.ndarray], path: pathlib.Path) -> None:
  _check(tables["character_names"].shape == (NUM_CHARACTERS,), path, "character_names is not [1623]")
  _check(tables["alphabet_names"].shape == (NUM_ALPHABETS,), path, "alphabet_names is not [50]")
  alphabet = tables["character_alphabet"]
  _check(alphabet.shape == (NUM_CHARACTERS,) and np.issubdtype(alphabet.dtype, np.integer), path,
         "character_alphabet is not an integer [1623] array")
  _check(bool(np.all((alphabet >= 0) & (alphabet < NUM_ALPHABETS))), path,
         "character_alphabet has ids outside 0..49")
  is_background = tables["alphabet_is_background"]
  _check(is_background.shape == (NUM_ALPHABETS,) and is_background.dtype == np.bool_, path,
         "alphabet_is_background is not a bool [50] array")


def _metadata_from_tables(tables: dict[str, np.ndarray]) -> OmniglotMetadata:
  alphabet = tables["character_alphabet"].astype(np.int64)
  return OmniglotMetadata(
      character_alphabet=alphabet,
      character_is_background=tables["alphabet_is_background"][alphabet],
      character_names=tables["character_names"],
      alphabet_names=tables["alphabet_names"],
      alphabet_is_background=tables["alphabet_is_background"])


def read_omniglot_metadata(data_dir: str | pathlib.Path) -> OmniglotMetadata:
  """Reads only the name tables (fast); used by the alphabet split."""
  path = pathlib.Path(data_dir) / BACKGROUND_FILE
  tables = _read_keys(path, _TABLE_KEYS)
  _check_tables(tables, path)
  return _metadata_from_tables(tables)


def read_omniglot(data_dir: str | pathlib.Path) -> OmniglotData:
  """Reads and validates both files; returns all 1623 characters indexed by global id."""
  data_dir = pathlib.Path(data_dir)
  images = np.zeros((NUM_CHARACTERS, DRAWINGS_PER_CHARACTER, IMAGE_SIDE, IMAGE_SIDE, 1), np.uint8)
  seen = np.zeros((NUM_CHARACTERS, DRAWINGS_PER_CHARACTER), bool)
  tables = None
  for name in OMNIGLOT_FILES:
    path = data_dir / name
    arrays = _read_keys(path, _ROW_KEYS + _TABLE_KEYS)
    rows, labels, drawer = arrays["images"], arrays["labels"], arrays["drawer"]
    n = rows.shape[0] if rows.ndim else 0
    _check(rows.shape == (n, IMAGE_SIDE, IMAGE_SIDE) and rows.dtype == np.uint8, path,
           f"images has shape {rows.shape} and dtype {rows.dtype}, expected (N, 28, 28) uint8")
    _check(n > 0, path, "it holds no images")
    for key, values in (("labels", labels), ("drawer", drawer)):
      _check(values.shape == (n,) and np.issubdtype(values.dtype, np.integer), path,
             f"{key} has shape {values.shape} and dtype {values.dtype}, expected ({n},) integers")
    _check(bool(np.all((labels >= 0) & (labels < NUM_CHARACTERS))), path, "labels lie outside 0..1622")
    _check(bool(np.all((drawer >= 0) & (drawer < DRAWINGS_PER_CHARACTER))), path, "drawer lies outside 0..19")
    _check_tables(arrays, path)
    labels, drawer = labels.astype(np.int64), drawer.astype(np.int64)
    expect_background = name == BACKGROUND_FILE
    in_background = arrays["alphabet_is_background"][arrays["character_alphabet"][labels]]
    _check(bool(np.all(in_background == expect_background)), path,
           "its labels include characters of the other (background/evaluation) set")
    # Each (character, drawer) pair must appear exactly once across both files.
    _check(not np.any(seen[labels, drawer]), path, "some (character, drawer) rows are duplicated")
    counts = np.bincount(labels, minlength=NUM_CHARACTERS)
    present = counts > 0
    _check(bool(np.all(counts[present] == DRAWINGS_PER_CHARACTER)), path,
           "some characters do not have exactly 20 drawings")
    seen[labels, drawer] = True
    images[labels, drawer, :, :, 0] = rows
    if tables is None:
      tables = {k: arrays[k] for k in _TABLE_KEYS}
    else:
      _check(all(np.array_equal(tables[k], arrays[k]) for k in _TABLE_KEYS), path,
             f"its name tables differ from those of {BACKGROUND_FILE}")
  if not seen.all():
    raise DataError(f"Omniglot files in {data_dir} cover only {int(seen.all(1).sum())} of 1623 characters; "
                    f"delete {BACKGROUND_FILE} and {EVALUATION_FILE} there so that they are downloaded again")
  return OmniglotData(images=images, metadata=_metadata_from_tables(tables))
