"""Parameter-free building blocks (twin of ht_jax/model/layers.py). Tensors are NCHW here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ht_jax.model.plan import same_padding

CNN_LRELU_SLOPE = 0.01
TRANSFORMER_LRELU_SLOPE = 0.1
BN_EPSILON = 1e-3


def activation(name: str | None, slope: float):
  if name is None:
    return lambda x: x
  return {"relu": F.relu, "gelu": lambda x: F.gelu(x, approximate="none"),
          "lrelu": lambda x: F.leaky_relu(x, slope)}[name]


def dropout(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
  if rate <= 0 or generator is None:
    return x
  keep = torch.rand(x.shape, generator=generator) >= rate
  return torch.where(keep, x / (1.0 - rate), torch.zeros_like(x))


def pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
  """TF 'SAME' padding made explicit (asymmetric: the extra pixel goes after)."""
  top, bottom = same_padding(x.shape[2], kernel, stride)
  left, right = same_padding(x.shape[3], kernel, stride)
  return F.pad(x, (left, right, top, bottom))


def conv2d(x: torch.Tensor, kernel_matrix: torch.Tensor, kernel: int, stride: int, padding: str) -> torch.Tensor:
  """Convolution with a [k*k*C_in, C_out] kernel matrix (an HWIO kernel, flattened)."""
  c_in = x.shape[1]
  weight = kernel_matrix.reshape(kernel, kernel, c_in, -1).permute(3, 2, 0, 1)   # HWIO -> OIHW
  if padding == "SAME":
    x = pad_same(x, kernel, stride)
  return F.conv2d(x, weight, stride=stride)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
  return F.max_pool2d(x, 2)


def batch_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
  mean = x.mean(dim=(0, 2, 3), keepdim=True)
  var = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
  return (x - mean) * torch.rsqrt(var + BN_EPSILON) * scale[None, :, None, None] + bias[None, :, None, None]
