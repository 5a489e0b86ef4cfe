"""Augmentations of HT_REFERENCE 4.5 on small synthetic images."""

import dataclasses

import numpy as np
import pytest

from configs.common import base_config
from ht_data.augment import (AugmentationSettings, apply_augmentation, apply_image_augmentations,
                             augmentation_settings, draw_augmentation_params, draw_image_augmentations,
                             resize_bilinear, rotate_images, rotate_quarter_turns, shift_hue)


def test_settings_inherit_test_values():
  data = base_config().data
  data.random_rotate_by_90, data.per_label_augmentation = True, True
  data.angle_range, data.smooth_probability, data.test_contrast_probability = 30.0, 0.25, 0.0
  train, test = augmentation_settings(data, True), augmentation_settings(data, False)
  assert train.rotate_by_90 and train.per_label and train.contrast_probability == 0.5
  assert not test.rotate_by_90 and not test.per_label            # booleans: no fallback
  assert test.angle_range == 30.0 and test.smooth_probability == 0.25   # -1 inherits
  assert test.contrast_probability == 0.0                        # an explicit test value wins


def test_rot90_k_distribution_and_per_label_sharing():
  settings = AugmentationSettings(per_label=True, rotate_by_90=True)
  rng = np.random.default_rng(0)
  ks = np.concatenate([draw_augmentation_params(settings, 20, rng).rot90_k for _ in range(200)])
  np.testing.assert_allclose(np.bincount(ks, minlength=4) / ks.size, 0.25, atol=0.03)
  shared = draw_augmentation_params(dataclasses.replace(settings, per_label=False), 20, rng)
  assert len(set(shared.rot90_k)) == 1 and len(set(shared.alpha)) == 1


def test_probability_zero_never_fires_and_one_always_does():
  rng = np.random.default_rng(1)
  never = draw_augmentation_params(AugmentationSettings(per_label=True), 50, rng)
  assert not (never.rotate.any() or never.contrast.any() or never.smooth.any() or never.negate.any())
  always = draw_augmentation_params(AugmentationSettings(per_label=True, negate_probability=1.0), 50, rng)
  assert always.negate.all()
  assert np.all((always.alpha >= 0.5) & (always.alpha < 2.5))


def test_quarter_turns_are_counter_clockwise():
  image = np.zeros((2, 3, 3, 1), np.uint8)
  image[:, 0, 2] = 9                       # top-right corner
  turned = rotate_quarter_turns(image, np.array([1, 0]))
  assert turned[0, 0, 0, 0] == 9           # counter-clockwise: top-right goes to top-left
  np.testing.assert_array_equal(turned[1], image[1])
  rng = np.random.default_rng(2)
  images = rng.random((6, 5, 5, 2))
  turns = np.array([0, 1, 2, 3, 1, 3])
  got = rotate_quarter_turns(images, turns)
  for image, k, out in zip(images, turns, got):
    np.testing.assert_array_equal(out, np.rot90(image, k, axes=(0, 1)))


def test_angle_rotation_matches_rot90_at_90_degrees():
  image = np.random.default_rng(3).random((1, 7, 7, 1)).astype(np.float32)
  np.testing.assert_allclose(rotate_images(image, np.pi / 2), np.rot90(image, 1, axes=(1, 2)), atol=1e-5)
  np.testing.assert_allclose(rotate_images(image, 0.0), image, atol=1e-6)


def test_resize_bilinear_legacy_sampling():
  images = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  assert resize_bilinear(images, 4) is images
  np.testing.assert_array_equal(resize_bilinear(images, 2), images[:, ::2, ::2])   # src = 0, 2: no half-pixel
  up = resize_bilinear(np.array([[[[0.0], [2.0]]]], np.float32), (1, 4))
  np.testing.assert_array_equal(up[0, 0, :, 0], [0.0, 1.0, 2.0, 2.0])


def _params(settings, slots=1, **values):
  params = draw_augmentation_params(settings, slots, np.random.default_rng(0))
  return dataclasses.replace(params, **{k: np.asarray(v) for k, v in values.items()})


def test_contrast_smooth_negate_values():
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (3, 6, 6, 1)).astype(np.float32)
  slots = np.zeros(3, np.int64)
  contrast = AugmentationSettings(contrast_probability=1.0)
  out = apply_augmentation(images, slots, _params(contrast, contrast=[True], alpha=[2.0]), contrast)
  np.testing.assert_allclose(out.min(axis=(1, 2, 3)), 0, atol=1e-3)
  np.testing.assert_allclose(out.max(axis=(1, 2, 3)), 255, atol=1e-3)
  for before, after in zip(images.reshape(3, -1), out.reshape(3, -1)):   # tanh keeps the pixel order
    assert np.all(np.diff(after[np.argsort(before, kind="stable")]) >= -1e-3)
  spot = np.zeros((1, 5, 5, 1), np.float32)
  spot[0, 2, 2] = 90
  smooth = AugmentationSettings(smooth_probability=1.0)
  out = apply_augmentation(spot, slots[:1], _params(smooth, smooth=[True]), smooth)
  expected = np.zeros((5, 5))
  expected[1:4, 1:4] = 255
  np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-3)
  negate = AugmentationSettings(negate_probability=1.0)
  out = apply_augmentation(images, slots, _params(negate, negate=[True]), negate)
  np.testing.assert_array_equal(out, 255 - images)


