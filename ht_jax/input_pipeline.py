"""Episodes for the jitted step: sampled ahead in background threads (NumPy releases the GIL
for most of the work), as a pure function of (seed, step, index) so that resume is exact."""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Sequence

import numpy as np

from ht_data import Episode, EpisodeSampler


def episode_arrays(episode: Episode) -> dict[str, np.ndarray]:
  """The arrays a step trains on, with the ImageNet-style augmentation's inputs when the sampler
  left that to the step (ht_jax.augment.augment_batch applies them)."""
  return {"support_images": episode.support_images, "support_labels": episode.support_labels,
          "query_images": episode.query_images, "query_labels": episode.query_labels,
          **(episode.image_augmentation or {})}


class Prefetcher:
  """Yields (step, batch) for steps start..end-1, each batch holding the episodes `indices` of
  that step (this host's rows of the global batch, see parallel.local_rows), passed through
  `put` (e.g. onto the devices) in the worker thread, so the transfer overlaps the running step."""

  def __init__(self, sampler: EpisodeSampler, seed: int, start: int, end: int, indices: Sequence[int],
               put: Callable[[dict], dict] | None = None, ahead: int = 4, workers: int = 2):
    self._sampler, self._seed, self._indices = sampler, seed, [int(i) for i in indices]
    self._put = put or (lambda batch: batch)
    self._steps = iter(range(start, end))
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="episodes")
    self._queue: collections.deque = collections.deque()
    for _ in range(ahead):
      self._submit()

  def _submit(self) -> None:
    step = next(self._steps, None)
    if step is not None:
      self._queue.append((step, self._pool.submit(self._load, step)))

  def _load(self, step: int):
    return self._put(episode_arrays(self._sampler.batch(self._seed, step, self._indices)))

  def __iter__(self):
    return self

  def __next__(self) -> tuple[int, dict]:
    if not self._queue:
      raise StopIteration
    step, future = self._queue.popleft()
    self._submit()
    return step, future.result()

  def close(self) -> None:
    for _, future in self._queue:
      future.cancel()
    self._pool.shutdown(wait=True, cancel_futures=True)
