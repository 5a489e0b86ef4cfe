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


BAND_WIDTH = 14            # output columns per block at most: (14 + k - 1) / k multiplications per useful one
# Block columns x output channels, the band matmul's width, to aim for: 4 columns at 8 channels.
BAND_OUTPUTS = 32
# ... where the band's own backward runs on an image (IMAGE_CHANNELS or fewer): 12 columns at 8.
IMAGE_BAND_OUTPUTS = 96


def band_block(out_width: int, out_channels: int, in_channels: int, band_backward: bool = True) -> int:
  """Output columns per block: about BAND_OUTPUTS / out_channels (at most BAND_WIDTH), evened out
  so that the last block is not mostly padding. A block of b columns multiplies (b + k - 1) / k
  times the useful FLOPs (the band's zeros) but copies each input line (b + k - 1) / b times into
  the windows: narrow blocks win once the contraction, k * (b + k - 1) * C, is long enough. On
  Omniglot's 8-channel layers blocks of 4 instead of 7-10 made the CNN's forward and backward
  1.2x faster and the step 1.06-1.08x (docs/speed_experiments.md). An image's contraction is
  short (k * span * 3), and the band's kernel gradient (windows^T g, contracted over every pixel)
  then wants wide blocks: IMAGE_BAND_OUTPUTS, unless the band runs only forward (`band_backward=False`: lax.conv takes
  the gradient, or it is the backward's own input-gradient convolution). Measured on the 2-core
  CPU only (README, Speed); no GPU was lent to measure one."""
  outputs = IMAGE_BAND_OUTPUTS if band_backward and in_channels <= IMAGE_CHANNELS else BAND_OUTPUTS
  target = max(1, min(BAND_WIDTH, outputs // out_channels))
  blocks = -(-out_width // target)
  return -(-out_width // blocks)


_ONE_EPISODE = contextvars.ContextVar("one_episode", default=False)
_FORWARD_ONLY = contextvars.ContextVar("forward_only", default=False)


@contextlib.contextmanager
def _declared(flag: contextvars.ContextVar):
  token = flag.set(True)
  try:
    yield
  finally:
    flag.reset(token)


def one_episode_trace():
  """Declares that what is traced inside runs for ONE episode, outside any vmap, so that conv2d
  may use lax.conv: with a single kernel XLA:CPU runs it as one multi-threaded convolution, faster
  than the band on wide maps (README, Speed). Numbers do not depend on it; vmapping what is
  traced inside stays correct, only slow (grouped convolutions)."""
  return _declared(_ONE_EPISODE)


def forward_only_trace():
  """Declares that nothing traced inside is differentiated (evaluation, the training monitor), so
  that a convolution followed by its 2x2 max-pool may be computed as sums of taps
  (_taps_conv_max_pool): correct under autodiff too, only slow there. Numbers do not depend on it."""
  return _declared(_FORWARD_ONLY)


def conv2d(x: jax.Array, kernel_matrix: jax.Array, kernel: int, stride: int, padding: str) -> jax.Array:
  """Convolution of [n, H, W, C] with a [k*k*C, O] kernel matrix (an HWIO kernel, flattened),
  written as ONE dense matmul. An output line is cut into blocks (band_block);
  each block reads its k input lines over the columns it needs, [k*span*C], and a banded matrix
  [k*span*C, block*O] built from the kernel maps them to the block's outputs.

  Why not lax.conv: every episode of a vmapped batch has its own generated kernel, which XLA:CPU
  lowers to grouped convolutions that run 20-40x slower per episode (one_episode_trace: lax.conv
  where the trace holds a single episode, but for images: IMAGE_CHANNELS). Why not im2col: its patch
  matrices are k*k times the input and the matmuls behind them have 8 output columns, so the
  step is memory bound. The band multiplies zeros, (block + k - 1) / k times the useful FLOPs,
  which is why blocks are capped (one band across an 84-pixel line would be 29x), but copies each
  input line only about k times and gives the matmul wide operands: 1.4x faster than im2col on
  the Omniglot CNN's forward+backward (README, Speed).
  """
  if _ONE_EPISODE.get():
    if x.shape[-1] <= IMAGE_CHANNELS:
      return _band_forward_lax_backward(x, kernel_matrix, kernel, stride, padding)
    return _lax_conv(x, kernel_matrix, kernel, stride, padding)
  pads = _pads(x, kernel, stride, padding)
  if stride == 1:   # the generated CNNs
    return _band_conv_stride1(x, kernel_matrix, kernel, pads)
  return _band_conv(x, kernel_matrix, kernel, stride, pads)


# On one episode, inputs with this many channels or fewer (images) take the band's forward: XLA:CPU's
# own convolution (Eigen) is slow with so few input channels, 18.6 against 11.8 ms for miniImageNet's
# 100 x 84x84x3 query batch, 1.42 against 0.33 ms for Omniglot's 60 x 28x28x1; its kernel gradient
# is the faster one (5.9 against 16 ms on 84x84x3) and stays (README, Speed).
IMAGE_CHANNELS = 4


def _lax_conv(x, kernel_matrix, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel_matrix.reshape(kernel, kernel, x.shape[-1], -1),
                                      (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _pads(x, kernel, stride, padding):
  h, w = x.shape[1:3]
  return ((same_padding(h, kernel, stride), same_padding(w, kernel, stride)) if padding == "SAME"
          else ((0, 0), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _band_forward_lax_backward(x, kernel_matrix, kernel, stride, padding):
  return _band_conv(x, kernel_matrix, kernel, stride, _pads(x, kernel, stride, padding), band_backward=False)


def _band_forward_lax_backward_forward(x, kernel_matrix, kernel, stride, padding):
  return _band_forward_lax_backward(x, kernel_matrix, kernel, stride, padding), (x, kernel_matrix)


def _band_forward_lax_backward_backward(kernel, stride, padding, residuals, g):
  _, vjp = jax.vjp(lambda x, k: _lax_conv(x, k, kernel, stride, padding), *residuals)
  return vjp(g)


_band_forward_lax_backward.defvjp(_band_forward_lax_backward_forward, _band_forward_lax_backward_backward)


def _band_conv(x, kernel_matrix, kernel, stride, pads, band_backward=True):
  return _band_conv_and_windows(x, kernel_matrix, kernel, stride, pads, band_backward)[0]


def _band_conv_and_windows(x, kernel_matrix, kernel, stride, pads, band_backward=True):
  windows, (ho, wo, block, span) = _band_windows(x, kernel, stride, pads, kernel_matrix.shape[-1], band_backward)
  out = windows @ _band(kernel_matrix, kernel, stride, x.shape[-1], span, block)
  return out.reshape(x.shape[0], ho, -1, kernel_matrix.shape[-1])[:, :, :wo], windows


def _out_size(x, kernel, stride, pads):
  """(Ho, Wo) of a convolution of x [n, H, W, C] with explicit pads ((top, bottom), (left, right))."""
  (top, bottom), (left, right) = pads
  return (x.shape[1] + top + bottom - kernel) // stride + 1, (x.shape[2] + left + right - kernel) // stride + 1


def _band_windows(x, kernel, stride, pads, out_channels, band_backward=True):
  """The matmul's left operand [n*Ho*blocks, k*span*C]: for each output line y and block b, the
  k input lines and `span` columns that block reads. Also (Ho, Wo, block, span)."""
  n, h, w, c = x.shape
  (top, bottom), (left, right) = pads
  ho, wo = _out_size(x, kernel, stride, pads)
  block = band_block(wo, out_channels, c, band_backward)
  blocks = -(-wo // block)
  span = (block - 1) * stride + kernel                       # input columns one block reads
  needed = (blocks * block - 1) * stride + kernel            # more than w + pads for a ragged last block
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, max(right, needed - w - left)), (0, 0)))   # one pass
  rows = stride * (ho - 1) + 1
  windows = jnp.stack([jnp.stack([x[:, i:i + rows:stride, b * block * stride:b * block * stride + span]
                                  for i in range(kernel)], axis=2) for b in range(blocks)], axis=2)
  return windows.reshape(n * ho * blocks, kernel * span * c), (ho, wo, block, span)


def _taps(kernel, stride, span, block, column_order=None):
  """taps[j, a, b] = 1 where block column b reads span column a through kernel column j; the
  block columns in `column_order` (default: left to right)."""
  columns = np.arange(block) if column_order is None else column_order
  return (np.arange(span)[None, :, None] == columns[None, None, :] * stride
          + np.arange(kernel)[:, None, None]).astype(np.float32)


def _band(kernel_matrix, kernel, stride, channels, span, block, column_order=None):
  """band[i, a, c, b, o] = kernel[i, a - b*stride, c, o] where 0 <= a - b*stride < k, else 0."""
  band = jnp.einsum("jab,ijco->iacbo", _taps(kernel, stride, span, block, column_order).astype(kernel_matrix.dtype),
                    kernel_matrix.reshape(kernel, kernel, channels, -1))
  return band.reshape(kernel * span * channels, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _band_conv_stride1(x, kernel_matrix, kernel, pads):
  """_band_conv at stride 1, with a backward that computes the input's gradient as a band
  convolution of the output's gradient with the flipped kernel. Autodiff instead multiplies the
  gradient by the band's transpose, a windows-sized array, and then adds each pixel's k*span/block
  copies back together (an overlap-add of strided passes): 1.05x the Omniglot 1-shot step at 16
  episodes per step (README, Speed)."""
  return _band_conv(x, kernel_matrix, kernel, 1, pads)


def _band_conv_stride1_forward(x, kernel_matrix, kernel, pads):
  out, windows = _band_conv_and_windows(x, kernel_matrix, kernel, 1, pads)
  return out, (windows, kernel_matrix)


def _band_conv_stride1_backward(kernel, pads, residuals, g):
  windows, kernel_matrix = residuals
  n, ho, wo, out_channels = g.shape
  channels = kernel_matrix.shape[0] // (kernel * kernel)
  block = windows.shape[1] // (kernel * channels) - kernel + 1   # the forward's: windows are [rows, k*span*C]
  blocks = windows.shape[0] // (n * ho)
  g_rows = jnp.pad(g, ((0, 0), (0, 0), (0, blocks * block - wo), (0, 0))).reshape(n * ho * blocks, block * out_channels)
  return _input_grad(g, kernel_matrix, kernel, pads), _kernel_grad(windows, g_rows, kernel, block)


def _input_grad(g, kernel_matrix, kernel, pads):
  """A stride-1 convolution's input gradient from its output's gradient g [n, Ho, Wo, O]:
  dx[y, x, c] = sum over i, j, o of g[y + top - i, x + left - j, o] kernel[i, j, c, o], the VALID
  band convolution of g, padded by k - 1 - pad on each side, with the flipped kernel
  kernel'[i, j, o, c] = kernel[k-1-i, k-1-j, c, o]."""
  out_channels = g.shape[-1]
  channels = kernel_matrix.shape[0] // (kernel * kernel)
  flipped = kernel_matrix.reshape(kernel, kernel, channels, out_channels)[::-1, ::-1].transpose(0, 1, 3, 2)
  return _band_conv(g, flipped.reshape(-1, channels), kernel, 1,
                    tuple((kernel - 1 - lo, kernel - 1 - hi) for lo, hi in pads), band_backward=False)


def _kernel_grad(windows, g_rows, kernel, block, column_order=None):
  """The kernel's gradient [k*k*C, O]: the band's (windows^T g_rows), folded back onto the k*k
  taps. g_rows [rows, block*O] is the output's gradient in the band's layout, whose block columns
  come in `column_order`."""
  out_channels = g_rows.shape[-1] // block
  span = block + kernel - 1
  channels = windows.shape[-1] // (kernel * span)
  band_grad = (windows.T @ g_rows).reshape(kernel, span, channels, block, out_channels)
  taps = _taps(kernel, 1, span, block, column_order).astype(g_rows.dtype)
  return jnp.einsum("jab,iacbo->ijco", taps, band_grad).reshape(-1, out_channels)


_band_conv_stride1.defvjp(_band_conv_stride1_forward, _band_conv_stride1_backward)


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


# --- Convolution and 2x2 max-pool in one band -----------------------------------------------------


def pooled_band_block(out_width: int, out_channels: int, in_channels: int) -> int:
  """band_block rounded up to an even width, so that every pool window lies inside one block."""
  block = band_block(out_width, out_channels, in_channels)
  return block + block % 2


def can_fuse_max_pool(x: jax.Array, kernel: int, stride: int, padding: str) -> bool:
  """conv2d_max_pool applies: stride 1, an even output, and the band path (outside
  one_episode_trace) or, forward only, an image's taps (_sums_of_taps)."""
  if stride != 1:
    return False
  if _ONE_EPISODE.get() and not _sums_of_taps(x):
    return False
  ho, wo = _out_size(x, kernel, 1, _pads(x, kernel, 1, padding))
  return ho % 2 == 0 and wo % 2 == 0


def conv2d_max_pool(x: jax.Array, kernel_matrix: jax.Array, kernel: int, padding: str) -> jax.Array:
  """max_pool_2x2(conv2d(x, kernel_matrix, kernel, 1, padding)) for an even output size
  (can_fuse_max_pool), equal in value and gradient, with the band's outputs laid out by pool corner.

  The band's rows (output lines) come even lines first, then odd ones, and its columns even
  columns of a block first, then odd ones, so the four corners of every pool window are four
  contiguous slabs of the matmul's output: the pool is a maximum over them (_pool_corners), and its
  backward writes the gradient straight into the band's layout, where the kernel's gradient reads
  it. Apart, the pool reduced a [.., 2, .., 2, C] view and its backward transposed the routed
  gradient back and padded it into band blocks, strided passes over the largest maps of the step
  (README, Speed). Inside forward_only_trace an image input takes _taps_conv_max_pool instead
  (_sums_of_taps)."""
  pads = _pads(x, kernel, 1, padding)
  if _sums_of_taps(x):
    return _taps_conv_max_pool(x, kernel_matrix, kernel, pads)
  return _conv_max_pool(x, kernel_matrix, kernel, pads)


def _sums_of_taps(x: jax.Array) -> bool:
  """An image (IMAGE_CHANNELS or fewer channels) inside forward_only_trace, on a CPU: the only
  backend where taps against the band were measured (no GPU was lent; a TPU's matrix unit would
  favour the band)."""
  return _FORWARD_ONLY.get() and x.shape[-1] <= IMAGE_CHANNELS and jax.default_backend() == "cpu"


def _taps_conv_max_pool(x, kernel_matrix, kernel, pads):
  """max_pool_2x2(conv) for the forward only: each pool corner's output is a sum of k*k*C products
  of a strided slice of the input (one channel, broadcast) with one tap's row of the kernel, and
  the pool the elementwise maximum of the four corners. XLA:CPU compiles that into one elementwise
  fusion over the pooled map, vectorised over the output channels: no windows copied, no zeros
  multiplied, nothing full-size written. With BatchNorm after it, miniImageNet's 100 x 84x84x3 -> 16
  query batch 2.4x faster than the band's forward and pool, Omniglot's 60 x 28x28x1 -> 8 under
  vmap 2.7x; evaluation 1.73x (miniImageNet), 1.29x and 1.12x (Omniglot 1- and 5-shot), the same
  accuracies (README, Speed). Images only: on 8 channels the layer alone ran 1.5x but the 5-shot
  evaluation no faster, for 9 s more compile; on one episode of 16 channels lax.conv is faster.
  Forward only: its autodiff, and a backward routed from the four corners, ran slower than the
  band's (XLA fuses the corners' sums into each consumer again)."""
  (top, bottom), (left, right) = pads
  ho, wo = _out_size(x, kernel, 1, pads)
  channels = x.shape[-1]
  taps = kernel_matrix.reshape(kernel * kernel, channels, -1)   # HWIO rows, tap by tap
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  corners = []
  for row in (0, 1):
    for col in (0, 1):
      lines = [x[:, row + i:row + i + ho - 1:2, col + j:col + j + wo - 1:2] for i in range(kernel) for j in range(kernel)]
      products = [line[..., c:c + 1] * tap[c] for line, tap in zip(lines, taps) for c in range(channels)]
      corners.append(functools.reduce(jnp.add, products))
  return jnp.maximum(jnp.maximum(corners[0], corners[1]), jnp.maximum(corners[2], corners[3]))


def _corner_order(block: int) -> np.ndarray:
  """Block columns in the band's column order: even ones, then odd ones."""
  return np.concatenate([np.arange(0, block, 2), np.arange(1, block, 2)])


def _conv_by_corner(x, kernel_matrix, kernel, pads):
  """The convolution's output [n, 2, Ho/2, blocks, 2, block/2, O] (line parity, line pair, block,
  column parity, column pair, channel) and the band's windows [n*Ho*blocks, k*span*C]."""
  n, h, w, c = x.shape
  (top, bottom), (left, right) = pads
  ho, wo = _out_size(x, kernel, 1, pads)
  out_channels = kernel_matrix.shape[-1]
  block = pooled_band_block(wo, out_channels, c)
  blocks = -(-wo // block)
  span = block + kernel - 1
  needed = blocks * block + kernel - 1
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, max(right, needed - w - left)), (0, 0)))
  lines = lambda parity, i: x[:, parity + i:parity + i + ho - 1:2]        # the i-th input line of each output line
  windows = jnp.stack([jnp.stack([jnp.stack([lines(parity, i)[:, :, b * block:b * block + span] for i in range(kernel)],
                                            axis=2) for b in range(blocks)], axis=2)
                       for parity in (0, 1)], axis=1)                       # [n, 2, Ho/2, blocks, k, span, C]
  windows = windows.reshape(n * ho * blocks, kernel * span * c)
  band = _band(kernel_matrix, kernel, 1, c, span, block, _corner_order(block))   # columns by corner
  out = (windows @ band).reshape(n, 2, ho // 2, blocks, 2, block // 2, out_channels)
  return out, windows


def _pool_corners(out):
  """The maximum of the four corners [n, Ho/2, blocks, block/2, O], as a reduce: XLA fuses an
  elementwise maximum of the four slabs into each of its consumers (the activation, BatchNorm's
  passes, the next band's padding, the backward), every one of them then reading the full-size
  conv output again; a reduce it computes once. 1.07x the Omniglot 1-shot step at 16 episodes per
  step, 1.13x with the backward reusing it (README, Speed)."""
  return out.max(axis=(1, 4))


def _crop(top, wo):
  """The pool's output [n, Ho/2, Wo/2, O] from _pool_corners' [n, Ho/2, blocks, block/2, O]."""
  n, h2, blocks, half, o = top.shape
  return top.reshape(n, h2, blocks * half, o)[:, :, :wo // 2]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_max_pool(x, kernel_matrix, kernel, pads):
  return _conv_max_pool_forward(x, kernel_matrix, kernel, pads)[0]   # unused residuals: dead code to XLA


def _conv_max_pool_forward(x, kernel_matrix, kernel, pads):
  out, windows = _conv_by_corner(x, kernel_matrix, kernel, pads)
  top = _pool_corners(out)
  return _crop(top, _out_size(x, kernel, 1, pads)[1]), (windows, kernel_matrix, out, top)


def _conv_max_pool_backward(kernel, pads, residuals, g):
  windows, kernel_matrix, out, top = residuals
  n, _, h2, blocks, _, half, out_channels = out.shape
  block = 2 * half
  # The first maximum of each window in row-major order (corners 00, 01, 10, 11), as torch routes
  # it; compared with the forward's own maximum (exact), so the comparison cannot disagree with it.
  corners = [out[:, i, :, :, j] for i in (0, 1) for j in (0, 1)]
  wo = 2 * g.shape[2]
  g = jnp.pad(g, ((0, 0), (0, 0), (0, blocks * half - g.shape[2]), (0, 0))).reshape(top.shape)
  taken, routed = jnp.zeros(top.shape, bool), []
  for corner in corners:
    first = (corner == top) & ~taken
    routed.append(jnp.where(first, g, 0.0))
    taken = taken | first
  g_out = jnp.stack([jnp.stack(routed[:2], axis=3), jnp.stack(routed[2:], axis=3)], axis=1)  # [n, 2, Ho/2, blocks, 2, half, O]
  kernel_grad = _kernel_grad(windows, g_out.reshape(windows.shape[0], block * out_channels), kernel, block,
                             _corner_order(block))
  # The input's gradient needs the conv output's gradient back in [n, Ho, Wo, O].
  g_conv = g_out.transpose(0, 2, 1, 3, 5, 4, 6).reshape(n, 2 * h2, blocks * block, out_channels)[:, :, :wo]
  return _input_grad(g_conv, kernel_matrix, kernel, pads), kernel_grad


_conv_max_pool.defvjp(_conv_max_pool_forward, _conv_max_pool_backward)

