"""Training loop: exact resume, the error paths, and a short run on real Omniglot."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import quickstart
from ht_jax.checkpoint import Checkpointer, CheckpointMismatchError, state_equal
from ht_jax.train import TrainingDivergedError, initial_state, train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]


def small_config(steps=6, **train):
  """quickstart's 5-way 1-shot model, shrunk so that a test compiles and runs in seconds."""
  c = quickstart.get_config("tiny")
  c.model.number_of_trained_cnn_layers = 0   # every layer generated, as the original scripts
  c.model.num_layers = 1
  c.model.shared_feature_extractor = "2-layer"
  c.data.samples_cnn = 10
  c.train.steps = steps
  c.train.episodes_per_step = 2
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  for k, v in train.items():
    c.train[k] = v
  return c


def restore_latest(workdir, config):
  ckpt = Checkpointer(workdir, async_save=False)
  return ckpt.restore(ckpt.latest_step(), initial_state(config)[1])


def test_resume_is_bit_identical(tmp_path):
  """k + m steps in one go == k steps, stop, resume to k + m (parameters and optimiser state)."""
  train_and_evaluate(small_config(steps=7), tmp_path / "straight")
  train_and_evaluate(small_config(steps=4), tmp_path / "resumed")
  train_and_evaluate(small_config(steps=7), tmp_path / "resumed")
  a, b = restore_latest(tmp_path / "straight", small_config()), restore_latest(tmp_path / "resumed", small_config())
  assert a["step"] == b["step"] == 7
  assert state_equal(a["params"], b["params"]) and state_equal(a["opt_state"], b["opt_state"])
  # The resumed run's metric log has each step once, as the uninterrupted one.
  steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 4, 6, 7]
  # Keep N: checkpoints 0, 3, 6, 7 were written, the last 3 remain.
  assert Checkpointer(tmp_path / "straight").all_steps() == [3, 6, 7]


def test_checkpoint_from_another_config_names_parameter_and_shapes(tmp_path):
  train_and_evaluate(small_config(steps=2), tmp_path)
  other = small_config(steps=4)
  other.model.default_num_channels = 4
  with pytest.raises(CheckpointMismatchError, match=r"cnn_layers/0/bn_bias has shape \(8,\) there but \(4,\)"):
    train_and_evaluate(other, tmp_path)
  assert Checkpointer(tmp_path).latest_step() == 2     # nothing saved was lost
  with pytest.raises(CheckpointMismatchError, match="another optimiser"):
    train_and_evaluate(small_config(steps=4, optimizer="sgd"), tmp_path)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  train_and_evaluate(small_config(steps=3), tmp_path)
  bad = small_config(steps=8, learning_rate=1e30, log_every=1, checkpoint_every=1)
  with pytest.raises(TrainingDivergedError, match=r"diverged at step \d+.*last good checkpoint \(step 3\)"):
    train_and_evaluate(bad, tmp_path)
  restored = restore_latest(tmp_path, small_config())
  assert restored["step"] == 3
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(restored["params"]))


def run_cli(*args, env=None, **kw):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, **kw)


def test_missing_data_is_one_sentence(tmp_path):
  r = run_cli("ht_jax.train", "--config=configs/quickstart.py:tiny", f"--workdir={tmp_path / 'w'}",
              f"--config.data.dir={tmp_path / 'nothing'}", "--config.data.download=False")
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert "error:" in r.stderr and str(tmp_path / "nothing") in r.stderr and "HT_DATA_DIR" in r.stderr


def test_impossible_episode_is_one_sentence(tmp_path):
  r = run_cli("ht_jax.train", "--config=configs/quickstart.py:tiny", f"--workdir={tmp_path}",
              "--config.data.samples_transformer=3")
  assert r.returncode != 0 and "Traceback" not in r.stderr and "error:" in r.stderr