def test_roll_and_resize():
  images = np.arange(100, dtype=np.float32).reshape(1, 10, 10, 1) + 1
  roll = AugmentationSettings(roll_probability=1.0)
  out = apply_augmentation(images, np.zeros(1, np.int64), _params(roll, roll=[True], roll_x=[0.25],
                                                                  roll_y=[-0.29]), roll)
  np.testing.assert_array_equal(out, np.roll(images, (2, -2), axis=(1, 2)))   # int() truncates
  resize = AugmentationSettings(resize_probability=1.0)
  out = apply_augmentation(images, np.zeros(1, np.int64), _params(resize, resize=[True], size=[-1.0]), resize)
  assert out.shape == images.shape
  # scale 0.7 -> 7x7 content centred with a zero border (1 pixel before, 2 after)
  assert out[0, 0].sum() == 0 and out[0, 8:].sum() == 0 and out[0, :, :1].sum() == 0
  assert np.all(out[0, 1:8, 1:8] > 0)


def test_slots_get_their_own_transform():
  images = np.full((4, 3, 3, 1), 10.0, np.float32)
  settings = AugmentationSettings(per_label=True, negate_probability=1.0)
  params = _params(settings, slots=2, negate=[True, False])
  out = apply_augmentation(images, np.array([0, 1, 0, 1]), params, settings)
  np.testing.assert_array_equal(out[:, 0, 0, 0], [245, 10, 245, 10])


def test_hue_shift_matches_colorsys():
  import colorsys
  planes = np.random.default_rng(5).random((4, 3, 3, 5)).astype(np.float32)   # [n, RGB, H, W]
  delta = np.array([0.0, 0.1, -0.2, 0.5])
  shifted = shift_hue(planes, delta)
  np.testing.assert_allclose(shifted[0], planes[0], atol=1e-6)
  for i, y, x in np.ndindex(4, 3, 5):
    hue, saturation, value = colorsys.rgb_to_hsv(*planes[i, :, y, x].astype(float))
    expected = colorsys.hsv_to_rgb((hue + delta[i]) % 1.0, saturation, value)
    np.testing.assert_allclose(shifted[i, :, y, x], expected, atol=1e-5)


def image_augment(images, seed, individually=False):
  rng = np.random.default_rng(seed)
  return apply_image_augmentations(images, draw_image_augmentations(rng, len(images), individually))


def test_image_augmentation_draws_per_batch_or_per_image():
  draws = draw_image_augmentations(np.random.default_rng(6), 8)
  assert np.ptp(draws.hue) == np.ptp(draws.brightness) == np.ptp(draws.contrast) == 0
  assert np.all((draws.crop_side >= 0.6) & (draws.crop_side <= 1.0))
  assert np.all((draws.crop_corner >= 0) & (draws.crop_corner + draws.crop_side[:, None] <= 1.0))
  grey = np.full((8, 6, 6, 3), 0.0, np.float32)   # hue and contrast cannot change a flat grey image
  shared = image_augment(grey, 6)
  individual = image_augment(grey, 6, individually=True)
  assert shared.shape == grey.shape and shared.dtype == np.float32
  assert np.ptp(shared) == 0 and shared[0, 0, 0, 0] != 0          # one brightness draw for the batch
  assert len(np.unique(individual[:, 0, 0, 0])) == 8              # one draw per image
  np.testing.assert_array_equal(shared, image_augment(grey, 6))


def test_image_augmentation_range_and_crop():
  rng = np.random.default_rng(7)
  images = (rng.integers(0, 256, (16, 12, 12, 3)) / 128.0 - 1).astype(np.float32)
  out = image_augment(images, 7)
  assert out.min() >= -1 and out.max() <= 255 / 128 - 1 + 1e-6
  # a horizontal ramp stays monotone along x after crop + resize (or reversed by a flip)
  ramp = np.broadcast_to((np.arange(12) * 20 / 128.0 - 1)[None, None, :, None], (16, 12, 12, 3))
  out = image_augment(np.ascontiguousarray(ramp, np.float32), 8)
  steps = np.diff(out[:, 6, :, 0], axis=1)
  assert np.all((steps >= -1e-6).all(axis=1) | (steps <= 1e-6).all(axis=1))
  assert np.any(steps > 0) and np.any(steps < 0)   # both flipped and unflipped images occur


def test_hue_shift_of_a_red_image():
  red = np.zeros((1, 2, 2, 3), np.float32)
  red[..., 0] = 255 / 128 - 1
  red[..., 1:] = -1
  draws = draw_image_augmentations(np.random.default_rng(0), 1, min_crop_fraction=1.0)
  draws = dataclasses.replace(draws, flip=np.array([False]), hue=np.array([1 / 3]), brightness=np.array([0.0]),
                              contrast=np.array([1.0]))
  out = apply_image_augmentations(red, draws)   # full-image crop: only the hue changes
  np.testing.assert_allclose(out[0, 0, 0], [-1, 255 / 128 - 1, -1], atol=1e-6)   # red -> green


@pytest.mark.parametrize("settings", [AugmentationSettings(), AugmentationSettings(rotate_by_90=True),
                                      AugmentationSettings(negate_probability=0.5)])
def test_output_is_a_float32_copy(settings):
  images = np.ones((2, 4, 4, 1), np.uint8)
  out = apply_augmentation(images, np.zeros(2, np.int64), _params(settings), settings)
  assert out.dtype == np.float32 and not np.shares_memory(out, images)
