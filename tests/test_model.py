"""The JAX model's pieces on tiny shapes: convolution, decoding order, transformer, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import omniglot_1shot_v1
from ht_jax.model import token_io
from ht_jax.model.hypertransformer import HyperTransformer
from ht_jax.model.layers import batch_norm, conv2d, max_pool_2x2
from ht_jax.model.plan import build_plan
from ht_jax.model.transformer import Transformer


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("size,stride,padding", [(28, 1, "SAME"), (28, 2, "SAME"), (21, 2, "SAME"),
                                                 (13, 2, "VALID"), (7, 1, "VALID"), (3, 1, "SAME"), (3, 1, "VALID"),
                                                 (84, 1, "SAME"), (37, 1, "VALID"), (45, 2, "SAME")])  # several bands, a ragged one
def test_banded_conv_and_its_gradients_match_lax_conv(size, stride, padding, channels):
  """Values, and (under jit, as in training) the gradients for the input and the kernel: stride 1
  goes through the hand-written backward (the input's gradient as a band convolution with the
  flipped kernel), stride 2 through autodiff."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, size, size, channels)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, channels, 5)).astype(np.float32)   # HWIO

  def lax_conv(x, kernel_matrix):
    return jax.lax.conv_general_dilated(x, kernel_matrix.reshape(3, 3, channels, 5), (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  banded = lambda x, kernel_matrix: conv2d(x, kernel_matrix, 3, stride, padding)
  args = (jnp.asarray(x), jnp.asarray(kernel.reshape(-1, 5)))
  expected, got = lax_conv(*args), banded(*args)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-4)
  upstream = jnp.asarray(rng.normal(size=expected.shape).astype(np.float32))
  grads = [jax.jit(jax.grad(lambda x, k: (f(x, k) * upstream).sum(), (0, 1)))(*args) for f in (lax_conv, banded)]
  for want, have in zip(*grads):
    np.testing.assert_allclose(have, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("channels", [1, 3, 8])
@pytest.mark.parametrize("size,stride,padding", [(28, 1, "SAME"), (21, 2, "SAME"), (13, 2, "VALID")])
def test_one_episode_trace_switches_to_lax_conv_with_equal_values_and_gradients(size, stride, padding, channels):
  """Inside one_episode_trace conv2d is lax.conv (one kernel, XLA's own convolution), outside the
  band again; both give the same numbers for the flattened HWIO kernel matrix. Inputs with image
  channels (IMAGE_CHANNELS or fewer) keep the band's forward inside too, with lax.conv's gradients."""
  from ht_jax.model.layers import IMAGE_CHANNELS, one_episode_trace
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, size, size, channels)).astype(np.float32))
  kernel_matrix = jnp.asarray(rng.normal(size=(3 * 3 * channels, 6)).astype(np.float32))
  conv = lambda: lambda x, k: conv2d(x, k, 3, stride, padding)   # a new function: no trace cache
  loss = lambda: lambda x, k: jnp.sum(jnp.sin(conv()(x, k)))
  with one_episode_trace():
    inside = jax.make_jaxpr(conv())(x, kernel_matrix)
    got = conv()(x, kernel_matrix)
    got_grads = jax.jit(jax.grad(loss(), (0, 1)))(x, kernel_matrix)
  outside = jax.make_jaxpr(conv())(x, kernel_matrix)
  primitives = lambda jaxpr: {e.primitive.name for e in jaxpr.jaxpr.eqns}
  assert ("conv_general_dilated" in primitives(inside)) == (channels > IMAGE_CHANNELS)
  assert "conv_general_dilated" not in primitives(outside)
  np.testing.assert_allclose(got, conv()(x, kernel_matrix), atol=1e-4)
  for have, want in zip(got_grads, jax.jit(jax.grad(loss(), (0, 1)))(x, kernel_matrix)):
    np.testing.assert_allclose(have, want, atol=2e-4, rtol=1e-4)


