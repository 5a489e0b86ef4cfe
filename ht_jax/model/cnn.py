"""The generated CNN's layers (HT_REFERENCE 8.1-8.2).

A layer owns only what is learned rather than generated: BatchNorm gamma/beta, the kernel of a
conv layer that `number_of_trained_cnn_layers` keeps out of the generator, and the learned
offset of `add_trainable_weights`. Generated weights arrive as a dict at call time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ht_jax.model.layers import (CNN_LRELU_SLOPE, activation, batch_norm, can_fuse_max_pool, conv2d,
                                 conv2d_max_pool, max_pool_2x2)
from ht_jax.model.plan import ConvLayerPlan, LogitsLayerPlan

# Activations that commute with a max-pool: max(f(a), f(b)) = f(max(a, b)) for non-decreasing f.
MONOTONE_ACTIVATIONS = ("relu", "lrelu")


class ConvLayer(nnx.Module):
  """conv (no bias unless generated) -> activation -> optional 2x2 max-pool -> batch-stat BN
  (a monotone activation is applied after the pool: equal, and cheaper)."""

  def __init__(self, plan: ConvLayerPlan, activation_name: str, separate_evaluation_bn: bool,
               add_trainable_weights: bool, *, rngs: nnx.Rngs):
    self.plan = plan
    self.activation_name = activation_name
    shape = (plan.kernel, plan.kernel, plan.in_channels, plan.out_channels)   # HWIO
    glorot = nnx.initializers.glorot_uniform()
    if plan.generator is None:
      self.kernel = nnx.Param(glorot(rngs.params(), shape))
    elif add_trainable_weights:
      self.trainable_kernel = nnx.Param(glorot(rngs.params(), shape))
    if not plan.generate_bn:
      self.bn_scale = nnx.Param(jnp.ones((plan.out_channels,)))
      self.bn_bias = nnx.Param(jnp.zeros((plan.out_channels,)))
      if separate_evaluation_bn:   # the query pass normalises with its own gamma/beta
        self.eval_bn_scale = nnx.Param(jnp.ones((plan.out_channels,)))
        self.eval_bn_bias = nnx.Param(jnp.zeros((plan.out_channels,)))

  def weights(self, generated: dict[str, jax.Array] | None) -> dict[str, jax.Array]:
    """The layer's effective weights: generated, learned, or generated plus a learned offset."""
    p = self.plan
    if generated is None:
      return {"kernel": self.kernel[...].reshape(-1, p.out_channels)}
    weights = dict(generated)
    if hasattr(self, "trainable_kernel"):
      weights["generated_kernel"] = weights["kernel"]
      weights["kernel"] = weights["kernel"] + self.trainable_kernel[...].reshape(-1, p.out_channels)
    return weights

  def __call__(self, x: jax.Array, weights: dict[str, jax.Array], query_pass: bool = False) -> jax.Array:
    p = self.plan
    act = activation(self.activation_name, CNN_LRELU_SLOPE)
    # The original activates, then pools. A monotone activation gives the same values (and the
    # same gradients: the pool routes to the same first maximum) when applied after the pool, on a
    # map 4x smaller: one pass over the full-size conv output fewer, 1.06x the Omniglot step (README).
    # So does a per-channel bias; the band then pools as it convolves (conv2d_max_pool).
    pool_first = p.pool and self.activation_name in MONOTONE_ACTIVATIONS
    fused = pool_first and can_fuse_max_pool(x, p.kernel, p.stride, p.padding)
    with jax.named_scope("conv_max_pool" if fused else "conv"):
      y = (conv2d_max_pool(x, weights["kernel"], p.kernel, p.padding) if fused
           else conv2d(x, weights["kernel"], p.kernel, p.stride, p.padding))
    if "bias" in weights:   # per channel: before or after the pool, the same
      y = y + weights["bias"]
    if not pool_first:
      y = act(y)
    if p.pool and not fused:
      with jax.named_scope("max_pool"):
        y = max_pool_2x2(y)
    if pool_first:
      y = act(y)
    if p.generate_bn:
      scale, bias = weights["bn_scale"], weights["bn_bias"]
    elif query_pass and hasattr(self, "eval_bn_scale"):
      scale, bias = self.eval_bn_scale[...], self.eval_bn_bias[...]
    else:
      scale, bias = self.bn_scale[...], self.bn_bias[...]
    with jax.named_scope("batch_norm"):
      return batch_norm(y, scale, bias)


def logits_layer(plan: LogitsLayerPlan, x: jax.Array, weights: dict[str, jax.Array]) -> jax.Array:
  """Flatten in NHWC order (or global-average-pool) then the generated dense layer: [n, N]."""
  features = x.reshape(x.shape[0], -1) if plan.kind == "flatten" else x.mean(axis=(1, 2))
  return features @ weights["kernel"] + weights["bias"]
