"""The ImageNet-style augmentation (HT_REFERENCE 4.5.3) inside the jitted step.

The host's sampler draws the augmentation and sends uint8 levels plus the draws
(ht_data.augment.image_augmentation_inputs); the step applies them here, on the accelerator. It is
ht_data.augment._augment_image_chunk op for op (the same float32 operations in the same order),
except the contrast mean, here exact over the integer levels. The images match the host path's to
float rounding: XLA:CPU divides by a reciprocal and fuses multiply-adds, so a value can round one
ulp away, and a pixel one uint8 level where that lands on a floor (tests/test_augment.py).
Moving it off the host: on 84x84 RGB episodes the NumPy augmentation was 60 ms of the sampler's
69 ms per episode, and a host that spends that on every episode cannot keep an accelerator fed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ht_data.augment import IMAGE_AUGMENTATION_INPUTS


def _to_uint8_levels(values):
  """float 0..1 -> the integer levels TF's convert_image_dtype(saturate=True) would store."""
  return jnp.floor(jnp.clip(values * jnp.float32(255.5), 0, 255))


def _mod6(x):
  """x mod 6 exactly as np.mod computes it (fmod, then + 6 where negative), for x in (-6, 12):
  there fmod(x, 6) is x or x - 6, and x - 6 is exact (Sterbenz). XLA:CPU's fmod is a scalar
  library call per element: 14 ms of the 22 ms this augmentation took on a 105-image episode."""
  return jnp.where(x < 0, x + 6, jnp.where(x >= 6, x - 6, x))


def _shift_hue(pixels, hue_sixths):
  """ht_data.augment.shift_hue on channels-last [n, H, W, 3] in 0..1, hue shift in sixths [n]."""
  r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  is_r, is_g = value == r, value == g
  sector = jnp.where(is_r, g - b, jnp.where(is_g, b - r, r - g))
  sector = sector / jnp.where(chroma > 0, chroma, 1)
  sector = sector + jnp.where(is_r, 0, jnp.where(is_g, 2, 4)).astype(pixels.dtype)
  sector = sector + hue_sixths[:, None, None]   # in [-1, 5] + [-1.2, 1.2]: _mod6's range below
  channels = []
  for n in (5, 3, 1):
    k = _mod6(sector + n)
    k = jnp.clip(jnp.minimum(k, 4 - k), 0, 1)
    channels.append(value - k * chroma)
  return jnp.stack(channels, axis=-1)


def _interpolate_rows(images, low, weight):
  """Linear interpolation of whole rows: out[i, j] = images[i] between rows low[i, j] and the next."""
  high = jnp.minimum(low + 1, images.shape[1] - 1)
  take = jax.vmap(lambda image, rows: image[rows])
  top = take(images, low)
  return top + (take(images, high) - top) * weight[:, :, None, None]


def augment_images(levels, inputs: dict):
  """Flip, hue, brightness, contrast and crop of uint8 levels [n, H, W, 3]; returns normalised
  float32 images (x/128 - 1). `inputs`: image_augmentation_inputs, each with leading axis n."""
  per_image = (slice(None), None, None, None)
  levels = levels.astype(jnp.float32)
  levels = jnp.where(inputs["flip"][per_image], levels[:, :, ::-1], levels)
  levels = _to_uint8_levels(_shift_hue(levels / jnp.float32(255), inputs["hue_sixths"]))
  levels = _to_uint8_levels(levels / jnp.float32(255) + inputs["brightness"][per_image])
  pixels = levels / jnp.float32(255)
  # The mean of each channel: the integer levels sum exactly, and one division rounds it once.
  count = levels.shape[1] * levels.shape[2]
  total = levels.astype(jnp.int32).sum(axis=(1, 2), keepdims=True).astype(jnp.float32)
  mean = total / jnp.float32(255 * count)
  levels = _to_uint8_levels((pixels - mean) * inputs["contrast"][per_image] + mean)
  images = levels / jnp.float32(128) - jnp.float32(1)
  images = _interpolate_rows(images, inputs["crop_rows"], inputs["crop_row_weights"])
  # Columns as rows of the transpose, as the NumPy path does: 1.15x faster here than gathering
  # columns, whose gathers XLA fuses with everything before them.
  columns = _interpolate_rows(images.transpose(0, 2, 1, 3), inputs["crop_cols"], inputs["crop_col_weights"])
  return columns.transpose(0, 2, 1, 3)


_BATCH_KEYS = {f"{part}_{k}" for part in ("support", "query") for k in IMAGE_AUGMENTATION_INPUTS}


def augment_batch(batch: dict) -> dict:
  """A step's batch with its support and query images augmented, when the sampler left that to the
  step (Episode.image_augmentation); otherwise the batch itself. Arrays are [B, n, ...]."""
  if "support_flip" not in batch:
    return batch
  out = {k: v for k, v in batch.items() if k not in _BATCH_KEYS}
  for part in ("support", "query"):
    images = batch[f"{part}_images"]
    leading = images.shape[:2]
    flat = {k: batch[f"{part}_{k}"].reshape((-1,) + batch[f"{part}_{k}"].shape[2:])
            for k in IMAGE_AUGMENTATION_INPUTS}
    out[f"{part}_images"] = augment_images(images.reshape((-1,) + images.shape[2:]), flat).reshape(
        leading + images.shape[2:])
  return out
