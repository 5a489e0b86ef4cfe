"""benchmarks.original_tf: the original's cache from our data, and its rate from two run lengths,
checked against a stand-in for the original whose speed is known (TensorFlow is not installed here)."""

import os
import sys

import numpy as np
import pytest

from benchmarks import common, original_tf

# A stand-in for the original's train module: the flags the benchmark passes, a start-up, then a
# fixed time per step; it fails on request, as the real one would on bad flags.
FAKE_TRAIN = '''
import os, sys, time
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
assert flags["num_labels"] == "20", flags                       # the script's own flags come first
assert os.path.isfile(os.path.join(flags["data_numpy_dir"], "omniglot.npy"))
assert flags["steps_between_saves"] == "1000000000"
assert not os.path.exists(flags["train_log_dir"]), "a fresh log folder: else the original resumes"
if os.environ.get("FAKE_FAIL"):
  print("fake original: bad flag"); sys.exit(3)
ballast = bytearray(64 << 20)                                    # 64 MB resident
ballast[::4096] = b"x" * len(ballast[::4096])
time.sleep(STARTUP_S + STEP_S * int(flags["train_steps"]))
'''


def fake_original(root, step_s, startup_s=2.0):
  train = root / "hypertransformer" / "tf" / "train.py"
  train.parent.mkdir(parents=True)
  train.write_text(FAKE_TRAIN.replace("STEP_S", str(step_s)).replace("STARTUP_S", str(startup_s)))
  script = root / original_tf.SCRIPT
  script.parent.mkdir(parents=True)
  script.write_text('python -m hypertransformer.tf.train --num_labels=20 --train_steps=4000000 $@\n')
  return root


def test_the_cache_is_our_omniglot_in_the_originals_format(tmp_path, omniglot):
  path = original_tf.write_cache(os.environ["HT_DATA_DIR"], tmp_path / "cache")
  cache = np.load(path)
  assert path.name == "omniglot.npy"
  assert cache.shape == (1623, 20, 28, 28, 1) and cache.dtype == np.uint8
  np.testing.assert_array_equal(cache, 255 - omniglot.images)
  assert np.median(cache) == 255                                  # white background, dark ink


def test_the_rate_is_the_long_runs_extra_steps_over_its_extra_time(tmp_path):
  original = fake_original(tmp_path / "checkout", step_s=0.03)
  result = original_tf.measure(original, original_tf.pathlib.Path(sys.executable), os.environ["HT_DATA_DIR"],
                               rounds=2, steps=(20, 220), jax_episodes=0, seconds=1.0, work_dir=tmp_path / "work")
  # 200 extra steps in 6.0 s: 33.3 episodes/s. The start-up (2.0 s, plus the processes' own, which
  # varies by up to a second on a loaded CI machine) cancels out: the long run alone would read 25.
  assert result["original"]["median"] == pytest.approx(100 / 3, rel=0.2)
  assert [sorted(r["original_s"]) for r in result["rounds"]] == [["20", "220"]] * 2
  assert all(r["original_s"]["220"] > r["original_s"]["20"] + 4.5 for r in result["rounds"])
  assert 64 < result["original_peak_rss_mb"] < 1024                # the fake's ballast, seen through its shell
  assert "jax" not in result


def test_a_failed_original_stops_the_benchmark_and_keeps_its_output(tmp_path, monkeypatch):
  original = fake_original(tmp_path / "checkout", step_s=0.0)
  monkeypatch.setenv("FAKE_FAIL", "1")
  monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
  cache = original_tf.write_cache(os.environ["HT_DATA_DIR"], tmp_path / "cache").parent
  (tmp_path / "work").mkdir()
  with pytest.raises(SystemExit, match="status 3"):
    original_tf.run_original(original, original_tf.pathlib.Path(sys.executable), cache, 10, tmp_path / "work")
  assert "fake original: bad flag" in (tmp_path / "results" / "original_tf.log").read_text()


def test_a_missing_checkout_or_tensorflow_is_named_with_its_fix(tmp_path):
  with pytest.raises(SystemExit, match="git clone"):
    original_tf.check_original(tmp_path, original_tf.pathlib.Path(sys.executable))
  original = fake_original(tmp_path / "checkout", step_s=0.0)
  # This project's own environment has no TensorFlow.
  with pytest.raises(SystemExit, match="cannot import tensorflow"):
    original_tf.check_original(original, original_tf.pathlib.Path(sys.executable))


def test_run_lengths_must_be_two_increasing_counts():
  assert original_tf.step_pair("300,2300") == (300, 2300)
  for bad in ("2300,300", "300", "a,b", "0,10"):
    with pytest.raises(original_tf.argparse.ArgumentTypeError):
      original_tf.step_pair(bad)
  with pytest.raises(ValueError, match="further apart"):
    original_tf.rate_from_runs((300, 20.0), (2300, 19.0))


def test_each_round_times_a_warm_jax_block_after_the_originals_runs(tmp_path):
  # The long run's extra 3 s must stay clear of a loaded CI machine's start-up noise (0.4 s did not).
  original = fake_original(tmp_path / "checkout", step_s=0.015, startup_s=0.2)
  result = original_tf.measure(original, original_tf.pathlib.Path(sys.executable), os.environ["HT_DATA_DIR"],
                               rounds=2, steps=(20, 220), jax_episodes=1, seconds=0.5, work_dir=tmp_path / "work")
  for r in result["rounds"]:
    assert r["jax"] > 0 and r["jax_after_idle"] > 0
    assert r["jax_over_original"] == pytest.approx(r["jax"] / r["original"])
  assert result["jax_over_original"]["median"] == pytest.approx(
      np.median([r["jax"] / r["original"] for r in result["rounds"]]))
  assert "ht_jax (1 per step)" in original_tf.table(result)
