"""Evaluation throughput under the original's protocol (HT_REFERENCE 10).

  python -m benchmarks.evaluation --framework jax|torch [--config omniglot_1shot_v1]

One evaluation episode is one task: its support set generates the CNN once, which then classifies
`eval.num_eval_batches` query batches of `eval.batch_size` (BN statistics per batch). JAX evaluates
`eval.tasks_per_call` tasks per call (ht_jax.evaluate; benchmarks.run passes 1 for 84x84 tasks), torch one task at a time (ht_torch.evaluate);
the reported episodes_per_step is that. Compilation or the first call is excluded (compile_s).
Writes benchmarks/results/evaluation_<framework>.json and prints a markdown table.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import argparse
import time

import numpy as np

from benchmarks import common


def eval_tasks(config, tasks: int) -> tuple[np.ndarray, ...]:
  """(support images, support labels, query images [T, batches, Q, ...], query labels) of `tasks`
  tasks: real Omniglot test tasks, or random images of the config's shape."""
  e, d = config.eval, config.data
  if common.uses_omniglot(config):
    import ht_data
    from ht_data import protocol
    config.eval.splits = "test"
    sampler = protocol.split_samplers(config, ht_data.load_dataset(d))["test"]
    config.eval.num_task_evals = tasks
    return next(protocol.task_chunks(sampler, config.eval, tasks))[1]
  rng = np.random.default_rng(0)
  n, s, size, b, q = int(d.num_labels), int(d.samples_transformer), int(d.image_size), int(e.num_eval_batches), int(e.batch_size)
  return (rng.uniform(-1, 1, (tasks, s, size, size, 3)).astype(np.float32),
          np.tile(np.arange(s, dtype=np.int32) % n, (tasks, 1)),
          rng.uniform(-1, 1, (tasks, b, q, size, size, 3)).astype(np.float32),
          np.tile(np.arange(q, dtype=np.int32) % n, (tasks, b, 1)))


def measure_jax(config_name: str, repeats: int = 5, seconds_per_repeat: float = 1.0,
                tasks_per_call: int | None = None) -> dict:
  import jax
  from ht_jax.evaluate import make_task_accuracy_fn
  from ht_jax.train import create_model
  config = common.load_config(config_name)
  tasks = int(tasks_per_call or config.eval.tasks_per_call)
  arrays = [jax.device_put(a) for a in eval_tasks(config, tasks)]
  graphdef, params = create_model(config)
  started = time.perf_counter()
  task_accuracy = make_task_accuracy_fn(graphdef).lower(params, *arrays).compile()
  jax.block_until_ready(task_accuracy(params, *arrays))
  compile_s = time.perf_counter() - started
  common.wait_for_turn()

  def run_calls(k):
    for _ in range(k):
      out = task_accuracy(params, *arrays)
    jax.block_until_ready(out)

  timing = common.timed_repeats(run_calls, tasks, repeats, seconds_per_repeat)
  flops, peak = common.compiled_flops(task_accuracy), common.matmul_peak_flops()
  fraction = common.flop_fraction(flops, timing["episodes_per_s_median"] / tasks, peak)
  return {"benchmark": "evaluation", "config": config_name, "framework": "jax", "episodes_per_step": tasks,
          **timing, "compile_s": compile_s, "peak_rss_mb": common.peak_rss_mb(),
          "flop_fraction_of_matmul_peak": fraction, "query_batches_per_task": int(config.eval.num_eval_batches),
          "query_batch_size": int(config.eval.batch_size)}


def measure_torch(config_name: str, repeats: int = 5, seconds_per_repeat: float = 1.0,
                  tasks_per_call: int | None = None) -> dict:
  """ht_torch.evaluate takes one task at a time; `tasks_per_call` is JAX's alone."""
  import torch
  from ht_torch.evaluate import task_predictions
  from ht_torch.model.hypertransformer import HyperTransformer
  config = common.load_config(config_name)
  sx, sy, qx, qy = eval_tasks(config, 2)
  torch.manual_seed(0)
  model = HyperTransformer(config).eval()
  state = {"i": 0}

  def run_tasks(k):
    for _ in range(k):
      i = state["i"] % len(sx)
      task_predictions(model, sx[i:i + 1], sy[i:i + 1], qx[i:i + 1])
      state["i"] += 1

  started = time.perf_counter()
  run_tasks(1)
  warmup_s = time.perf_counter() - started
  timing = common.timed_repeats(run_tasks, 1, repeats, seconds_per_repeat)
  return {"benchmark": "evaluation", "config": config_name, "framework": "torch", "episodes_per_step": 1,
          **timing, "compile_s": warmup_s, "peak_rss_mb": common.peak_rss_mb(),
          "flop_fraction_of_matmul_peak": None, "query_batches_per_task": int(config.eval.num_eval_batches),
          "query_batch_size": int(config.eval.batch_size)}


MEASURE = {"jax": measure_jax, "torch": measure_torch}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--framework", choices=sorted(MEASURE), required=True)
  parser.add_argument("--config", default="omniglot_1shot_v1", choices=common.CONFIGS)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--seconds", type=float, default=1.0)
  args = parser.parse_args()
  rows = [MEASURE[args.framework](args.config, args.repeats, args.seconds)]
  common.write_json(f"evaluation_{args.framework}", rows)
  print(common.markdown_table(rows))


if __name__ == "__main__":
  main()
