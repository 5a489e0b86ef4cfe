"""Parameter-free building blocks shared by the model files: activations, the banded-matmul
convolution used for generated kernels, max-pool and batch-statistics BatchNorm."""

from __future__ import annotations

import contextlib
import contextvars
import functools

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


BAND_WIDTH = 14      # output columns per block at most: (14 + k - 1) / k multiplications per useful one
BAND_OUTPUTS = 96    # block columns x output channels, the matmul's width: 12 columns at 8 channels


def band_block(out_width: int, out_channels: int) -> int:
  """Output columns per block: about BAND_OUTPUTS / out_channels (at most BAND_WIDTH), evened out
  so that the last block is not mostly padding. Wider channels take narrower blocks: the band's
  zeros grow with the block, and the matmul is wide enough anyway: miniImageNet's 16 channels in
  blocks of 6 instead of 14 made its step 1.22x faster; Omniglot's 8 did not change (A/B, README)."""
  target = max(1, min(BAND_WIDTH, BAND_OUTPUTS // out_channels))
  blocks = -(-out_width // target)
  return -(-out_width // blocks)


_ONE_EPISODE = contextvars.ContextVar("one_episode", default=False)


@contextlib.contextmanager
def one_episode_trace():
  """Declares that what is traced inside runs for ONE episode, outside any vmap, so that conv2d
  may use lax.conv: with a single kernel XLA:CPU runs it as one multi-threaded convolution, faster
  than the band on wide maps (README, Speed). Numbers do not depend on it; vmapping what is
  traced inside stays correct, only slow (grouped convolutions)."""
  token = _ONE_EPISODE.set(True)
  try:
    yield
  finally:
    _ONE_EPISODE.reset(token)


def conv2d(x: jax.Array, kernel_matrix: jax.Array, kernel: int, stride: int, padding: str) -> jax.Array:
  """Convolution of [n, H, W, C] with a [k*k*C, O] kernel matrix (an HWIO kernel, flattened),
  written as ONE dense matmul. An output line is cut into blocks (band_block);
  each block reads its k input lines over the columns it needs, [k*span*C], and a banded matrix
  [k*span*C, block*O] built from the kernel maps them to the block's outputs.

  Why not lax.conv: every episode of a vmapped batch has its own generated kernel, which XLA:CPU
  lowers to grouped convolutions that run 20-40x slower per episode (one_episode_trace: lax.conv
  where the trace holds a single episode). Why not im2col: its patch
  matrices are k*k times the input and the matmuls behind them have 8 output columns, so the
  step is memory bound. The band multiplies zeros, (block + k - 1) / k times the useful FLOPs,
  which is why blocks are capped (one band across an 84-pixel line would be 29x), but copies each
  input line only about k times and gives the matmul wide operands: 1.4x faster than im2col on
  the Omniglot CNN's forward+backward (README, Speed).
  """
  if _ONE_EPISODE.get():
    return jax.lax.conv_general_dilated(x, kernel_matrix.reshape(kernel, kernel, x.shape[-1], -1),
                                        (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  n, h, w, c = x.shape
  pad_h, pad_w = ((same_padding(h, kernel, stride), same_padding(w, kernel, stride)) if padding == "SAME"
                  else ((0, 0), (0, 0)))
  ho, wo = (h + sum(pad_h) - kernel) // stride + 1, (w + sum(pad_w) - kernel) // stride + 1
  block = band_block(wo, kernel_matrix.shape[-1])
  blocks = -(-wo // block)
  span = (block - 1) * stride + kernel                       # input columns one block reads
  needed = (blocks * block - 1) * stride + kernel            # more than w + pad_w for a ragged last block
  x = jnp.pad(x, ((0, 0), pad_h, (pad_w[0], max(pad_w[1], needed - w - pad_w[0])), (0, 0)))   # one pass
  gather = _gather_windows if stride != 1 or block < kernel - 1 else _stride1_windows   # the generated CNNs: stride 1
  windows = gather(x, kernel, stride, ho, block, blocks)     # [n, ho, blocks, k, span, c]
  # band[i, a, c, b, o] = kernel[i, a - b*stride, c, o] where 0 <= a - b*stride < k, else 0.
  taps = np.arange(span)[None, :, None] == np.arange(block)[None, None, :] * stride + np.arange(kernel)[:, None, None]
  band = jnp.einsum("jab,ijco->iacbo", taps.astype(x.dtype), kernel_matrix.reshape(kernel, kernel, c, -1))
  out = windows.reshape(n * ho * blocks, kernel * span * c) @ band.reshape(kernel * span * c, -1)
  return out.reshape(n, ho, blocks * block, -1)[:, :, :wo]


def _gather_windows(x, kernel, stride, ho, block, blocks):
  """windows[n, y, b, i, a] = x[n, y*stride + i, b*block*stride + a]: for each output line y and
  block b, the k input lines and `span` columns that block reads."""
  span = (block - 1) * stride + kernel
  rows = stride * (ho - 1) + 1
  return jnp.stack([jnp.stack([x[:, i:i + rows:stride, b * block * stride:b * block * stride + span]
                               for i in range(kernel)], axis=2) for b in range(blocks)], axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _stride1_windows(x, kernel, stride, ho, block, blocks):
  """_gather_windows at stride 1 (needs block >= k - 1), with a backward that overlap-adds the
  copies of each input pixel in one pass. Autodiff of the slices pads every block's cotangent
  back to the full input and sums them, a full-size copy per block and kernel line: a quarter of
  the 84x84 training step."""
  return _gather_windows(x, kernel, stride, ho, block, blocks)


def _stride1_windows_forward(x, kernel, stride, ho, block, blocks):
  return _gather_windows(x, kernel, stride, ho, block, blocks), None


def _stride1_windows_backward(kernel, stride, ho, block, blocks, _, g):
  n, c = g.shape[0], g.shape[-1]
  h, w = ho + kernel - 1, blocks * block + kernel - 1            # conv2d pads x to exactly this
  g = g.transpose(0, 1, 3, 2, 4, 5)                              # [n, ho, k, blocks, span, c]
  # Columns: block b's first `block` columns start at b*block (blocks do not overlap there); its
  # last k-1 ("halo") columns are the next block's first ones, so they move one block right.
  main = g[:, :, :, :, :block].reshape(n, ho, kernel, blocks * block, c)
  halo = jnp.pad(g[:, :, :, :, block:], ((0, 0),) * 4 + ((0, block - kernel + 1), (0, 0)))
  halo = halo.reshape(n, ho, kernel, blocks * block, c)
  columns = jnp.pad(main, ((0, 0),) * 3 + ((0, block), (0, 0))) + jnp.pad(halo, ((0, 0),) * 3 + ((block, 0), (0, 0)))
  columns = columns[:, :, :, :w]                                 # [n, ho, k, w, c]
  # Lines: output line y read input lines y..y+k-1.
  return (sum(jnp.pad(columns[:, :, i], ((0, 0), (i, h - ho - i), (0, 0), (0, 0))) for i in range(kernel)),)


_stride1_windows.defvjp(_stride1_windows_forward, _stride1_windows_backward)


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
