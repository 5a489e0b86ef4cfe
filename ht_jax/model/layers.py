"""Parameter-free building blocks shared by the model files: activations, the banded-matmul
convolution used for generated kernels, max-pool and batch-statistics BatchNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ht_jax.model.plan import same_padding

CNN_LRELU_SLOPE = 0.01          # HT_REFERENCE 11.4: the CNN's leaky ReLU
TRANSFORMER_LRELU_SLOPE = 0.1   # ... and the transformer's
BN_EPSILON = 1e-3


def activation(name: str | None, slope: float):
  if name is None:
    return lambda x: x
  return {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
          "lrelu": lambda x: jax.nn.leaky_relu(x, slope)}[name]


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout with an explicit key; the identity when rate is 0 or key is None."""
  if rate <= 0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


BAND_WIDTH = 14   # output columns per band: at most (14 + k - 1) / k multiplications per useful one


def conv2d(x: jax.Array, kernel_matrix: jax.Array, kernel: int, stride: int, padding: str) -> jax.Array:
  """Convolution of [n, H, W, C] with a [k*k*C, O] kernel matrix (an HWIO kernel, flattened),
  written as ONE dense matmul. An output line is cut into blocks of up to BAND_WIDTH columns;
  each block reads its k input lines over the columns it needs, [k*span*C], and a banded matrix
  [k*span*C, block*O] built from the kernel maps them to the block's outputs.

  Why not lax.conv: every episode of a vmapped batch has its own generated kernel, which XLA:CPU
  lowers to grouped convolutions that run 20-40x slower per episode. Why not im2col: its patch
  matrices are k*k times the input and the matmuls behind them have 8 output columns, so the
  step is memory bound. The band multiplies zeros, (block + k - 1) / k times the useful FLOPs,
  which is why blocks are capped (one band across an 84-pixel line would be 29x), but copies each
  input line only about k times and gives the matmul wide operands: 1.4x faster than im2col on
  the Omniglot CNN's forward+backward (README, Speed).
  """
  n, h, w, c = x.shape
  if padding == "SAME":
    x = jnp.pad(x, ((0, 0), same_padding(h, kernel, stride), same_padding(w, kernel, stride), (0, 0)))
  ho, wo = (x.shape[1] - kernel) // stride + 1, (x.shape[2] - kernel) // stride + 1
  block = min(wo, BAND_WIDTH)
  blocks = -(-wo // block)
  span = (block - 1) * stride + kernel                       # input columns one block reads
  needed = (blocks * block - 1) * stride + kernel
  x = jnp.pad(x, ((0, 0), (0, 0), (0, max(0, needed - x.shape[2])), (0, 0)))   # a ragged last block
  lines = jnp.stack([x[:, i:i + stride * (ho - 1) + 1:stride] for i in range(kernel)], axis=2)  # [n, ho, k, W, c]
  windows = jnp.stack([lines[:, :, :, b * block * stride:b * block * stride + span] for b in range(blocks)],
                      axis=2)                                # [n, ho, blocks, k, span, c]
  # band[i, a, c, b, o] = kernel[i, a - b*stride, c, o] where 0 <= a - b*stride < k, else 0.
  taps = np.arange(span)[None, :, None] == np.arange(block)[None, None, :] * stride + np.arange(kernel)[:, None, None]
  band = jnp.einsum("jab,ijco->iacbo", taps.astype(x.dtype), kernel_matrix.reshape(kernel, kernel, c, -1))
  out = windows.reshape(n * ho * blocks, kernel * span * c) @ band.reshape(kernel * span * c, -1)
  return out.reshape(n, ho, blocks * block, -1)[:, :, :wo]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 / stride-2 valid max-pool (odd sizes floor, as TF's).

  The gradient goes to the first maximal entry of each window in row-major order, as in torch.
  The backward is written by hand: the gradients of reduce-max and of `maximum` compare the input
  with the output for equality, and under jit XLA:CPU may compute the two in separate fusions that
  round differently; the gradient is then dropped (or 0/0 = NaN for reduce-max). Ties are common
  here: a constant background gives equal activations across a whole window. The forward is a
  plain reduce-max (exact, so any formulation gives the same values); only the backward looks for
  the first maximum, in the saved input itself, so the comparison cannot disagree with itself.
  """
  n, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool_forward(x):
  return max_pool_2x2(x), x


def _max_pool_backward(x, g):
  n, h, w, c = x.shape
  h2, w2 = h // 2 * 2, w // 2 * 2
  corners = jnp.stack([x[:, i:h2:2, j:w2:2, :] for i in (0, 1) for j in (0, 1)], axis=-1)
  first_max = jnp.argmax(corners, axis=-1)[..., None] == jnp.arange(4)     # [n, h/2, w/2, c, 4]
  routed = jnp.where(first_max, g[..., None], 0.0).reshape(n, h2 // 2, w2 // 2, c, 2, 2)
  dx = routed.transpose(0, 1, 4, 2, 5, 3).reshape(n, h2, w2, c)            # corner (i, j) -> (2y+i, 2x+j)
  return (jnp.pad(dx, ((0, 0), (0, h - h2), (0, w - w2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
  """BatchNorm with the statistics of this batch, always (HT_REFERENCE 8.1): biased variance."""
  mean = x.mean(axis=(0, 1, 2))
  var = jnp.square(x - mean).mean(axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + BN_EPSILON) * scale + bias
