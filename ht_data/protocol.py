"""The original's evaluation protocol (HT_REFERENCE 10), framework-free so that ht_jax.evaluate and
ht_torch.evaluate measure the same tasks the same way.

Per split, `eval.num_task_evals` tasks; each task has one fixed support set and
`eval.num_eval_batches` query batches of `eval.batch_size`. A task's accuracy is the mean over its
batches; a split's, the mean over tasks with a 95% confidence interval over tasks. Tasks depend
only on `eval.seed`.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Iterator

import numpy as np

from ht_data.episodes import EpisodeSampler, EpisodeSpec
from ht_data.errors import DataError
from ht_data.splits import split_class_ids


def split_samplers(config, dataset) -> dict[str, EpisodeSampler]:
  class_ids = split_class_ids(config.data, config.eval)
  samplers = {}
  for split in [s.strip() for s in config.eval.splits.split(",") if s.strip()]:
    if split not in class_ids:
      raise DataError(f"eval.splits names {split!r}, which is not one of {', '.join(class_ids)}; "
                      f"fix --config.eval.splits.")
    # The train split is evaluated with the training augmentation, val/test without (as the original).
    spec = EpisodeSpec.from_config(config.data, training=split == "train", query_size=int(config.eval.batch_size))
    samplers[split] = EpisodeSampler(dataset, class_ids[split], spec)
  return samplers


def task_chunks(sampler: EpisodeSampler, eval_cfg, chunk: int, rows=None
                ) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
  """Yields (number of real tasks, (support images [R, S, ...], support labels [R, S],
  query images [R, batches, Q, ...], query labels [R, batches, Q])) for every `chunk` tasks, two
  chunks sampled ahead in threads. `rows` (default: all `chunk`) picks the rows of each chunk this
  process loads (its devices' share). The last chunk is padded with repeats of the last task so
  that every call has one shape (no recompilation)."""
  tasks, batches, seed = int(eval_cfg.num_task_evals), int(eval_cfg.num_eval_batches), int(eval_cfg.seed)
  rows = range(chunk) if rows is None else rows

  def load(first):
    parts = [sampler.eval_task(seed, min(first + r, tasks - 1), batches) for r in rows]
    return (np.stack([p[0].support_images[0] for p in parts]), np.stack([p[0].support_labels[0] for p in parts]),
            np.stack([p[1] for p in parts]), np.stack([p[2] for p in parts]))

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    firsts = range(0, tasks, chunk)
    futures = [pool.submit(load, first) for first in firsts]
    for first, future in zip(firsts, futures):
      yield min(chunk, tasks - first), future.result()


def evaluate_split(task_accuracies: Callable[..., np.ndarray], sampler: EpisodeSampler, eval_cfg,
                   chunk: int = 1, progress: Callable = lambda it, total: it) -> dict:
  """`task_accuracies(support_images, support_labels, query_images, query_labels)` -> [chunk]."""
  tasks = int(eval_cfg.num_task_evals)
  accuracies = []
  for real, arrays in progress(task_chunks(sampler, eval_cfg, chunk), -(-tasks // chunk)):
    accuracies.extend(np.asarray(task_accuracies(*arrays))[:real].tolist())
  return summarise(accuracies)


def summarise(accuracies) -> dict:
  acc = np.asarray(accuracies, np.float64)
  ci95 = 1.96 * acc.std(ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else float("nan")
  return {"accuracy": float(acc.mean()), "ci95": float(ci95), "tasks": int(len(acc))}


def ways_and_shots(data_cfg) -> tuple[int, int]:
  ways = int(data_cfg.num_labels)
  return ways, int(data_cfg.samples_transformer) // ways - int(data_cfg.unlabeled_samples_per_class)
