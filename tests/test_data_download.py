"""Downloader and zip converter against a local HTTP server serving small zips in the official layout.

The zips are built here from the shared .npz (`images_105` of 2 alphabets x 2 characters x 20
drawers per set), so a successful conversion must reproduce the shared rows bit for bit, which also
checks the exact area downsampling.
"""

import hashlib
import http.server
import io
import os
import pathlib
import socket
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from ht_data.download import ZIP_NAMES, area_downsample, download_omniglot, ensure_omniglot
from ht_data.errors import DataError
from ht_data.omniglot import BACKGROUND_FILE, EVALUATION_FILE

ROW_KEYS = ("images", "images_105", "labels", "alphabet", "drawer")
PICKED_ALPHABETS = {BACKGROUND_FILE: (3, 7), EVALUATION_FILE: (35, 49)}   # not the first ones on purpose


@pytest.fixture(scope="module")
def shared_subset():
  """Per shared file: the rows of the picked characters, plus 200 random (images_105, images) rows."""
  rng = np.random.default_rng(0)
  subset = {}
  for name, alphabets in PICKED_ALPHABETS.items():
    with np.load(pathlib.Path(os.environ["HT_DATA_DIR"]) / name) as archive:
      arrays = {key: archive[key] for key in archive.files}
    chars = []
    for alphabet in alphabets:
      members = np.flatnonzero(arrays["character_alphabet"] == alphabet)
      chars += [members[1], members[-1]]   # characters 02 and the last one of the alphabet
    rows = np.isin(arrays["labels"], chars)
    random_rows = rng.choice(arrays["labels"].size, 200, replace=False)
    subset[name] = {
        "chars": np.asarray(chars),
        "rows": {key: arrays[key][rows] for key in ROW_KEYS},
        "tables": {key: arrays[key] for key in arrays if key not in ROW_KEYS},
        "random_105": arrays["images_105"][random_rows],
        "random_28": arrays["images"][random_rows],
    }
  return subset


def _zip_bytes(rows, tables, folder, mode):
  """A zip in the official layout: <folder>/<Alphabet>/characterXX/NNNN_DD.png, white paper, black ink."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    for image, label, drawer in zip(rows["images_105"], rows["labels"], rows["drawer"]):
      paper = image == 0                               # PNG: True/255 = white background
      picture = Image.fromarray(paper) if mode == "1" else Image.fromarray(paper.astype(np.uint8) * 255)
      png = io.BytesIO()
      picture.save(png, format="PNG")
      member = f"{folder}/{tables['character_names'][label]}/{label + 1:04d}_{drawer + 1:02d}.png"
      archive.writestr(member, png.getvalue())
  return buffer.getvalue()


@pytest.fixture(scope="module")
def server(shared_subset):
  """Serves /ok/, /truncated/ (Content-Length larger than the body), /short/ (half a file) and
  /garbage/ (bytes that are no zip)."""
  background = shared_subset[BACKGROUND_FILE]
  evaluation = shared_subset[EVALUATION_FILE]
  zips = {
      ZIP_NAMES[0]: _zip_bytes(background["rows"], background["tables"], "images_background", "1"),
      ZIP_NAMES[1]: _zip_bytes(evaluation["rows"], evaluation["tables"], "images_evaluation", "L"),
  }
  garbage = b"not a zip archive " * 100

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      mode, _, name = self.path.strip("/").partition("/")
      if name not in zips or mode not in ("ok", "truncated", "short", "garbage"):
        self.send_error(404)
        return
      body = garbage if mode == "garbage" else zips[name]
      half = body[:len(body) // 2]
      self.send_response(200)
      self.send_header("Content-Length", str(len(half) if mode == "short" else len(body)))
      self.end_headers()
      self.wfile.write(half if mode in ("truncated", "short") else body)

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  checksums = {name: (len(body), hashlib.sha256(body).hexdigest()) for name, body in zips.items()}
  checksums["garbage"] = (len(garbage), hashlib.sha256(garbage).hexdigest())
  yield f"http://127.0.0.1:{httpd.server_address[1]}", checksums
  httpd.shutdown()
  httpd.server_close()


def test_area_downsample_matches_shared_images(shared_subset):
  for name in (BACKGROUND_FILE, EVALUATION_FILE):
    subset = shared_subset[name]
    np.testing.assert_array_equal(area_downsample(subset["random_105"]), subset["random_28"])


def test_download_and_convert_reproduces_shared_rows(server, shared_subset, tmp_path, monkeypatch):
  url, checksums = server
  monkeypatch.setenv("HT_OMNIGLOT_URL", f"{url}/ok")   # the environment override of the base URL
  paths = ensure_omniglot(tmp_path, download=True, checksums=checksums, progress=False)
  assert sorted(os.listdir(tmp_path)) == [BACKGROUND_FILE, EVALUATION_FILE]   # no temp files left
  for path, name in zip(paths, (BACKGROUND_FILE, EVALUATION_FILE)):
    expected = shared_subset[name]
    with np.load(path, allow_pickle=False) as converted:
      assert set(converted.files) == set(ROW_KEYS) | set(expected["tables"])
      for key in ROW_KEYS:
        assert converted[key].dtype == expected["rows"][key].dtype, key
        np.testing.assert_array_equal(converted[key], expected["rows"][key], err_msg=key)
      chars = expected["chars"]
      for key in ("character_names", "character_alphabet"):
        np.testing.assert_array_equal(converted[key][chars], expected["tables"][key][chars], err_msg=key)
      for key in ("alphabet_names", "alphabet_is_background"):
        np.testing.assert_array_equal(converted[key], expected["tables"][key], err_msg=key)
      np.testing.assert_array_equal(converted["character_vinyals_split"], np.full(1623, -1))


def _assert_fails_cleanly(tmp_path, match, **kwargs):
  target = tmp_path / "data"
  with pytest.raises(DataError, match=match):
    download_omniglot(target, progress=False, timeout=10, **kwargs)
  assert os.listdir(target) == []


def test_wrong_checksum_leaves_nothing(server, tmp_path):
  url, checksums = server
  wrong = {name: (size, "0" * 64) for name, (size, _) in checksums.items()}
  _assert_fails_cleanly(tmp_path, "sha256", base_url=f"{url}/ok", checksums=wrong)


def test_truncated_download_leaves_nothing(server, tmp_path):
  url, checksums = server
  _assert_fails_cleanly(tmp_path, "truncated/images_background.zip stopped after", base_url=f"{url}/truncated",
                        checksums=checksums)


def test_short_file_leaves_nothing(server, tmp_path):
  url, checksums = server
  _assert_fails_cleanly(tmp_path, "stopped after", base_url=f"{url}/short", checksums=checksums)


def test_http_error_leaves_nothing(server, tmp_path):
  url, checksums = server
  _assert_fails_cleanly(tmp_path, "HTTP 404", base_url=f"{url}/missing", checksums=checksums)


def test_corrupt_zip_with_matching_checksum_leaves_nothing(server, tmp_path):
  url, checksums = server
  _assert_fails_cleanly(tmp_path, "not a readable zip", base_url=f"{url}/garbage",
                        checksums={name: checksums["garbage"] for name in ZIP_NAMES})


def test_no_network_leaves_nothing(tmp_path):
  with socket.socket() as probe:   # a port that was just free: nothing listens there
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  _assert_fails_cleanly(tmp_path, "network connection", base_url=f"http://127.0.0.1:{port}")
