"""Runs in a subprocess with 8 simulated CPU devices (tests/test_parallel.py sets XLA_FLAGS before
JAX starts): the same computations on one device and sharded over eight, printed as one JSON line
of relative differences for the test to judge.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.parallel_checks
"""

import json
import time

import jax
import numpy as np

import ht_data
from ht_jax import parallel
from ht_jax.augment import augment_batch
from ht_jax.evaluate import Evaluator, task_accuracies
from ht_jax.input_pipeline import episode_arrays
from ht_jax.optimizer import make_optimizer
from ht_jax.train import create_model, make_train_step
from tests.test_train import small_config

GLOBAL_BATCH, STEPS = 16, 20

# These tests compile each step twice (one device, many); a lean model (one generated conv layer
# and the logits layer, no shared feature extractor) compiles in a third of small_config's time.
LEAN = {"model.cnn_model_name": "3-layer", "model.number_of_trained_cnn_layers": 2,
        "model.shared_feature_extractor": "none"}


def apply(config, settings: dict):
  for key, value in settings.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def lean_config(**train):
  return apply(small_config(**train), LEAN)


def rel_diff(a, b) -> float:
  """||a - b|| / ||b|| over the whole tree (leaves whose true gradient is zero, such as attention
  key biases, hold only rounding noise: an element-wise ratio there means nothing)."""
  pairs = list(zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))
  diff = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)) for x, y in pairs)
  norm = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for _, y in pairs)
  return float(np.sqrt(diff / norm))


def worst_leaf(a, b) -> float:
  """max over leaves of max|a - b| / max|b|, over leaves with a real gradient (for the report)."""
  scale = max(float(np.max(np.abs(y))) for y in jax.tree_util.tree_leaves(b))
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - y)) / np.max(np.abs(y)))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
             if np.max(np.abs(y)) > 1e-4 * scale)


def float64(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64) if x.dtype == np.float32 else x, tree)


