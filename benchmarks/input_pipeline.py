"""Does the input pipeline keep up? The fraction of training time spent waiting for episodes.

  python -m benchmarks.input_pipeline [--config omniglot_1shot_v1] [--episodes 16] [--steps 60]
                                      [--augmentation step|host]

Runs ht_jax.train's loop (ht_jax.input_pipeline.Prefetcher sampling ahead in background threads and
putting each batch on the device, then the jitted step) and times how long the loop blocks on the
next batch. Also reports how fast the sampler alone produces episodes on one thread. Configs with
the ImageNet-style augmentation run it in the jitted step (ht_jax/augment.py, the default) or, with
--augmentation host, in the sampler's NumPy. Omniglot uses
the real data; 84x84 RGB configs a synthetic dataset of the same shape (64 classes x 50 random
images), with that config's augmentation, so that sampling costs what it would on miniImageNet.
Writes benchmarks/results/input_pipeline.json and prints a markdown table.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import argparse
import time

import numpy as np

from benchmarks import common
from ht_jax import allocator


def sampler_for(config):
  import ht_data
  d = config.data
  spec = ht_data.EpisodeSpec.from_config(d, training=True)
  if common.uses_omniglot(config):
    return ht_data.EpisodeSampler(ht_data.load_dataset(d), ht_data.train_class_ids(d), spec)
  images = np.random.default_rng(0).integers(0, 256, (64, 50, d.image_size, d.image_size, 3), dtype=np.uint8)
  return ht_data.EpisodeSampler(ht_data.ClassDataset("synthetic", images), np.arange(64), spec)


def measure(config_name: str, episodes_per_step: int, steps: int, augmentation: str = "step") -> dict:
  import jax
  from ht_jax.input_pipeline import Prefetcher, episode_arrays
  from ht_jax.optimizer import make_optimizer
  from ht_jax.train import create_model, make_train_step
  config = common.load_config(config_name)
  config.train.episodes_per_step = episodes_per_step
  if augmentation not in ("step", "host"):
    raise ValueError(f"augmentation={augmentation!r}; use 'step' or 'host'")
  config.data.image_augmentation_in_step = augmentation == "step"
  sampler = sampler_for(config)
  rows = range(episodes_per_step)

  compile_started = time.perf_counter()
  graphdef, params = create_model(config)
  tx = make_optimizer(config.train)
  opt_state = tx.init(params)
  key = jax.random.key(0)
  step_fn = make_train_step(graphdef, config, tx)
  warm = jax.device_put(episode_arrays(sampler.batch(0, 0, rows)))
  params, opt_state, metrics = step_fn(params, opt_state, warm, key)   # compile outside the timing
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - compile_started
  common.wait_for_turn()   # under benchmarks.run: compiled beside others, timed alone

  started = time.perf_counter()
  for step in range(3):
    episode_arrays(sampler.batch(0, step, rows))
  sample_s = (time.perf_counter() - started) / 3

  waited = 0.0
  prefetcher = Prefetcher(sampler, 0, 0, steps, rows, put=jax.device_put)
  started = time.perf_counter()
  try:
    while True:
      before = time.perf_counter()
      item = next(prefetcher, None)
      waited += time.perf_counter() - before
      if item is None:
        break
      params, opt_state, metrics = step_fn(params, opt_state, item[1], key)
      # As ht_jax.train does, the loop does not block on the step: dispatch is asynchronous, and the
      # loop blocks only when the step's result is needed.
    jax.block_until_ready(metrics)
  finally:
    prefetcher.close()
  total = time.perf_counter() - started
  return {"benchmark": "input_pipeline", "config": config_name, "framework": "jax",
          "episodes_per_step": episodes_per_step, "episodes_per_s_median": steps * episodes_per_step / total,
          "episodes_per_s_min": steps * episodes_per_step / total, "episodes_per_s_max": steps * episodes_per_step / total,
          "peak_rss_mb": common.peak_rss_mb(), "flop_fraction_of_matmul_peak": None, "compile_s": compile_s,
          "allocator": allocator.active(), "data_wait_fraction": waited / total, "sampler_episodes_per_s_one_thread": episodes_per_step / sample_s,
          "image_shape": list(sampler.dataset.image_shape), "steps": steps,
          "augmentation": augmentation if sampler.spec.image_augmentation else "none"}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="omniglot_1shot_v1", choices=common.CONFIGS)
  parser.add_argument("--episodes", type=int, default=16)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--augmentation", default="step", choices=("step", "host"))
  args = parser.parse_args()
  row = measure(args.config, args.episodes, args.steps, args.augmentation)
  common.write_json("input_pipeline", [row])
  print(f"| config | image | augmentation in | episodes/step | episodes/s (loop) | waiting for data | "
        f"sampler alone, 1 thread (episodes/s) |\n"
        f"|---|---|---|---|---|---|---|\n| {row['config']} | {row['image_shape']} | {row['augmentation']} | "
        f"{row['episodes_per_step']} | "
        f"{row['episodes_per_s_median']:.1f} | {100 * row['data_wait_fraction']:.1f}% | "
        f"{row['sampler_episodes_per_s_one_thread']:.0f} |")


if __name__ == "__main__":
  main()