def test_band_blocks_narrow_with_channels_and_split_a_line_evenly():
  from ht_jax.model.layers import band_block, pooled_band_block
  assert band_block(14, 8, 8) == 4 and band_block(7, 8, 8) == 4   # 32 outputs / 8 channels, the last block ragged
  assert band_block(42, 16, 16) == 2 and band_block(7, 32, 32) == 1
  assert band_block(3, 8, 8) == 3                                  # a short line: one block
  # An image input whose band runs its own backward aims at 96 outputs ...
  assert band_block(84, 16, 3) == 6 and band_block(21, 16, 3) == 6  # 4 blocks of 6 (24 columns)
  assert band_block(28, 8, 1) == 10                                # 3 blocks of 10, not 12 + 12 + 4
  assert band_block(84, 1, 1) == 14                                # capped at BAND_WIDTH
  # ... and at 32 where lax.conv takes its gradient (or the band is a backward's own convolution).
  assert band_block(84, 16, 3, band_backward=False) == 2 and band_block(28, 8, 1, band_backward=False) == 4
  # Even, so that pool windows never straddle blocks.
  assert pooled_band_block(28, 8, 1) == 10 and pooled_band_block(14, 8, 8) == 4 and pooled_band_block(84, 16, 3) == 6
  assert pooled_band_block(14, 16, 16) == 2 and pooled_band_block(7, 8, 8) == 4


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("size,channels,out_channels,padding", [
    (28, 1, 8, "SAME"),    # Omniglot's first layer: blocks of 10, the last pooled column ragged
    (14, 8, 8, "SAME"),    # its second: 4 blocks of 4, the last pooled column ragged
    (10, 3, 5, "VALID"), (84, 3, 16, "SAME"), (16, 4, 6, "SAME")])