def main():
  assert jax.device_count() == 8, jax.devices()
  started = time.perf_counter()
  config = lean_config(steps=STEPS, episodes_per_step=GLOBAL_BATCH, optimizer="sgd", learning_rate=0.05)
  mesh = parallel.data_mesh()
  sampler = ht_data.EpisodeSampler(ht_data.load_dataset(config.data), ht_data.train_class_ids(config.data),
                                   ht_data.EpisodeSpec.from_config(config.data, training=True))
  batches = [episode_arrays(sampler.batch(0, s, range(GLOBAL_BATCH))) for s in range(STEPS)]
  keys = [jax.random.fold_in(jax.random.key(0), s) for s in range(STEPS)]
  graphdef, params = create_model(config)
  tx = make_optimizer(config.train)
  out = {"devices": jax.device_count()}

  # Training in float64. In float32, summing the 16 episodes in another order moves the gradients
  # by ~2e-6 even on one device, and 20 steps of this model amplify a 1e-7 perturbation of one
  # device's own run to 1e-4..1e-2; float64 shows that the sharded step computes the same
  # function, step after step. (Evaluation below stays float32.)
  jax.config.update("jax_enable_x64", True)
  lr = float(config.train.learning_rate)   # SGD, and the schedule is lr at step 0

  def run(m):
    """20 steps of the loop's own jitted step (donation included) on mesh m (None: one device)."""
    state = float64((params, tx.init(params)))
    if m is not None:
      state = parallel.replicate(state, m)
    step_fn = make_train_step(graphdef, config, tx, m)
    history = []
    for s in range(STEPS):
      batch = float64(batches[s])
      if m is not None:
        batch = parallel.global_batch(m, batch, GLOBAL_BATCH)
      p, o, metrics = step_fn(*state, batch, keys[s])
      state = (p, o)
      history.append((jax.tree_util.tree_map(np.asarray, state), float(metrics["loss"])))
    if m is not None:   # the batch really is split, the parameters come back replicated
      out["batch_spec"] = str(batch["query_images"].sharding.spec)
      out["batch_shard_shapes"] = sorted({tuple(x.data.shape) for x in batch["query_images"].addressable_shards})
      out["params_spec"] = str(jax.tree_util.tree_leaves(state[0])[0].sharding.spec)
    return history
  params64 = float64(params)
  one, eight = run(None), run(mesh)
  out["dtype"] = str(jax.tree_util.tree_leaves(one[-1][0][0])[0].dtype)
  # Step 1: the loss it measured, the gradient it applied ((p0 - p1) / lr, exact to ~1e-14 in
  # float64), and the parameters it produced.
  grads = [jax.tree_util.tree_map(lambda p0, p1: (p0 - p1) / lr, params64, run_[0][0][0]) for run_ in (one, eight)]
  out["loss"] = abs(eight[0][1] - one[0][1]) / abs(one[0][1])
  out["grads"] = rel_diff(grads[1], grads[0])
  out["grads_worst_leaf"] = worst_leaf(grads[1], grads[0])
  out["params_step1"] = rel_diff(eight[0][0][0], one[0][0][0])
  # All 20 steps.
  out["step_losses"] = max(abs(e[1] - o[1]) / abs(o[1]) for e, o in zip(eight, one))
  out["params_step20"] = rel_diff(eight[-1][0][0], one[-1][0][0])
  out["opt_state_step20"] = rel_diff(eight[-1][0][1], one[-1][0][1])
  out["params_moved"] = rel_diff(one[-1][0][0], params64)   # the 20 steps did train
  out["loss_first_last"] = [one[0][1], one[-1][1]]
  jax.config.update("jax_enable_x64", False)
  out["t_train"] = time.perf_counter() - started

  # Evaluation, float32: the same tasks on one device and on eight (tasks_per_call 3 -> 8 there).
  config.eval.num_task_evals, config.eval.tasks_per_call, config.eval.num_eval_batches = 11, 3, 2
  config.eval.batch_size, config.eval.splits = 10, "test"
  trained = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), one[-1][0][0])
  results, per_task = {}, {}
  for name, m in (("one", parallel.data_mesh(jax.devices()[:1])), ("eight", mesh)):
    evaluator = Evaluator(config, mesh=m)
    p = parallel.replicate(trained, m)
    results[name] = evaluator.evaluate(p, step=STEPS)
    per_task[name] = task_accuracies(evaluator.task_accuracy, p, evaluator.samplers["test"], config, m)[""]
  out["eval_one"], out["eval_eight"] = results["one"], results["eight"]
  out["eval_per_task_one"] = per_task["one"].tolist()
  out["eval_per_task_max_abs_diff"] = float(np.max(np.abs(per_task["one"] - per_task["eight"])))
  out["t_eval"] = time.perf_counter() - started

  # The ImageNet-style augmentation in the step, with the episodes split over the eight devices.
  rng = np.random.default_rng(0)
  rgb = ht_data.ClassDataset("rgb", rng.integers(0, 256, (6, 8, 12, 12, 3), dtype=np.uint8))
  spec = ht_data.EpisodeSpec(ways=3, support_size=3, query_size=6, image_size=12, image_augmentation=True,
                             image_augmentation_in_step=True)
  local = episode_arrays(ht_data.EpisodeSampler(rgb, np.arange(6), spec).batch(0, 0, range(GLOBAL_BATCH)))
  augment = lambda batch: augment_batch(batch)["query_images"]
  alone = np.asarray(jax.jit(augment)(local))
  sharding = parallel.batch_sharding(mesh)
  split = jax.jit(augment, in_shardings=(sharding,), out_shardings=sharding)(
      parallel.global_batch(mesh, local, GLOBAL_BATCH))
  out["augment_max_abs_diff"] = float(np.max(np.abs(np.asarray(split) - alone)))
  out["augment_spec"] = str(split.sharding.spec)

  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