def test_sigterm_saves_a_checkpoint(tmp_path):
  proc = subprocess.Popen(
      [sys.executable, "-m", "ht_jax.train", "--config=configs/quickstart.py:tiny", f"--workdir={tmp_path}",
       "--config.train.steps=100000", "--config.train.checkpoint_every=100000", "--config.model.num_layers=1",
       "--config.train.log_every=1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  assert "Stopped at step" in out
  step = Checkpointer(tmp_path).latest_step()
  assert step is not None and step >= 3


def test_short_training_on_real_omniglot_beats_chance(tmp_path):
  """5-way 1-shot on the real seed-2022 split: test accuracy far above the 20% of chance."""
  from ht_jax.evaluate import evaluate_once
  c = quickstart.get_config()
  c.model.num_layers = 1
  c.train.steps = 150
  c.train.log_every = 50
  c.train.checkpoint_every = 150
  c.eval.num_task_evals = 40
  c.eval.num_eval_batches = 2
  c.eval.splits = "test"
  train_and_evaluate(c, tmp_path)
  result = evaluate_once(c, tmp_path)
  test = result["splits"]["test"]
  assert test["tasks"] == 40
  assert test["accuracy"] - test["ci95"] > 0.35, test


def test_episode_groups_change_the_schedule_not_the_numbers():
  """5 episodes in 3 uneven slices (1, 2, 2; the single episode traced without vmap, its
  convolutions lax.conv) and in one vmap: the same loss, metrics and gradients, with dropout on
  so that every episode must also keep its own random key."""
  from ht_jax.train import create_model, make_loss_fn
  from benchmarks.common import training_batches
  config = small_config(episodes_per_step=5)
  config.model.dropout_rate = 0.2
  batch = training_batches(config, 5)[0]
  graphdef, params = create_model(config)
  key = jax.random.key(3)
  results = {}
  for groups in (1, 3):
    value_and_grad = jax.jit(jax.value_and_grad(make_loss_fn(graphdef, config, groups), has_aux=True))
    (loss, metrics), grads = value_and_grad(params, batch, key)
    results[groups] = {"loss": loss, "metrics": metrics, "grads": grads}
  assert float(results[1]["loss"]) > 0
  # Float sums in another order: within 2e-5 of the largest entry (some gradients are ~1e-9 noise).
  scale = max(float(np.max(np.abs(x))) for x in jax.tree_util.tree_leaves(results[1]))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale),
                         results[1], results[3])


def test_groups_of_one_size_are_traced_once():
  """Each slice is a nested jit: sixteen single-episode groups cost one trace, not sixteen (the
  program XLA compiles is the same; its compile is shorter)."""
  import jax.numpy as jnp
  from ht_jax import parallel
  traced = []
  def fn(x):
    traced.append(x.shape)
    return x * 2.0
  x = jnp.arange(8.0).reshape(4, 2)
  np.testing.assert_array_equal(jax.jit(parallel.vmap_in_groups(fn, 4))(x), 2.0 * x)
  assert traced == [(2,)]                       # four single episodes, one trace without vmap
  traced.clear()
  y = jnp.ones((5, 2))
  np.testing.assert_array_equal(jax.jit(parallel.vmap_in_groups(fn, 2))(y), 2.0 * y)
  assert sorted(traced) == [(2,), (2,)]         # slices of 2 and 3 episodes: one vmapped trace each


def test_automatic_episode_groups_only_split_one_cpu_device():
  from types import SimpleNamespace
  from ht_jax.model.plan import ConfigError
  from ht_jax.train import episode_groups
  config = small_config()
  train = config.train
  for batch, expected in ((1, 1), (3, 3), (16, 4)):
    train.episodes_per_step = batch
    assert episode_groups(config) == expected
  assert episode_groups(config, SimpleNamespace(size=8)) == 1   # each device has its own slice
  config.data.image_size = 84
  for batch, expected in ((4, 4), (16, 16), (64, 16)):          # 84x84: single episodes, lax.conv
    train.episodes_per_step = batch
    assert episode_groups(config) == expected
  train.episode_groups = 6
  assert episode_groups(config, SimpleNamespace(size=8)) == 6
  train.episode_groups = -1
  with pytest.raises(ConfigError, match="train.episode_groups=-1 is negative"):
    episode_groups(config)
