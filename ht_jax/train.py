"""Training: `python -m ht_jax.train --config=configs/X.py --workdir=DIR [--config.a.b=v ...]`.

One jitted step over `nnx.split` parameters, vmapped over `train.episodes_per_step` episodes,
with donated buffers; the episodes are sharded over every device of every host
(ht_jax/parallel.py). The workdir is the run's identity: a run started in a workdir that has
checkpoints resumes from the latest one and continues exactly as if it had never stopped.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import json
import pathlib
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import ht_data
from ht_jax import augment, parallel
from ht_jax.checkpoint import Checkpointer
from ht_jax.input_pipeline import Prefetcher, episode_arrays
from ht_jax.metrics import MetricWriter
from ht_jax.model.hypertransformer import HyperTransformer
from ht_jax.model.layers import forward_only_trace
from ht_jax.model.loss import episode_loss
from ht_jax.model.plan import ConfigError
from ht_jax.optimizer import learning_rate_schedule, make_optimizer


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite."""


def uses_randomness(model_cfg) -> bool:
  return any(float(model_cfg[k]) > 0 for k in (
      "dropout_rate", "fe_dropout", "shared_fe_dropout", "max_prob_remove_labeled", "max_prob_remove_unlabeled"))


def create_model(config, seed: int | None = None) -> tuple[nnx.GraphDef, nnx.State]:
  model = HyperTransformer(config, rngs=nnx.Rngs(config.train.seed if seed is None else seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  assert not jax.tree_util.tree_leaves(rest), "the model must hold parameters only"
  return graphdef, params


def initial_state(config) -> tuple[nnx.GraphDef, dict]:
  """The model's graph and a fresh checkpointable state {params, opt_state, step}; restoring a
  checkpoint into this state checks every parameter's shape."""
  graphdef, params = create_model(config)
  return graphdef, {"params": params, "opt_state": make_optimizer(config.train).init(params), "step": 0}


def make_loss_fn(graphdef, config, episode_groups: int = 1):
  """(params, batch, key) -> (mean loss over the batch's episodes, mean metrics); the episodes
  are vmapped in `episode_groups` independent slices (parallel.vmap_in_groups)."""
  model_cfg = config.model
  random = uses_randomness(model_cfg)

  def loss_fn(params, batch, key):
    model = nnx.merge(graphdef, params)
    def one(sx, sy, qx, qy, k):
      return episode_loss(model, model_cfg, sx, sy, qx, qy, key=k if random else None)
    keys = jax.random.split(key, batch["support_images"].shape[0])
    losses, metrics = parallel.vmap_in_groups(one, episode_groups)(
        batch["support_images"], batch["support_labels"], batch["query_images"], batch["query_labels"], keys)
    return losses.mean(), jax.tree_util.tree_map(jnp.mean, metrics)

  return loss_fn


def episode_groups(config, mesh=None) -> int:
  """train.episode_groups, or for 0 the automatic count (parallel.auto_groups, which also looks
  at data.image_size)."""
  train_cfg = config.train
  groups = int(train_cfg.episode_groups)
  if groups < 0:
    raise ConfigError(f"train.episode_groups={groups} is negative; set it to 0 (automatic) or to "
                      f"the number of independent slices to vmap a step's episodes in.")
  return groups or parallel.auto_groups(int(train_cfg.episodes_per_step), mesh, int(config.data.image_size))


def make_train_step(graphdef, config, tx, mesh=None):
  """(params, opt_state, batch, key) -> (params, opt_state, metrics); batch arrays are [B, ...],
  with uint8 images and the augmentation's inputs when the sampler leaves it to the step.
  With a mesh, B is split over its devices and everything else is replicated."""
  loss_fn = make_loss_fn(graphdef, config, episode_groups(config, mesh))

  def train_step(params, opt_state, batch, key):
    batch = augment.augment_batch(batch)   # when the sampler left the ImageNet-style augmentation here
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics["update_norm"] = optax.tree.norm(updates)   # the host stops before saving a NaN
    return params, opt_state, metrics

  return parallel.jit(train_step, mesh, batch_argnums=(2,), donate_argnums=(0, 1))


def make_accuracy_fn(graphdef, mesh=None):
  """Mean query accuracy of a batch of episodes, no training-time randomness."""
  def accuracy(params, batch):
    model = nnx.merge(graphdef, params)
    def one(sx, sy, qx, qy):
      return jnp.mean(jnp.argmax(model(sx, sy, qx), -1) == qy)
    images = batch["support_images"]                  # [B, S, H, W, C]
    groups = parallel.auto_groups(images.shape[0], mesh, images.shape[2])
    with forward_only_trace():
      return parallel.vmap_in_groups(one, groups)(batch["support_images"], batch["support_labels"],
                                                  batch["query_images"], batch["query_labels"]).mean()
  return parallel.jit(accuracy, mesh, batch_argnums=(1,))


class _StopRequest:
  """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits at the next step."""

  def __init__(self):
    self.signal = None

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    return self

  def _handle(self, signum, frame):
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def train_and_evaluate(config, workdir: str | pathlib.Path) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the last metrics."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  t = config.train

  # --- Processes and devices: one `data` axis over all of them ---------------------------------
  parallel.initialize(config.parallel)   # before anything else touches JAX
  process = jax.process_index()
  mesh = parallel.data_mesh()
  batch_size = int(t.episodes_per_step)   # global: every process samples only its own rows
  parallel.check_divisible(batch_size, mesh, "train.episodes_per_step")
  episode_groups(config, mesh)            # a bad value fails here, before any data is read
  rows = parallel.local_rows(mesh, batch_size)

  # --- Data ------------------------------------------------------------------------------------
  dataset = ht_data.load_dataset(config.data)
  train_sampler = ht_data.EpisodeSampler(
      dataset, ht_data.train_class_ids(config.data), ht_data.EpisodeSpec.from_config(config.data, training=True))
  monitor_sampler = ht_data.EpisodeSampler(
      dataset, ht_data.monitor_class_ids(config.data), ht_data.EpisodeSpec.from_config(config.data, training=False))

  # --- Model, optimiser, checkpoint --------------------------------------------------------------
  graphdef, params = create_model(config)
  tx = make_optimizer(t)
  opt_state = tx.init(params)
  params, opt_state = parallel.replicate((params, opt_state), mesh)   # restore keeps this sharding
  checkpointer = Checkpointer(workdir, keep=int(t.keep_checkpoints))
  start = 0
  latest = checkpointer.latest_step()
  if latest is not None:
    restored = checkpointer.restore(latest, {"params": params, "opt_state": opt_state, "step": 0})
    params, opt_state, start = restored["params"], restored["opt_state"], int(restored["step"])
  writer = MetricWriter(workdir, enabled=process == 0)   # metrics and progress: process 0 only
  if process == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    _drop_rows_after(writer.path, start)
  train_step = make_train_step(graphdef, config, tx, mesh)
  accuracy_fn = make_accuracy_fn(graphdef, mesh)
  schedule = learning_rate_schedule(t)
  base_key = jax.random.key(int(t.seed))
  steps = int(t.steps)
  agree = parallel.StopAgreement(mesh)

  last, window, unchecked = {}, [], []

  def check_finite():
    """Raises on the first step whose loss or update was not finite (before anything is saved)."""
    for step_done, m in unchecked:
      if not (np.isfinite(float(m["loss"])) and np.isfinite(float(m["update_norm"]))):
        raise TrainingDivergedError(
            f"training diverged at step {step_done} (loss {float(m['loss'])}, update norm "
            f"{float(m['update_norm'])}); the last good checkpoint (step {checkpointer.latest_step()}) "
            f"is kept in {checkpointer.directory}; lower train.learning_rate and run again.")
    unchecked.clear()

  def save(step):
    check_finite()
    checkpointer.save(step, {"params": params, "opt_state": opt_state, "step": step})

  started = time.perf_counter()
  prefetcher = Prefetcher(train_sampler, int(t.seed), start, steps, rows,
                          put=lambda local: parallel.global_batch(mesh, local, batch_size))
  bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True, disable=process != 0,
             file=sys.stdout, mininterval=1.0)
  try:
    with _StopRequest() as stop:
      if start == 0 and latest is None:
        save(0)   # the original saves step 0 too
      done = start
      for step, batch in prefetcher:
        params, opt_state, metrics = train_step(params, opt_state, batch, jax.random.fold_in(base_key, step))
        done = step + 1
        window.append(metrics)
        unchecked.append((done, metrics))
        bar.update(1)
        if done % t.log_every == 0 or done == steps:
          check_finite()
          host = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
          window = []
          monitor = parallel.global_batch(
              mesh, episode_arrays(monitor_sampler.batch(int(t.seed) + 1, done, rows)), batch_size)
          host["test_accuracy"] = float(accuracy_fn(params, monitor))
          host["learning_rate"] = float(schedule(step))
          rate = bar.format_dict["rate"]
          host["episodes_per_second"] = rate * batch_size if rate else 0.0
          writer.write(done, host)
          last = {"step": done, **host}
          bar.set_postfix(loss=f"{host['loss']:.3f}", acc=f"{host['accuracy']:.3f}",
                          test_acc=f"{host['test_accuracy']:.3f}", refresh=False)
        out_of_time = bool(t.max_train_minutes) and time.perf_counter() - started > 60 * t.max_train_minutes
        stopping = agree(bool(stop.signal) or out_of_time)   # every process stops after the same step
        if done % t.checkpoint_every == 0 or done == steps or stopping:
          save(done)
        if stopping:
          reason = stop.signal or (f"train.max_train_minutes={t.max_train_minutes}" if out_of_time
                                   else "another process was stopped")
          if process == 0:
            print(f"\nStopped at step {done} ({reason}); checkpoint saved in {checkpointer.directory}.")
          break
  finally:
    bar.close()
    prefetcher.close()
    checkpointer.close()
    writer.close()
  final_step = checkpointer.latest_step() or 0
  if process == 0:
    (workdir / "train_done.json").write_text(json.dumps(
        {"final_step": final_step, "train_seconds": time.perf_counter() - started, **last}))
  return last


def _drop_rows_after(path: pathlib.Path, step: int) -> None:
  """A resumed run rewrites the metrics logged after its checkpoint, so keep one copy of each."""
  if path.exists():
    rows = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
    path.write_text("".join(r + "\n" for r in rows))


def main(argv) -> None:
  from ht_jax import cli
  cli.run(lambda: train_and_evaluate(cli.CONFIG.value, cli.WORKDIR.value))


if __name__ == "__main__":
  from absl import app
  from ht_jax import cli  # noqa: F401  (defines the flags)
  app.run(main)
