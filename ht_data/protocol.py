"""The original's evaluation protocol (HT_REFERENCE 10), framework-free so that ht_jax.evaluate and
ht_torch.evaluate measure the same tasks the same way.

Per split, `eval.num_task_evals` tasks; each task has one fixed support set and
`eval.num_eval_batches` query batches of `eval.batch_size`. A task's accuracy is the mean over its
batches; a split's, the mean over tasks with a 95% confidence interval over tasks. Tasks depend
only on `eval.seed`.

Semi-supervised configs (`data.unlabeled_samples_per_class` > 0) are measured twice on the same
tasks: with the whole support set, and with its unlabelled samples removed (`labelled_only`), so
that the gain from unlabelled samples is a paired difference per task.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Iterator, Sequence

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


def labelled_only(support_images: np.ndarray, support_labels: np.ndarray, ways: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Removes the unlabelled samples (label `ways`) from support arrays [R, S, ...]; every row keeps
  its labelled samples in order. Rows hold equally many (balanced episodes), so the result stacks."""
  keep = support_labels != ways
  counts = keep.sum(axis=1)
  if len(set(counts.tolist())) > 1:
    raise DataError(f"support rows hold different numbers of labelled samples ({sorted(set(counts.tolist()))}); "
                    "unlabelled samples need balanced_batches=True")
  order = np.argsort(~keep, axis=1, kind="stable")[:, :int(counts[0])]   # labelled first, in order
  images = np.take_along_axis(support_images, order.reshape(order.shape + (1,) * (support_images.ndim - 2)), axis=1)
  return images, np.take_along_axis(support_labels, order, axis=1)


def support_variants(data_cfg, arrays: tuple[np.ndarray, ...]) -> dict[str, tuple[np.ndarray, ...]]:
  """{"": the task as sampled} plus, for semi-supervised configs, {"labelled_only": the same task
  without its unlabelled support samples}."""
  variants = {"": arrays}
  if int(data_cfg.unlabeled_samples_per_class):
    sx, sy, qx, qy = arrays
    variants["labelled_only"] = (*labelled_only(sx, sy, int(data_cfg.num_labels)), qx, qy)
  return variants


def evaluate_split(task_accuracies: Callable[..., np.ndarray], sampler: EpisodeSampler, config,
                   chunk: int = 1, progress: Callable = lambda it, total: it) -> dict:
  """`task_accuracies(support_images, support_labels, query_images, query_labels)` -> [chunk]."""
  tasks = int(config.eval.num_task_evals)
  accuracies: dict[str, list] = {}
  for real, arrays in progress(task_chunks(sampler, config.eval, chunk), -(-tasks // chunk)):
    for name, variant in support_variants(config.data, arrays).items():
      accuracies.setdefault(name, []).extend(np.asarray(task_accuracies(*variant))[:real].tolist())
  return split_result(accuracies)


def split_result(accuracies: dict[str, Sequence[float]]) -> dict:
  """{"accuracy", "ci95", "tasks"} of the task as sampled; for semi-supervised configs also
  "labelled_only" (the same summary without the unlabelled samples) and "unlabelled_gain" (the
  paired per-task difference, with its own 95% interval)."""
  result = summarise(accuracies[""])
  if "labelled_only" in accuracies:
    result["labelled_only"] = summarise(accuracies["labelled_only"])
    result["unlabelled_gain"] = summarise(np.asarray(accuracies[""]) - np.asarray(accuracies["labelled_only"]))
  return result


def summarise(accuracies) -> dict:
  acc = np.asarray(accuracies, np.float64)
  ci95 = 1.96 * acc.std(ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else float("nan")
  return {"accuracy": float(acc.mean()), "ci95": float(ci95), "tasks": int(len(acc))}


def task_description(data_cfg) -> dict:
  """{"ways", "shots" (labelled per class), "unlabelled_per_class"} of the evaluated tasks."""
  ways, unlabelled = int(data_cfg.num_labels), int(data_cfg.unlabeled_samples_per_class)
  return {"ways": ways, "shots": int(data_cfg.samples_transformer) // ways - unlabelled,
          "unlabelled_per_class": unlabelled}
