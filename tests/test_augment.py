"""The ImageNet-style augmentation in the step (ht_jax.augment, ht_torch.augment) against the host's
NumPy path (ht_data.augment.apply_image_augmentations), and the sampler that leaves it to the step."""

import dataclasses

import jax
import numpy as np
import pytest
import torch

from ht_data.augment import (apply_image_augmentations, draw_image_augmentations,
                             image_augmentation_inputs, to_levels)
from ht_data.dataset import ClassDataset
from ht_data.episodes import Episode, EpisodeSampler, EpisodeSpec, _levels, _normalise
from ht_jax import augment as jax_augment
from ht_jax.input_pipeline import episode_arrays
from ht_torch import augment as torch_augment


def rgb_levels(seed, n=24, size=20):
  """uint8 RGB images with noise, flat grey patches (no chroma) and saturated corners."""
  rng = np.random.default_rng(seed)
  levels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  levels[:, :5, :5] = rng.integers(0, 256, (n, 1, 1, 1), dtype=np.uint8)   # grey
  levels[:, -4:, -4:] = np.array([255, 0, 0], np.uint8)
  return levels


def host_and_inputs(levels, seed, individually):
  draws = draw_image_augmentations(np.random.default_rng(seed), len(levels), individually)
  host = apply_image_augmentations(_normalise(levels), draws)
  return host, image_augmentation_inputs(draws, *levels.shape[1:3])


@pytest.mark.parametrize("individually", [False, True])
def test_torch_step_augmentation_equals_the_host_bit_for_bit(individually):
  levels = rgb_levels(0)
  host, inputs = host_and_inputs(levels, 1, individually)
  out = torch_augment.augment_images(torch.as_tensor(levels), {k: torch.as_tensor(v) for k, v in inputs.items()})
  np.testing.assert_array_equal(out.numpy(), host)


@pytest.mark.parametrize("individually", [False, True])
def test_jax_step_augmentation_equals_the_host_to_float_rounding(individually):
  # XLA:CPU divides by a reciprocal and fuses multiply-adds, so a float32 value can round one ulp
  # away from NumPy's; where that lands on a uint8 floor the level differs by one.
  levels = rgb_levels(2, n=64, size=32)
  host, inputs = host_and_inputs(levels, 3, individually)
  out = np.asarray(jax.jit(jax_augment.augment_images)(levels, inputs))
  difference = np.abs(out - host)
  assert difference.max() <= 1 / 128 + 1e-6            # at most one level, after interpolation
  assert np.mean(difference > 1e-5) < 1e-3             # and only rarely
  assert np.mean(difference) < 1e-6


def test_the_three_implementations_flip_and_crop_alike():
  levels = rgb_levels(4, n=4)
  draws = draw_image_augmentations(np.random.default_rng(5), 4, min_crop_fraction=0.6)
  draws = dataclasses.replace(draws, flip=np.array([True, False, True, False]), hue=np.zeros(4),
                              brightness=np.zeros(4), contrast=np.ones(4))
  host = apply_image_augmentations(_normalise(levels), draws)
  inputs = image_augmentation_inputs(draws, 20, 20)
  from_jax = np.asarray(jax_augment.augment_images(levels, inputs))
  from_torch = torch_augment.augment_images(torch.as_tensor(levels),
                                            {k: torch.as_tensor(v) for k, v in inputs.items()}).numpy()
  np.testing.assert_allclose(from_jax, host, atol=1e-6)
  np.testing.assert_array_equal(from_torch, host)
  assert not np.allclose(host[0], host[1])   # the draws did crop and flip differently


def test_mod6_is_numpys_mod_over_its_range():
  x = np.concatenate([np.linspace(-5.999, 11.999, 20001, dtype=np.float32),
                      np.float32([-0.0, 0.0, 6.0, np.nextafter(np.float32(6), 0), -1e-8, 1e-8])])
  expected = np.mod(x, np.float32(6))
  np.testing.assert_array_equal(np.asarray(jax_augment._mod6(x)), expected)
  np.testing.assert_array_equal(torch_augment._mod6(torch.as_tensor(x)).numpy(), expected)


def test_levels_of_uint8_pixels_are_the_pixels():
  pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  np.testing.assert_array_equal(to_levels(_normalise(pixels)), pixels.astype(np.float32))
  assert _levels(pixels) is pixels
  floats = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
  np.testing.assert_array_equal(_levels(floats), to_levels(_normalise(floats)).astype(np.uint8))