def test_conv_max_pool_equals_conv_then_pool(size, channels, out_channels, padding, ties):
  """conv2d_max_pool against max_pool_2x2(conv2d(...)): equal values, the same gradient for the
  input (exactly: the same first maximum of each window, with ties everywhere in the integer case)
  and the kernel's up to summation order, under jit and under vmap (per-episode kernels)."""
  from ht_jax.model.layers import can_fuse_max_pool, conv2d_max_pool, one_episode_trace
  rng = np.random.default_rng(size)
  draw = (lambda shape: rng.integers(-2, 2, shape)) if ties else (lambda shape: rng.normal(size=shape))
  x = jnp.asarray(draw((2, 3, size, size, channels)).astype(np.float32))
  kernels = jnp.asarray(draw((2, 9 * channels, out_channels)).astype(np.float32))
  assert can_fuse_max_pool(x[0], 3, 1, padding) and not can_fuse_max_pool(x[0, :, 1:, 1:], 3, 1, padding)
  with one_episode_trace():
    assert not can_fuse_max_pool(x[0], 3, 1, padding)        # lax.conv's path there
  separate = lambda x, k: max_pool_2x2(conv2d(x, k, 3, 1, padding))
  fused = lambda x, k: conv2d_max_pool(x, k, 3, padding)
  upstream = jnp.asarray(rng.normal(size=(2,) + separate(x[0], kernels[0]).shape).astype(np.float32))
  results = [jax.jit(jax.vmap(jax.value_and_grad(lambda x, k, u: (f(x, k) * u).sum(), (0, 1))))(x, kernels, upstream)
             for f in (separate, fused)]
  (want, (want_dx, want_dk)), (got, (got_dx, got_dk)) = results
  np.testing.assert_allclose(fused(x[0], kernels[0]), separate(x[0], kernels[0]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  if ties:   # integers: every sum is exact, so the routing must be too
    np.testing.assert_array_equal(got_dx, want_dx)
  np.testing.assert_allclose(got_dx, want_dx, rtol=1e-5, atol=1e-5)
  assert float(jnp.mean(got_dx != 0)) > 0.1
  np.testing.assert_allclose(got_dk, want_dk, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("size,channels,out_channels,padding", [
    (28, 1, 8, "SAME"), (14, 8, 8, "SAME"), (84, 3, 16, "SAME"), (10, 3, 5, "VALID"), (16, 4, 6, "SAME")])
def test_forward_only_conv_max_pool_sums_taps_with_equal_values(size, channels, out_channels, padding):
  """Inside forward_only_trace conv2d_max_pool on an image (IMAGE_CHANNELS or fewer channels) is
  sums of taps (no dot, no convolution in the program), for vmapped episodes and for one episode
  (where lax.conv is the path otherwise); more channels keep the band. Its values equal conv then
  pool up to summation order."""
  from ht_jax.model.layers import (IMAGE_CHANNELS, can_fuse_max_pool, conv2d_max_pool, forward_only_trace,
                                   one_episode_trace)
  rng = np.random.default_rng(size)
  x = jnp.asarray(rng.normal(size=(2, 3, size, size, channels)).astype(np.float32))
  kernels = jnp.asarray(rng.normal(size=(2, 9 * channels, out_channels)).astype(np.float32))
  want = jax.vmap(lambda x, k: max_pool_2x2(conv2d(x, k, 3, 1, padding)))(x, kernels)
  with forward_only_trace():
    assert can_fuse_max_pool(x[0], 3, 1, padding)
    with one_episode_trace():
      assert can_fuse_max_pool(x[0], 3, 1, padding) == (channels <= IMAGE_CHANNELS)
    taps = jax.jit(jax.vmap(lambda x, k: conv2d_max_pool(x, k, 3, padding)))
    primitives = str(jax.make_jaxpr(taps)(x, kernels))
    got = taps(x, kernels)
  assert ("dot_general" in primitives) == (channels > IMAGE_CHANNELS) and "conv_general_dilated" not in primitives
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if channels > IMAGE_CHANNELS:
    return
  with forward_only_trace(), one_episode_trace():   # one episode as evaluation traces it
    np.testing.assert_allclose(jax.jit(lambda x, k: conv2d_max_pool(x, k, 3, padding))(x[0], kernels[0]), want[0],
                               rtol=1e-5, atol=1e-5)


def test_max_pool_floors_and_batch_norm_uses_batch_statistics():
  x = jnp.arange(2 * 7 * 7 * 1, dtype=jnp.float32).reshape(2, 7, 7, 1)
  pooled = max_pool_2x2(x)
  assert pooled.shape == (2, 3, 3, 1) and pooled[0, 0, 0, 0] == x[0, 1, 1, 0]
  y = batch_norm(jax.random.normal(jax.random.key(0), (8, 4, 4, 3)) * 5 + 2, jnp.ones(3), jnp.zeros(3))
  np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1, atol=2e-3)   # eps = 1e-3 shrinks it slightly


def test_max_pool_gradient_goes_to_the_first_maximum_as_in_torch():
  """Odd sizes, many ties (constant windows, as a blank background gives), under jit: the same
  values and the same gradient as torch's max_pool2d."""
  import torch
  rng = np.random.default_rng(0)
  x = rng.integers(0, 3, (2, 7, 9, 3)).astype(np.float32)          # values 0..2: ties everywhere
  upstream = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  pooled, grad = jax.jit(lambda x: jax.value_and_grad(lambda x: (max_pool_2x2(x) * upstream).sum())(x))(x)
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
  ty = torch.nn.functional.max_pool2d(tx, 2)
  (ty * torch.from_numpy(upstream).permute(0, 3, 1, 2)).sum().backward()
  np.testing.assert_array_equal(np.asarray(max_pool_2x2(x)), ty.detach().permute(0, 2, 3, 1).numpy())
  np.testing.assert_array_equal(np.asarray(grad), tx.grad.permute(0, 2, 3, 1).numpy())
  assert float(pooled) == pytest.approx(float((ty.detach() * torch.from_numpy(upstream).permute(0, 3, 1, 2)).sum()), rel=1e-6)


@pytest.mark.parametrize("size", [9, 10])   # odd: conv, then max_pool_2x2; even: conv2d_max_pool
@pytest.mark.parametrize("name", ["relu", "lrelu"])
def test_activation_after_the_pool_equals_the_originals_activation_before_it(name, size):
  """ConvLayer pools before a monotone activation; the original activates first. Equal values and
  equal gradients for the input and the kernel, under jit, with ties in the pool windows (integer
  inputs) and windows whose maximum is negative or zero."""
  from ht_jax.model.cnn import ConvLayer
  from ht_jax.model.layers import CNN_LRELU_SLOPE, activation
  plan = build_plan(omniglot_1shot_v1.get_config()).conv_layers[1]   # 3x3, 8 -> 8, SAME, pooled
  layer = ConvLayer(plan, name, False, False, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(-2, 2, (4, size, size, 8)).astype(np.float32))
  kernel = jnp.asarray(rng.integers(-1, 2, (72, 8)).astype(np.float32))
  upstream = rng.normal(size=(4, size // 2, size // 2, 8)).astype(np.float32)

  def original_order(x, k):
    y = max_pool_2x2(activation(name, CNN_LRELU_SLOPE)(conv2d(x, k, 3, 1, "SAME")))
    return batch_norm(y, layer.bn_scale[...], layer.bn_bias[...])

  results = [jax.jit(jax.value_and_grad(lambda x, k: (f(x, k) * upstream).sum(), (0, 1)))(x, kernel)
             for f in (original_order, lambda x, k: layer(x, {"kernel": k}))]
  (want, want_grads), (got, got_grads) = results
  assert float(jnp.sum(got_grads[0] != 0)) > 0.2 * x.size     # the pool routes to many inputs
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for have, expected in zip(got_grads, want_grads):
    np.testing.assert_allclose(have, expected, atol=1e-5, rtol=1e-5)


def test_decode_conv_output_allocation_is_hwio_row_major():
  c = omniglot_1shot_v1.get_config()
  c.model.lw_generate_bias = c.model.lw_generate_bn = True
  layer = build_plan(c).conv_layers[1]                      # 3x3x8 -> 8, block 72 + 1 + 2
  slices = jnp.arange(8 * 75, dtype=jnp.float32).reshape(8, 75)
  w = token_io.decode_conv(layer, slices)
  hwio = w["kernel"].reshape(3, 3, 8, 8)
  # HT_REFERENCE 8.1: W[o, c, i, j] (OIHW) = slice_o[(i*k + j)*C_in + c]
  for o, cin, i, j in [(0, 0, 0, 0), (5, 3, 2, 1), (7, 7, 1, 2)]:
    assert hwio[i, j, cin, o] == slices[o, (i * 3 + j) * 8 + cin]
  np.testing.assert_array_equal(w["bias"], slices[:, 72])
  np.testing.assert_array_equal(w["bn_scale"], slices[:, 73])
  np.testing.assert_array_equal(w["bn_bias"], slices[:, 74])


def test_decode_spatial_and_logits():
  c = omniglot_1shot_v1.get_config()
  c.model.lw_weight_allocation = "spatial"
  plan = build_plan(c)
  layer = plan.conv_layers[1]
  slices = jnp.arange(9 * 64, dtype=jnp.float32).reshape(9, 64)   # token p = kh*3+kw holds (C_in, C_out)
  hwio = token_io.decode_conv(layer, slices)["kernel"].reshape(3, 3, 8, 8)
  assert hwio[2, 1, 3, 5] == slices[2 * 3 + 1, 3 * 8 + 5]
  logits = plan.logits_layer                                       # 20 tokens, block 8 + 1
  slices = jnp.arange(20 * 9, dtype=jnp.float32).reshape(20, 9)
  w = token_io.decode_logits(logits, slices)
  assert w["kernel"].shape == (8, 20) and w["kernel"][3, 7] == slices[7, 3]
  np.testing.assert_array_equal(w["bias"], slices[:, 8])


def test_transformer_mask_blocks_attention_to_masked_keys():
  t = Transformer(8, 8, 8, 8, num_layers=2, heads=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (5, 8))
  mask = jnp.array([0, 0, 0, 1, 1], jnp.float32)
  y1 = t(x, mask)
  y2 = t(x.at[3:].set(100.0), mask)          # changing masked tokens must not change the others
  np.testing.assert_allclose(y1[:3], y2[:3], atol=1e-5)
  assert not np.allclose(t(x)[:3], y1[:3], atol=1e-4)


@pytest.mark.parametrize("dropout_rate", [0.0, 0.5])
def test_transformer_output_rows_are_the_full_outputs_first_rows(dropout_rate):
  """output_rows: the last layer computes only those tokens (its feed-forward is a [rows, inner]
  matmul), equal to the full transformer's first rows; under dropout the full layer runs, so the
  dropout masks (and the numbers) stay those of the full transformer."""
  t = Transformer(12, 12, 12, 20, num_layers=2, heads=2, dropout_rate=dropout_rate, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (7, 12))
  mask = jnp.array([0, 0, 0, 0, 1, 0, 1], jnp.float32)
  key = jax.random.key(2)
  full, first = t(x, mask, key), t(x, mask, key, output_rows=3)
  assert first.shape == (3, 12)
  np.testing.assert_allclose(first, full[:3], atol=1e-6)
  hidden_shapes = {tuple(e.outvars[0].aval.shape) for e in jax.make_jaxpr(lambda x: t(x, mask, key, output_rows=3))(x).eqns
                   if e.primitive.name == "dot_general"}
  assert ((3, 20) in hidden_shapes) == (dropout_rate == 0)


def tiny_model(**model_overrides):
  c = omniglot_1shot_v1.get_config("tiny")
  c.data.num_labels, c.data.samples_transformer, c.data.samples_cnn = 5, 5, 10
  for k, v in model_overrides.items():
    c.model[k] = v
  return c, HyperTransformer(c, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("overrides", [
    {}, {"cnn_model_name": "3-layer", "stride": 2}, {"cnn_model_name": "4-layer", "stride": 1},
    {"number_of_trained_cnn_layers": 4}, {"number_of_trained_cnn_layers": -1},
    {"cnn_activation": "lrelu", "transformer_nonlinearity": "lrelu"},
    {"lw_generate_bias": True, "lw_generate_bn": True}, {"lw_weight_allocation": "spatial"},
    {"shared_feature_extractor": "none", "num_layerwise_features": 0},
    {"logits_feature_extractor": "mix"}, {"add_trainable_weights": True},
    {"separate_evaluation_bn_vars": True}, {"transformer_activation": "sigmoid"},
])
def test_model_variants_produce_finite_logits_that_depend_on_the_support_set(overrides):
  c, model = tiny_model(**overrides)
  rng = np.random.default_rng(0)
  sx = jnp.asarray(rng.normal(size=(5, 28, 28, 1)), jnp.float32)
  qx = jnp.asarray(rng.normal(size=(10, 28, 28, 1)), jnp.float32)
  labels = jnp.arange(5)
  logits = model(sx, labels, qx)
  assert logits.shape == (10, 5) and bool(jnp.isfinite(logits).all())
  # Other labels for the same support images generate a different CNN.
  assert not np.allclose(logits, model(sx, labels.at[0].set(1), qx), atol=1e-5)


def test_support_permutation_invariance():
  """No positional encoding: shuffling the support set (with its labels) changes nothing."""
  _, model = tiny_model()
  rng = np.random.default_rng(1)
  sx = jnp.asarray(rng.normal(size=(5, 28, 28, 1)), jnp.float32)
  qx = jnp.asarray(rng.normal(size=(10, 28, 28, 1)), jnp.float32)
  perm = jnp.array([3, 0, 4, 1, 2])
  np.testing.assert_allclose(model(sx, jnp.arange(5), qx), model(sx[perm], jnp.arange(5)[perm], qx),
                             atol=1e-4)
