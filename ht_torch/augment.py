"""The ImageNet-style augmentation in the torch step (twin of ht_jax/augment.py).

The sampler sends uint8 levels plus the draws (ht_data.augment.image_augmentation_inputs); this
applies them with torch ops, on the step's device: ht_data.augment._augment_image_chunk op for op,
with the contrast mean exact over the integer levels as in ht_jax.augment.
"""

from __future__ import annotations

import numpy as np
import torch

from ht_data.augment import IMAGE_AUGMENTATION_INPUTS


def _to_uint8_levels(values: torch.Tensor) -> torch.Tensor:
  """float 0..1 -> the integer levels TF's convert_image_dtype(saturate=True) would store."""
  return torch.floor(torch.clamp(values * 255.5, 0, 255))


def _mod6(x: torch.Tensor) -> torch.Tensor:
  """x mod 6 exactly as np.mod computes it, for x in (-6, 12) (see ht_jax.augment._mod6)."""
  return torch.where(x < 0, x + 6, torch.where(x >= 6, x - 6, x))


def _shift_hue(pixels: torch.Tensor, hue_sixths: torch.Tensor) -> torch.Tensor:
  """ht_data.augment.shift_hue on channels-last [n, H, W, 3] in 0..1, hue shift in sixths [n]."""
  r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
  value = torch.maximum(torch.maximum(r, g), b)
  chroma = value - torch.minimum(torch.minimum(r, g), b)
  is_r, is_g = value == r, value == g
  sector = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
  sector = sector / torch.where(chroma > 0, chroma, torch.ones_like(chroma))
  sector = sector + torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0)).to(pixels.dtype)
  sector = sector + hue_sixths[:, None, None]   # in [-1, 5] + [-1.2, 1.2]: _mod6's range below
  channels = []
  for n in (5, 3, 1):
    k = _mod6(sector + n)
    k = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    channels.append(value - k * chroma)
  return torch.stack(channels, dim=-1)


def _interpolate_rows(images: torch.Tensor, low: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
  """Linear interpolation of whole rows: out[i, j] = images[i] between rows low[i, j] and the next."""
  high = torch.clamp(low + 1, max=images.shape[1] - 1)
  batch = torch.arange(images.shape[0], device=images.device)[:, None]
  top = images[batch, low]
  return top + (images[batch, high] - top) * weight[:, :, None, None]


def augment_images(levels: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
  """Flip, hue, brightness, contrast and crop of uint8 levels [n, H, W, 3]; returns normalised
  float32 images (x/128 - 1). `inputs`: image_augmentation_inputs, each with leading axis n."""
  per_image = (slice(None), None, None, None)
  levels = levels.to(torch.float32)
  levels = torch.where(inputs["flip"][per_image], levels.flip(2), levels)
  levels = _to_uint8_levels(_shift_hue(levels / 255, inputs["hue_sixths"]))
  levels = _to_uint8_levels(levels / 255 + inputs["brightness"][per_image])
  pixels = levels / 255
  count = levels.shape[1] * levels.shape[2]
  total = levels.to(torch.int64).sum(dim=(1, 2), keepdim=True).to(torch.float32)
  mean = total / float(255 * count)
  levels = _to_uint8_levels((pixels - mean) * inputs["contrast"][per_image] + mean)
  images = levels / 128 - 1
  images = _interpolate_rows(images, inputs["crop_rows"].long(), inputs["crop_row_weights"])
  columns = _interpolate_rows(images.transpose(1, 2), inputs["crop_cols"].long(), inputs["crop_col_weights"])
  return columns.transpose(1, 2).contiguous()   # the model expects NHWC memory, not a transposed view


_BATCH_KEYS = {f"{part}_{k}" for part in ("support", "query") for k in IMAGE_AUGMENTATION_INPUTS}


def augment_batch(batch: dict, device: torch.device | str = "cpu") -> dict:
  """A step's batch with its support and query images augmented (tensors on `device`), when the
  sampler left that to the step (Episode.image_augmentation); otherwise the batch itself."""
  if "support_flip" not in batch:
    return batch
  out = {k: v for k, v in batch.items() if k not in _BATCH_KEYS}
  for part in ("support", "query"):
    images = torch.as_tensor(np.asarray(batch[f"{part}_images"]), device=device)
    leading = images.shape[:2]
    flat = {k: torch.as_tensor(np.asarray(batch[f"{part}_{k}"]), device=device).flatten(0, 1)
            for k in IMAGE_AUGMENTATION_INPUTS}
    out[f"{part}_images"] = augment_images(images.flatten(0, 1), flat).reshape(leading + images.shape[2:])
  return out