@pytest.fixture(scope="module")
def rgb_dataset():
  rng = np.random.default_rng(6)
  return ClassDataset("rgb", rng.integers(0, 256, (6, 8, 16, 16, 3), dtype=np.uint8))


def test_sampler_leaves_the_augmentation_to_the_step(rgb_dataset):
  spec = EpisodeSpec(ways=3, support_size=3, query_size=6, image_size=16, image_augmentation=True)
  on_host = EpisodeSampler(rgb_dataset, np.arange(6), spec).batch(0, 4, [0, 1])
  in_step = EpisodeSampler(rgb_dataset, np.arange(6),
                           dataclasses.replace(spec, image_augmentation_in_step=True)).batch(0, 4, [0, 1])
  assert on_host.image_augmentation is None
  assert in_step.support_images.dtype == np.uint8 and in_step.query_images.shape == (2, 6, 16, 16, 3)
  np.testing.assert_array_equal(in_step.query_labels, on_host.query_labels)   # same draws
  batch = episode_arrays(in_step)
  assert batch["query_crop_rows"].shape == (2, 6, 16) and batch["support_flip"].shape == (2, 3)
  from_jax = jax.jit(jax_augment.augment_batch)(batch)
  from_torch = torch_augment.augment_batch(batch)
  for part in ("support", "query"):
    host = getattr(on_host, f"{part}_images")
    np.testing.assert_allclose(np.asarray(from_jax[f"{part}_images"]), host, atol=1 / 128 + 1e-6)
    np.testing.assert_array_equal(from_torch[f"{part}_images"].numpy(), host)
  assert set(from_jax) == {"support_images", "support_labels", "query_images", "query_labels"}
  joined = Episode.concatenate([in_step, in_step])
  assert joined.image_augmentation["query_hue_sixths"].shape == (4, 6) and joined.query_images.shape[0] == 4
  assert Episode.concatenate([on_host, on_host]).image_augmentation is None
  plain = {k: batch[k] for k in ("support_images", "support_labels")}
  assert jax_augment.augment_batch(plain) is plain and torch_augment.augment_batch(plain) is plain


def test_a_training_step_on_either_path_learns_the_same(rgb_dataset):
  """One JAX and one torch training step on the same episodes rendered on the host or in the step."""
  from configs import miniimagenet_1shot_v1
  from ht_jax.optimizer import make_optimizer
  from ht_jax.train import create_model, make_train_step
  from ht_torch.convert import jax_to_torch, load_into_torch
  from ht_torch.model.hypertransformer import HyperTransformer
  from ht_torch.optimizer import make_optimizer as make_torch_optimizer
  from ht_torch.train import train_step as torch_train_step
  config = miniimagenet_1shot_v1.get_config()
  config.data.image_size, config.data.samples_cnn = 16, 6
  config.model.num_layers = 1
  config.train.episodes_per_step = 2
  spec = EpisodeSpec.from_config(config.data, training=True)
  assert spec.image_augmentation and spec.image_augmentation_in_step   # the config's default
  batches = {in_step: episode_arrays(EpisodeSampler(rgb_dataset, np.arange(6), dataclasses.replace(
      spec, image_augmentation_in_step=in_step)).batch(0, 0, [0, 1])) for in_step in (False, True)}
  assert batches[True]["query_images"].dtype == np.uint8

  graphdef, params = create_model(config)
  tx = make_optimizer(config.train)
  step = make_train_step(graphdef, config, tx)
  fresh = lambda: jax.tree.map(lambda x: x.copy(), params)   # the step donates its parameters
  losses = [float(step(fresh(), tx.init(params), batches[in_step], jax.random.key(0))[2]["loss"])
            for in_step in (False, True)]
  assert losses[0] == pytest.approx(losses[1], rel=1e-4)

  torch_losses = []
  for in_step in (False, True):
    model = HyperTransformer(config)
    load_into_torch(model, jax_to_torch(params))   # the JAX model's parameters
    torch_losses.append(torch_train_step(model, *make_torch_optimizer(model.parameters(), config.train),
                                         config.model, batches[in_step])["loss"])
  assert torch_losses[0] == torch_losses[1]   # bit-identical images, so the same loss
  assert torch_losses[0] == pytest.approx(losses[0], rel=1e-4)   # and the frameworks agree


def test_a_config_saved_before_the_key_existed_still_loads():
  import ml_collections
  from configs.common import base_config
  data = base_config().data.to_dict()
  data["apply_image_augmentations"] = True
  del data["image_augmentation_in_step"]
  spec = EpisodeSpec.from_config(ml_collections.ConfigDict(data), training=True)
  assert spec.image_augmentation and spec.image_augmentation_in_step
