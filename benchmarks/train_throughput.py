"""Train-step throughput of ht_jax in episodes per second.

  python -m benchmarks.train_throughput [--config configs/omniglot_1shot_v1.py] [--episodes 1 16]

Times the jitted step alone (episodes are sampled beforehand from the real data, so the input
pipeline is not measured), compile excluded and reported separately; median, min and max over
--repeats timed blocks of --steps steps. Writes benchmarks/results/train_throughput.json and
prints a markdown table. Figures on shared machines are noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import resource
import time

import jax
import numpy as np

RESULTS = pathlib.Path(__file__).parent / "results"


def load_config(path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def measure(config, episodes_per_step: int, steps: int, repeats: int) -> dict:
  import ht_data
  from ht_jax.input_pipeline import episode_arrays
  from ht_jax.optimizer import make_optimizer
  from ht_jax.train import create_model, make_train_step

  config.train.episodes_per_step = episodes_per_step
  dataset = ht_data.load_dataset(config.data)
  sampler = ht_data.EpisodeSampler(dataset, ht_data.train_class_ids(config.data),
                                   ht_data.EpisodeSpec.from_config(config.data, training=True))
  batches = [jax.device_put(episode_arrays(sampler.batch(0, s, range(episodes_per_step)))) for s in range(4)]
  graphdef, params = create_model(config)
  tx = make_optimizer(config.train)
  opt_state = tx.init(params)
  step = make_train_step(graphdef, config, tx)
  key = jax.random.key(0)

  started = time.perf_counter()
  params, opt_state, metrics = step(params, opt_state, batches[0], key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - started
  rates = []
  for _ in range(repeats):
    started = time.perf_counter()
    for i in range(steps):
      params, opt_state, metrics = step(params, opt_state, batches[i % len(batches)], key)
    jax.block_until_ready(metrics)
    rates.append(steps * episodes_per_step / (time.perf_counter() - started))
  return {"benchmark": "train_step", "framework": "jax", "episodes_per_step": episodes_per_step,
          "episodes_per_s_median": float(np.median(rates)), "episodes_per_s_min": float(np.min(rates)),
          "episodes_per_s_max": float(np.max(rates)), "compile_s": compile_s,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/omniglot_1shot_v1.py")
  parser.add_argument("--episodes", type=int, nargs="+", default=[1, 16])
  parser.add_argument("--steps", type=int, default=0, help="steps per timed block (default: ~64 episodes)")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rows = []
  for b in args.episodes:
    row = measure(load_config(args.config), b, args.steps or max(2, 64 // b), args.repeats)
    row["config"] = pathlib.Path(args.config).stem
    rows.append(row)
  RESULTS.mkdir(exist_ok=True)
  out = {"device": str(jax.devices()[0].device_kind), "cpu": platform.processor() or platform.machine(),
         "rows": rows}
  (RESULTS / "train_throughput.json").write_text(json.dumps(out, indent=2))
  print("| config | episodes/step | episodes/s median (min-max) | compile s | peak RSS MB |\n|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['config']} | {r['episodes_per_step']} | {r['episodes_per_s_median']:.1f} "
          f"({r['episodes_per_s_min']:.1f}-{r['episodes_per_s_max']:.1f}) | {r['compile_s']:.1f} | "
          f"{r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
  main()
