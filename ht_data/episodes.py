"""Few-shot episode sampling exactly as the original (HT_REFERENCE 4.3-4.4 and 10).

Every episode is a pure function of (dataset, class ids, spec, seed, step, index): its generator is
`np.random.default_rng([seed, step, index])` (all three non-negative integers), so an episode is the
same whichever batch, process or worker draws it (see `EpisodeSampler._plan` for the draw order).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from ht_data.augment import (AugmentationParams, AugmentationSettings, ImageAugmentationDraws,
                             apply_augmentation, apply_image_augmentations, augmentation_settings,
                             draw_augmentation_params, draw_image_augmentations, image_augmentation_inputs,
                             resize_bilinear, rotate_quarter_turns, to_levels)
from ht_data.dataset import ClassDataset
from ht_data.errors import DataError

# Separates evaluation-task streams from training-episode streams of the same (seed, step).
_EVAL_SPAWN_KEY = (1,)


@dataclasses.dataclass(frozen=True)
class Episode:
  """A batch of B episodes (leading axis B everywhere).

  With `image_augmentation` set (EpisodeSpec.image_augmentation_in_step), the images are the uint8
  levels the ImageNet-style augmentation starts from, and `image_augmentation` holds its inputs
  (augment.image_augmentation_inputs) as support_<name> [B, S, ...] and query_<name> [B, Q, ...]:
  the jitted step applies them (ht_jax.augment.augment_batch, ht_torch.augment.augment_batch).
  """
  support_images: np.ndarray   # float32 [B, S, H, W, C], x/128 - 1 (uint8 levels, see above)
  support_labels: np.ndarray   # int32 [B, S], 0..N-1, or N for unlabelled support samples
  query_images: np.ndarray     # float32 [B, Q, H, W, C]
  query_labels: np.ndarray     # int32 [B, Q], 0..N-1
  support_classes: np.ndarray  # int32 [B, S] real class ids
  query_classes: np.ndarray    # int32 [B, Q]
  image_augmentation: dict[str, np.ndarray] | None = None

  @staticmethod
  def concatenate(episodes: Sequence[Episode]) -> Episode:
    """Joins episode batches along the leading axis."""
    def join(values):
      if values[0] is None:
        return None
      if isinstance(values[0], dict):
        return {k: np.concatenate([v[k] for v in values]) for k in values[0]}
      return np.concatenate(values)
    return Episode(**{field.name: join([getattr(e, field.name) for e in episodes])
                      for field in dataclasses.fields(Episode)})


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
  """Episode geometry and augmentation (the original's flags, resolved for train or test classes)."""
  ways: int
  support_size: int
  query_size: int
  unlabeled_per_class: int = 0
  image_size: int = 28
  balanced: bool = True
  augmentation: AugmentationSettings = AugmentationSettings()
  image_augmentation: bool = False    # apply_image_augmentations (training classes only)
  augment_individually: bool = False  # augment_images_individually
  image_augmentation_in_step: bool = False   # leave image_augmentation to the jitted step (Episode)

  def __post_init__(self):
    if self.ways < 1 or self.query_size < 1 or self.image_size < 1:
      raise DataError(f"Episode needs ways, query size and image size >= 1, got {self.ways}, "
                      f"{self.query_size}, {self.image_size}; fix num_labels, samples_cnn (or eval batch_size) "
                      "and image_size")
    if self.support_size < self.ways:
      raise DataError(f"samples_transformer={self.support_size} gives fewer support samples than "
                      f"num_labels={self.ways} ways; use at least one support sample per way")
    if self.unlabeled_per_class < 0:
      raise DataError(f"unlabeled_samples_per_class={self.unlabeled_per_class} is negative; use 0 or more")
    if self.unlabeled_per_class and not self.balanced:
      raise DataError("unlabeled_samples_per_class > 0 needs balanced_batches=True, as in the original")
    if self.unlabeled_per_class and self.unlabeled_per_class >= self.support_size // self.ways:
      raise DataError(f"unlabeled_samples_per_class={self.unlabeled_per_class} leaves some class without a "
                      f"labelled support sample ({self.support_size // self.ways} support samples per class); "
                      "raise samples_transformer or lower unlabeled_samples_per_class")

  @classmethod
  def from_config(cls, data_cfg, training: bool, query_size: int | None = None) -> EpisodeSpec:
    """Spec for training classes (training=True) or test classes; query_size overrides samples_cnn
    (the evaluator uses config.eval.batch_size)."""
    return cls(
        ways=int(data_cfg.num_labels),
        support_size=int(data_cfg.samples_transformer),
        query_size=int(data_cfg.samples_cnn if query_size is None else query_size),
        unlabeled_per_class=int(data_cfg.unlabeled_samples_per_class),
        image_size=int(data_cfg.image_size),
        balanced=bool(data_cfg.balanced_batches),
        augmentation=augmentation_settings(data_cfg, training),
        image_augmentation=bool(data_cfg.apply_image_augmentations) and training,
        augment_individually=bool(data_cfg.augment_images_individually),
        # .get: configs saved before the key existed (a workdir's config.json) still load.
        image_augmentation_in_step=bool(data_cfg.get("image_augmentation_in_step", True)))


def _normalise(pixels: np.ndarray) -> np.ndarray:
  """x/128 - 1 as float32 (multiplying by 2**-7 is exact, so this equals the division)."""
  out = np.multiply(pixels, np.float32(1 / 128), dtype=np.float32)
  out -= np.float32(1.0)
  return out


def _levels(pixels: np.ndarray) -> np.ndarray:
  """The uint8 levels to_levels(_normalise(pixels)) holds; for uint8 pixels those are the pixels
  themselves (x/128 - 1, then (x+1)*128, is exact in float32), so they are not computed."""
  if pixels.dtype == np.uint8:
    return pixels
  return to_levels(_normalise(pixels)).astype(np.uint8)


def balanced_counts(batch_size: int, ways: int) -> np.ndarray:
  """floor(B/N) samples per class, one extra for the first B mod N classes."""
  counts = np.full(ways, batch_size // ways, np.int64)
  counts[:batch_size % ways] += 1
  return counts


@dataclasses.dataclass(frozen=True)
class _Output:
  """One output batch of a plan: which draws it shows, in which order, and its image-aug values."""
  draws: np.ndarray                              # int [n]: indices into the plan's draws
  image_aug: ImageAugmentationDraws | None


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Every random choice of one episode or evaluation task; rendering it involves no randomness.

  Draws are flat arrays over all sampled images of all blocks, each block in label-slot order.
  """
  params: AugmentationParams   # per label slot
  classes: np.ndarray          # int [T] real class id of each draw
  samples: np.ndarray          # int [T] image index within its class
  slots: np.ndarray            # int [T] label slot 0..N-1
  labels: np.ndarray           # int [T] episode label (slot, or N for unlabelled support draws)
  outputs: list[_Output]       # support first, then the query batch(es)


class EpisodeSampler:
  """Draws episodes of `spec` from the classes `class_ids` of `dataset`.

  Sampling is split in two: `_plan` makes every random choice of one episode from its own
  generator; `_render` turns any number of plans into arrays with vectorised NumPy (gather,
  augmentation, resize, normalisation, ImageNet augmentation over the whole batch at once). Pixel
  work is per image, so an episode is bit-identical whichever batch renders it.
  """

  def __init__(self, dataset: ClassDataset, class_ids: np.ndarray, spec: EpisodeSpec):
    self.dataset = dataset
    self.spec = spec
    self.class_ids = np.asarray(class_ids).astype(np.int64).ravel()
    self._sizes = dataset.class_sizes
    self._stacked = isinstance(dataset.images, np.ndarray)   # one array: gather in one indexing op
    self._validate()
    self._support_counts = balanced_counts(spec.support_size, spec.ways)
    self._query_counts = balanced_counts(spec.query_size, spec.ways)
    # Unbalanced mode: one batch of S + Q, split after the shuffle.
    self._joint_counts = balanced_counts(spec.support_size + spec.query_size, spec.ways)

  def _validate(self) -> None:
    spec, ids, name = self.spec, self.class_ids, self.dataset.name
    if ids.size == 0:
      raise DataError(f"No class ids were given for {name!r}; fix the dataset spec ranges or the "
                      "evaluation preset")
    if ids.min() < 0 or ids.max() >= self.dataset.num_classes:
      raise DataError(f"Class ids for {name!r} must lie in 0..{self.dataset.num_classes - 1}, got "
                      f"{ids.min()}..{ids.max()}; fix the dataset spec ranges or the evaluation preset")
    if np.unique(ids).size != ids.size:
      raise DataError(f"Class ids for {name!r} contain duplicates; list each class once")
    if spec.ways > ids.size:
      raise DataError(f"num_labels={spec.ways} ways exceeds the {ids.size} classes available in {name!r}; "
                      "lower num_labels or widen the class range")
    batches = [spec.support_size, spec.query_size] if spec.balanced else [spec.support_size + spec.query_size]
    needed = max(-(-size // spec.ways) for size in batches)   # ceil: the classes that get the extra one
    sizes = self._sizes[ids]
    if sizes.min() < needed:
      worst = ids[np.argmin(sizes)]
      raise DataError(f"Class {worst} of {name!r} has {sizes.min()} images but an episode batch needs {needed} "
                      "distinct images per class; lower samples_transformer/samples_cnn or drop that class")
    height, width, channels = self.dataset.image_shape
    if spec.augmentation.rotate_by_90 and height != width:
      raise DataError(f"random_rotate_by_90 needs square images but {name!r} has {height}x{width}; "
                      "turn the rotation off")
    if spec.image_augmentation and channels != 3:
      raise DataError(f"apply_image_augmentations needs RGB images but {name!r} has {channels} channel(s); "
                      "turn it off for this dataset")
    if channels not in (1, 3):
      raise DataError(f"Dataset {name!r} has {channels} channels; expected 1 (grey) or 3 (RGB)")

  # ----------------------------------------------------------------------------------------------
  # planning: all randomness

  @staticmethod
  @functools.lru_cache(maxsize=16)
  def _layout(counts_list: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key row, slot, rank within class) of every draw of the blocks `counts_list`: block after
    block, each in slot order. Depends only on the counts, so it is computed once."""
    rows, slots, ranks = [], [], []
    for block, counts in enumerate(counts_list):
      counts = np.asarray(counts)
      block_slots = np.repeat(np.arange(counts.size), counts)
      rows.append(block * counts.size + block_slots)
      slots.append(block_slots)
      ranks.append(np.arange(block_slots.size) - np.repeat(np.cumsum(counts) - counts, counts))
    return np.concatenate(rows), np.concatenate(slots), np.concatenate(ranks)

  def _draw_samples(self, rng: np.random.Generator, classes: np.ndarray, counts_list: list[np.ndarray]):
    """For each block in counts_list and each class j, counts[j] distinct sample indices (without
    replacement within the block; blocks are independent of each other).

    Returns (slot, sample index, rank of the draw within its class) over all blocks (see _layout).
    One matrix of random keys, argsorted per row, draws every block and class at once; for unequal
    class sizes the keys past a class's end are set above every real key.
    """
    rows, slots, ranks = self._layout(tuple(tuple(int(c) for c in counts) for counts in counts_list))
    sizes = self._sizes[classes]
    keys = rng.random((len(counts_list) * classes.size, int(sizes.max())))
    if sizes.min() != sizes.max():
      keys[np.arange(keys.shape[1]) >= np.tile(sizes, len(counts_list))[:, None]] = 2.0
    return slots, np.argsort(keys, axis=1)[rows, ranks], ranks

  def _image_aug(self, rng: np.random.Generator, n: int) -> ImageAugmentationDraws | None:
    if not self.spec.image_augmentation:
      return None
    return draw_image_augmentations(rng, n, self.spec.augment_individually)

  def _plan(self, rng: np.random.Generator, num_query_batches: int = 1) -> _Plan:
    """Draw order: classes, augmentation values, samples of every block, shuffles, ImageNet-aug values.

    The original shuffles after the ImageNet augmentation; drawing those values per output position
    after the shuffle is the same distribution (they are i.i.d. per image or shared by the batch).
    """
    spec, ways = self.spec, self.spec.ways
    classes = rng.permutation(self.class_ids)[:ways]   # shuffled allowed list; first N = label slots
    params = draw_augmentation_params(spec.augmentation, ways, rng)
    if spec.balanced:
      counts = [self._support_counts] + [self._query_counts] * num_query_batches
    else:
      counts = [self._joint_counts] + [self._query_counts] * (num_query_batches - 1)
    slots, samples, ranks = self._draw_samples(rng, classes, counts)
    labels = slots.copy()
    support_draws = int(counts[0].sum())
    if spec.unlabeled_per_class:   # the first U support draws of each class are unlabelled
      labels[:support_draws][ranks[:support_draws] < spec.unlabeled_per_class] = ways
    orders = []
    if spec.balanced:
      orders.append(rng.permutation(support_draws))
    else:   # one shuffled batch of S + Q: the first S are the support set, the rest the first query batch
      joint = rng.permutation(support_draws)
      orders += [joint[:spec.support_size], joint[spec.support_size:]]
    start = support_draws
    while len(orders) < num_query_batches + 1:
      orders.append(start + rng.permutation(spec.query_size))
      start += spec.query_size
    outputs = [_Output(order, self._image_aug(rng, order.size)) for order in orders]
    return _Plan(params=params, classes=classes[slots], samples=samples, slots=slots, labels=labels,
                 outputs=outputs)

  # ----------------------------------------------------------------------------------------------
  # rendering: no randomness, vectorised over all plans

  def _gather(self, classes: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Raw images of (class id, sample index) pairs [n, H, W, C], in the dataset's dtype."""
    if self._stacked:
      return self.dataset.images[classes, samples]
    out = np.empty((classes.size,) + self.dataset.image_shape, self.dataset.images[0].dtype)
    for class_id in np.unique(classes):
      rows = classes == class_id
      out[rows] = self.dataset.images[class_id][samples[rows]]
    return out

  def _render(self, plans: list[_Plan], in_step: bool = False
              ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray] | None]]:
    """(images [B, n, H, W, C], labels [B, n], classes [B, n], image-augmentation inputs [B, n, ...]
    or None) for each output position; with `in_step`, the ImageNet-style augmentation is left to
    the step: images are its uint8 levels and the last entry its inputs."""
    spec = self.spec
    offsets = np.cumsum([0] + [plan.classes.size for plan in plans])
    classes = np.concatenate([plan.classes for plan in plans])
    slots = np.concatenate([plan.slots + i * spec.ways for i, plan in enumerate(plans)])
    raw = self._gather(classes, np.concatenate([plan.samples for plan in plans]))
    params = AugmentationParams.concatenate([plan.params for plan in plans])
    if spec.augmentation.only_quarter_turns:
      # Pixels stay in the dataset's dtype (uint8: 4x less memory traffic than float32).
      pixels = rotate_quarter_turns(raw, params.rot90_k[slots]) if spec.augmentation.rotate_by_90 else raw
    else:
      pixels = apply_augmentation(raw, slots, params, spec.augmentation)
    pixels = resize_bilinear(pixels, spec.image_size)   # identity when the size already matches
    labels = np.concatenate([plan.labels for plan in plans]).astype(np.int32)
    classes = classes.astype(np.int32)
    rendered = []
    for position in range(len(plans[0].outputs)):
      outputs = [plan.outputs[position] for plan in plans]
      index = np.concatenate([offset + out.draws for offset, out in zip(offsets, outputs)])
      shape = (len(plans), outputs[0].draws.size)
      inputs = None
      if not spec.image_augmentation:
        batch_images = _normalise(pixels[index])
      else:
        draws = ImageAugmentationDraws.concatenate([out.image_aug for out in outputs])
        if in_step:
          batch_images = _levels(pixels[index])
          inputs = {k: v.reshape(shape + v.shape[1:])
                    for k, v in image_augmentation_inputs(draws, *batch_images.shape[1:3]).items()}
        else:
          batch_images = apply_image_augmentations(_normalise(pixels[index]), draws)
      rendered.append((batch_images.reshape(shape + batch_images.shape[1:]), labels[index].reshape(shape),
                       classes[index].reshape(shape), inputs))
    return rendered

  # ----------------------------------------------------------------------------------------------

  def episode(self, seed: int, step: int, index: int) -> Episode:
    """One episode (B=1); rng = np.random.default_rng([seed, step, index])."""
    return self.batch(seed, step, [index])

  def batch(self, seed: int, step: int, indices: Sequence[int]) -> Episode:
    """episode(seed, step, i) for each i, stacked along B (identical to drawing them one by one)."""
    if len(indices) == 0:
      raise ValueError("batch() needs at least one episode index")
    plans = [self._plan(np.random.default_rng([seed, step, int(i)])) for i in indices]
    support, query = self._render(plans, in_step=self.spec.image_augmentation_in_step)
    inputs = None
    if support[3] is not None:
      inputs = {f"{part}_{k}": v for part, out in (("support", support), ("query", query)) for k, v in out[3].items()}
    return Episode(support_images=support[0], support_labels=support[1], query_images=query[0],
                   query_labels=query[1], support_classes=support[2], query_classes=query[2],
                   image_augmentation=inputs)

  def eval_task(self, seed: int, task: int, num_query_batches: int) -> tuple[Episode, np.ndarray, np.ndarray]:
    """The original evaluation protocol for one task (HT_REFERENCE 10).

    One fixed support set plus `num_query_batches` independent class-balanced query batches of the
    same classes and augmentation draw (they may overlap each other and the support set).
    rng = default_rng(SeedSequence([seed, task], spawn_key=(1,))), a stream no episode() uses.
    In unbalanced mode the support set and query batch 0 come from one shuffled S + Q batch, as in
    episode(); the other query batches are drawn balanced.
    Returns (Episode with B=1 whose query fields hold query batch 0, query images
    [num_query_batches, Q, H, W, C], query labels [num_query_batches, Q]).
    """
    if num_query_batches < 1:
      raise DataError(f"num_eval_batches={num_query_batches} must be at least 1")
    rng = np.random.default_rng(np.random.SeedSequence([seed, task], spawn_key=_EVAL_SPAWN_KEY))
    support, *queries = self._render([self._plan(rng, num_query_batches)])
    episode = Episode(support_images=support[0], support_labels=support[1], query_images=queries[0][0],
                      query_labels=queries[0][1], support_classes=support[2], query_classes=queries[0][2])
    return episode, np.concatenate([q[0] for q in queries]), np.concatenate([q[1] for q in queries])
