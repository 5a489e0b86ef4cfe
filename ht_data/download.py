"""Downloads Lake's two official Omniglot zips and converts them to the shared .npz format.

The conversion reproduces shared/data/README.md exactly: rows sorted by (character id, drawer),
ink = 255, and the 28x28 images made by exact area averaging of the 105x105 ink mask. One thing
the zips cannot give is the Vinyals et al. split, so `character_vinyals_split` is filled with -1.

Nothing partial is ever left behind: downloads stream into hidden temp files inside the target
directory, the .npz files are written to temp files too, and both final names appear (os.replace)
only after every step has succeeded. Every failure removes the temp files and raises DataError.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping

import numpy as np

from ht_data.errors import DataError
from ht_data.omniglot import (BACKGROUND_FILE, DRAWINGS_PER_CHARACTER, EVALUATION_FILE, NUM_ALPHABETS,
                              NUM_CHARACTERS, OMNIGLOT_FILES)

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
BASE_URL_ENV = "HT_OMNIGLOT_URL"
ZIP_NAMES = ("images_background.zip", "images_evaluation.zip")
# (size in bytes, sha256) of the official zips.
OFFICIAL_CHECKSUMS: dict[str, tuple[int, str]] = {
    "images_background.zip": (9_464_212, "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640"),
    "images_evaluation.zip": (6_462_886, "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee"),
}
# Alphabet ids in Lake's character-number order (background 0..29, evaluation 30..49); a table
# rather than a rank computed from the zip so that any subset of folders keeps its global ids.
ALPHABET_NAMES = (
    "Arcadian", "Armenian", "Asomtavruli_(Georgian)", "Balinese", "Bengali",
    "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Cyrillic", "Early_Aramaic",
    "Syriac_(Estrangelo)", "Anglo-Saxon_Futhorc", "Futurama", "Grantha", "Greek", "Gujarati", "Hebrew",
    "Japanese_(hiragana)", "Inuktitut_(Canadian_Aboriginal_Syllabics)", "Malay_(Jawi_-_Arabic)",
    "Japanese_(katakana)", "Korean", "Latin", "Alphabet_of_the_Magi", "Mkhedruli_(Georgian)",
    "Burmese_(Myanmar)", "N_Ko", "Ojibwe_(Canadian_Aboriginal_Syllabics)", "Sanskrit", "Tagalog", "Tifinagh",
    "Angelic", "Atemayar_Qelisayer", "Atlantean", "Aurek-Besh", "Avesta", "Ge_ez", "Glagolitic", "Gurmukhi",
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)", "Oriya",
    "Syriac_(Serto)", "Sylheti", "Tengwar", "Tibetan", "ULOG",
)
NUM_BACKGROUND_ALPHABETS = 30
SOURCE_SIDE = 105
TARGET_SIDE = 28
_CHUNK = 1 << 16
_MEMBER = re.compile(r"^images_(background|evaluation)/([^/]+)/(character\d+)/(\d{4})_(\d{2})\.png$")


# ------------------------------------------------------------------------------------------------
# 105 -> 28 exact area downsampling


def _area_weights(source: int = SOURCE_SIDE, target: int = TARGET_SIDE) -> np.ndarray:
  """[target, source] overlap lengths on the common refinement grid (lcm of the two sides).

  For 105 -> 28 the grid has 420 cells: a source pixel spans 4 cells, an output pixel 15, so
  an output pixel covers 15 x 15 = 225 cells and its inked fraction is k / 225 exactly.
  """
  fine = np.lcm(source, target)
  src_cell, dst_cell = fine // source, fine // target
  cells = np.arange(fine)
  weights = np.zeros((target, source), np.float32)
  np.add.at(weights, (cells // dst_cell, cells // src_cell), 1.0)
  return weights


def area_downsample(images_105: np.ndarray) -> np.ndarray:
  """Exact area averaging of binary ink masks [N, 105, 105] (nonzero = ink) to uint8 [N, 28, 28].

  Output = round_half_up(255 * k / 225) with k the inked refinement cells. The integer counts
  stay far below 2**24, so the float32 matrix products are exact.
  """
  weights = _area_weights()
  out = np.empty((images_105.shape[0], TARGET_SIDE, TARGET_SIDE), np.uint8)
  for start in range(0, images_105.shape[0], 2048):   # chunks bound the float32 temporaries
    ink = (images_105[start:start + 2048] != 0).astype(np.float32)
    k = np.rint(weights @ ink @ weights.T).astype(np.int64)
    out[start:start + 2048] = (510 * k + 225) // 450   # floor(255 k / 225 + 1/2) in integers
  return out


# ------------------------------------------------------------------------------------------------
# zip -> arrays


def _decode_png(data: bytes, member: str, zip_path: pathlib.Path) -> np.ndarray:
  """PNG bytes -> bool [105, 105] ink mask (the PNGs are white background, black ink)."""
  try:
    from PIL import Image
  except ImportError as e:
    raise DataError("Converting the Omniglot zips needs Pillow, which is missing; install it "
                    "(pip install pillow, it comes with matplotlib) or provide the .npz files") from e
  try:
    with Image.open(io.BytesIO(data)) as image:
      gray = np.asarray(image.convert("L"))
  except Exception as e:  # Pillow raises many types for broken images
    raise DataError(f"{member} in {zip_path} is not a readable PNG ({e}); delete the zip and retry") from e
  if gray.shape != (SOURCE_SIDE, SOURCE_SIDE):
    raise DataError(f"{member} in {zip_path} is {gray.shape[1]}x{gray.shape[0]} pixels, expected 105x105; "
                    "the zip is not the official Omniglot one")
  return gray < 128


def read_zip_rows(zip_path: pathlib.Path) -> dict[str, list]:
  """All drawings of one official zip as row lists: ink mask, character id, drawer, names."""
  rows = {"ink": [], "labels": [], "drawer": [], "alphabet": [], "character_names": []}
  try:
    with zipfile.ZipFile(zip_path) as archive:
      for member in sorted(archive.namelist()):
        match = _MEMBER.match(member)
        if match is None:
          continue   # folders and any stray files
        _, alphabet, character, number, drawer = match.groups()
        if alphabet not in ALPHABET_NAMES:
          raise DataError(f"{zip_path} holds the unknown alphabet folder {alphabet!r}; "
                          "it is not the official Omniglot zip, delete it and retry")
        rows["ink"].append(_decode_png(archive.read(member), member, zip_path))
        rows["labels"].append(int(number) - 1)
        rows["drawer"].append(int(drawer) - 1)
        rows["alphabet"].append(ALPHABET_NAMES.index(alphabet))
        rows["character_names"].append(f"{alphabet}/{character}")
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise DataError(f"{zip_path} is not a readable zip archive ({e}); delete it and retry") from e
  if not rows["labels"]:
    raise DataError(f"{zip_path} contains no Omniglot PNGs (images_*/<Alphabet>/characterXX/NNNN_DD.png); "
                    "it is not the official Omniglot zip")
  return rows


def rows_to_npz_arrays(split_rows: list[dict[str, list]]) -> list[dict[str, np.ndarray]]:
  """Builds the arrays of each output file; the name tables are global and shared by all files."""
  longest = max(len(name) for rows in split_rows for name in rows["character_names"])
  character_names = np.full(NUM_CHARACTERS, "", dtype=f"<U{max(53, longest)}")   # <U53 in the shared files
  character_alphabet = np.full(NUM_CHARACTERS, -1, np.int16)
  for rows in split_rows:
    labels = np.asarray(rows["labels"])
    if labels.min() < 0 or labels.max() >= NUM_CHARACTERS or min(rows["drawer"]) < 0 or \
        max(rows["drawer"]) >= DRAWINGS_PER_CHARACTER:
      raise DataError("The Omniglot zips hold file numbers outside 0001..1623 or drawers outside 01..20; "
                      "they are not the official zips, delete them and retry")
    character_names[labels] = rows["character_names"]
    character_alphabet[labels] = rows["alphabet"]
  tables = {
      "character_names": character_names,
      "alphabet_names": np.asarray(ALPHABET_NAMES, dtype="<U41"),
      "character_alphabet": character_alphabet,
      # The zips carry no Vinyals split; -1 marks "unknown" (the shared files hold 0/1/2).
      "character_vinyals_split": np.full(NUM_CHARACTERS, -1, np.int8),
      "alphabet_is_background": np.arange(NUM_ALPHABETS) < NUM_BACKGROUND_ALPHABETS,
  }
  outputs = []
  for rows in split_rows:
    labels, drawer = np.asarray(rows["labels"], np.int32), np.asarray(rows["drawer"], np.int8)
    order = np.lexsort((drawer, labels))   # sorted by character id, then drawer
    if np.any((np.diff(labels[order]) == 0) & (np.diff(drawer[order]) == 0)):
      raise DataError("The Omniglot zips list some drawing twice; they are not the official zips, "
                      "delete them and retry")
    images_105 = (np.stack(rows["ink"])[order].astype(np.uint8) * 255)   # ink = 255
    outputs.append({
        "images": area_downsample(images_105),
        "images_105": images_105,
        "labels": labels[order],
        "alphabet": np.asarray(rows["alphabet"], np.int16)[order],
        "drawer": drawer[order],
        **tables,
    })
  return outputs


# ------------------------------------------------------------------------------------------------
# download


def _progress_bar(total: int, name: str, enabled: bool):
  if enabled:
    try:
      from tqdm import tqdm
      return tqdm(total=total or None, unit="B", unit_scale=True, desc=name, leave=False)
    except ImportError:
      pass
  return contextlib.nullcontext()


def _fetch(url: str, target: pathlib.Path, expected: tuple[int, str], timeout: float, progress: bool) -> None:
  """Streams `url` into `target` and verifies byte count and sha256; raises DataError otherwise."""
  size, sha256 = expected
  digest, received = hashlib.sha256(), 0
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
      announced = int(response.headers.get("Content-Length") or 0)
      with _progress_bar(announced, target.name, progress) as bar:
        while chunk := response.read(_CHUNK):
          out.write(chunk)
          digest.update(chunk)
          received += len(chunk)
          if bar is not None:
            bar.update(len(chunk))
  except urllib.error.HTTPError as e:
    raise DataError(f"Downloading {url} failed with HTTP {e.code}; check the address "
                    f"(${BASE_URL_ENV}) or place the Omniglot .npz files in the data directory") from e
  except (OSError, ValueError) as e:   # URLError, timeouts, resets, IncompleteRead are OSError/ValueError
    raise DataError(f"Downloading {url} failed ({e}); check the network connection or place the "
                    "Omniglot .npz files in the data directory (HT_DATA_DIR)") from e
  except http.client.HTTPException as e:   # e.g. IncompleteRead, BadStatusLine
    raise DataError(f"Downloading {url} failed ({type(e).__name__}: {e}); retry, or place the Omniglot "
                    ".npz files in the data directory (HT_DATA_DIR)") from e
  if (announced and received != announced) or received != size:
    raise DataError(f"Downloading {url} stopped after {received} of {size} bytes; retry the download "
                    "(a partial file is never kept)")
  if digest.hexdigest() != sha256:
    raise DataError(f"The download of {url} has sha256 {digest.hexdigest()}, expected {sha256}; "
                    "retry, and if it persists the file on the server has changed")


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  with open(path, "wb") as f:
    np.savez_compressed(f, **arrays)


def download_omniglot(data_dir: str | pathlib.Path, base_url: str | None = None,
                      checksums: Mapping[str, tuple[int, str]] | None = None,
                      progress: bool = True, timeout: float = 60.0) -> tuple[pathlib.Path, pathlib.Path]:
  """Downloads the two official zips, converts them, and writes the two .npz files atomically.

  Args:
    data_dir: target directory (created if missing).
    base_url: folder URL holding the zips; default `$HT_OMNIGLOT_URL`, else Lake's GitHub.
    checksums: {zip name: (size, sha256)} overriding the official values (tests serve small zips).
    progress: show a tqdm progress bar per download.
    timeout: socket timeout in seconds.
  Returns the paths of omniglot_background.npz and omniglot_evaluation.npz.
  """
  data_dir = pathlib.Path(data_dir)
  base_url = (base_url or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL).rstrip("/")
  checksums = dict(OFFICIAL_CHECKSUMS, **(checksums or {}))
  try:
    data_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f"Cannot create the data directory {data_dir} ({e}); set --config.data.dir or "
                    "HT_DATA_DIR to a writable folder") from e
  temps: list[pathlib.Path] = []

  def temp_path(suffix: str) -> pathlib.Path:
    # Hidden temp files in the target dir, so os.replace is an atomic rename on one filesystem.
    handle, name = tempfile.mkstemp(dir=data_dir, prefix=".omniglot-", suffix=suffix)
    os.close(handle)
    temps.append(pathlib.Path(name))
    return temps[-1]

  try:
    zips = []
    for zip_name in ZIP_NAMES:
      zips.append(temp_path(".zip.part"))
      _fetch(f"{base_url}/{zip_name}", zips[-1], checksums[zip_name], timeout, progress)
    arrays = rows_to_npz_arrays([read_zip_rows(path) for path in zips])
    finals = [data_dir / name for name in OMNIGLOT_FILES]
    written = []
    for file_arrays in arrays:
      written.append(temp_path(".npz.part"))
      _write_npz(written[-1], file_arrays)
    for temp, final in zip(written, finals):
      os.replace(temp, final)
    return finals[0], finals[1]
  except OSError as e:
    raise DataError(f"Writing the Omniglot files to {data_dir} failed ({e}); free some space or set "
                    "--config.data.dir or HT_DATA_DIR to a writable folder") from e
  finally:
    for temp in temps:
      temp.unlink(missing_ok=True)


def ensure_omniglot(data_dir: str | pathlib.Path, download: bool, base_url: str | None = None,
                    checksums: Mapping[str, tuple[int, str]] | None = None,
                    progress: bool = True) -> tuple[pathlib.Path, pathlib.Path]:
  """Returns the paths of the two .npz files, downloading them first when missing and allowed."""
  data_dir = pathlib.Path(data_dir)
  paths = (data_dir / BACKGROUND_FILE, data_dir / EVALUATION_FILE)
  if all(p.is_file() for p in paths):
    return paths
  if not download:
    raise DataError(f"Omniglot not found in {data_dir}: expected {BACKGROUND_FILE} and {EVALUATION_FILE}; "
                    "set --config.data.dir or HT_DATA_DIR, or allow the download (config.data.download=True)")
  return download_omniglot(data_dir, base_url=base_url, checksums=checksums, progress=progress)
