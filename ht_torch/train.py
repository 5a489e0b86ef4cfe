"""Training in torch: `python -m ht_torch.train --config=configs/X.py --workdir=DIR`.

The twin of ht_jax.train's step: the mean episode loss of a batch of episodes, one optimiser step,
on the same episodes (ht_data, same seeds). Writes DIR/metrics.jsonl and, at the end (or on
Ctrl-C), DIR/model.safetensors, which `ht_torch.evaluate` reads and `ht_torch.convert --from-torch`
turns into an Orbax checkpoint. It does not resume; train in JAX for long runs.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import json
import pathlib
import sys
import time

import numpy as np
import torch

import ht_data
from ht_torch import augment
from ht_torch.model.hypertransformer import HyperTransformer
from ht_torch.model.loss import episode_loss
from ht_torch.optimizer import make_optimizer


def train_step(model: HyperTransformer, optimizer, scheduler, model_cfg, batch: dict[str, np.ndarray],
               generator: torch.Generator | None = None) -> dict:
  """One step on a batch of episodes (arrays [B, ...], NHWC images); returns host metrics.
  `generator` enables the training-time randomness (dropout, token removal); an optional
  batch["sample_masks"] [B, S] fixes the removed tokens instead (1 = removed)."""
  model.train()
  optimizer.zero_grad(set_to_none=True)
  batch = augment.augment_batch(batch)   # when the sampler left the ImageNet-style augmentation here
  episodes = len(batch["support_images"])
  totals = {}
  masks = batch.get("sample_masks")
  for i in range(episodes):   # looping beats batching here: every episode has its own CNN weights
    loss, metrics = episode_loss(model, model_cfg, batch["support_images"][i], batch["support_labels"][i],
                                 batch["query_images"][i], batch["query_labels"][i], generator=generator,
                                 sample_mask=None if masks is None else masks[i])
    (loss / episodes).backward()
    for k, v in metrics.items():
      totals[k] = totals.get(k, 0.0) + float(v) / episodes
  optimizer.step()
  scheduler.step()
  return totals


class _EpisodeLoss(torch.nn.Module):
  """episode_loss as a module, so torch.func.functional_call can swap in the parameters."""

  def __init__(self, model: HyperTransformer, model_cfg):
    super().__init__()
    self.model, self.model_cfg = model, model_cfg

  def forward(self, support_images, support_labels, query_images, query_labels, sample_mask=None):
    return episode_loss(self.model, self.model_cfg, support_images, support_labels, query_images,
                        query_labels, sample_mask=sample_mask)


def batched_train_step(model: HyperTransformer, optimizer, scheduler, model_cfg, batch: dict[str, np.ndarray]) -> dict:
  """train_step with the episodes vmapped (torch.func) instead of looped: the same gradient, the
  mean of the episodes' gradients, in one call per operation for the whole batch. Each episode's
  generated kernels make the CNN's convolutions grouped ones, which torch runs well on a CPU;
  from 4 episodes per step this beats the loop (benchmarks/README.md). No training-time
  randomness (dropout, token removal) under vmap; a fixed batch["sample_masks"] is accepted."""
  from torch.func import functional_call, grad, vmap
  model.train()
  batch = augment.augment_batch(batch)
  module = _EpisodeLoss(model, model_cfg)
  params = {name: p.detach() for name, p in module.named_parameters()}
  arrays = [torch.as_tensor(batch[k]) for k in
            ("support_images", "support_labels", "query_images", "query_labels")]
  masks = batch.get("sample_masks")
  if masks is not None:
    arrays.append(torch.as_tensor(np.asarray(masks)))

  def loss_of(params, *episode):
    loss, metrics = functional_call(module, params, episode)
    return loss, metrics

  grads, metrics = vmap(grad(loss_of, has_aux=True), in_dims=(None,) + (0,) * len(arrays))(params, *arrays)
  optimizer.zero_grad(set_to_none=True)
  for name, p in module.named_parameters():
    p.grad = grads[name].mean(0)
  optimizer.step()
  scheduler.step()
  return {k: float(v.mean()) for k, v in metrics.items()}


def train(config, workdir: str | pathlib.Path) -> dict:
  from tqdm import tqdm
  from ht_jax.input_pipeline import episode_arrays   # NumPy only: the batch dict both frameworks train on
  from ht_jax.metrics import MetricWriter
  from ht_jax.train import uses_randomness
  from ht_torch.convert import save_safetensors
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  t = config.train
  torch.manual_seed(int(t.seed))
  dataset = ht_data.load_dataset(config.data)
  sampler = ht_data.EpisodeSampler(dataset, ht_data.train_class_ids(config.data),
                                   ht_data.EpisodeSpec.from_config(config.data, training=True))
  model = HyperTransformer(config)
  optimizer, scheduler = make_optimizer(model.parameters(), t)
  writer = MetricWriter(workdir)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  steps, batch_size, started = int(t.steps), int(t.episodes_per_step), time.perf_counter()
  random = uses_randomness(config.model)
  last, window, step = {}, [], 0
  try:
    for step in tqdm(range(steps), unit="step", file=sys.stdout, mininterval=1.0):
      batch = episode_arrays(sampler.batch(int(t.seed), step, range(batch_size)))
      generator = torch.Generator().manual_seed(int(t.seed) * 1_000_003 + step) if random else None
      window.append(train_step(model, optimizer, scheduler, config.model, batch, generator))
      if (step + 1) % t.log_every == 0 or step + 1 == steps:
        last = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
        window = []
        writer.write(step + 1, last)
        if not np.isfinite(last["loss"]):
          sys.exit(f"error: training diverged at step {step + 1}; lower train.learning_rate.")
      if t.max_train_minutes and time.perf_counter() - started > 60 * t.max_train_minutes:
        break
  except KeyboardInterrupt:
    print(f"\nStopped at step {step}; saving the weights.")
  finally:
    writer.close()
  path = save_safetensors(model.state_dict(), workdir / "model.safetensors", config, step=step + 1)
  print(f"wrote {path}")
  return last


if __name__ == "__main__":
  from absl import app
  from ht_jax import cli
  app.run(lambda argv: cli.run(lambda: train(cli.CONFIG.value, cli.WORKDIR.value)))
