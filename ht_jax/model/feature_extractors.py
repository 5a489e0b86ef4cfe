"""Feature extractors that feed the generators (HT_REFERENCE 6.1-6.2).

SharedFeatureExtractor: one image embedding per support image, reused by every generator.
LocalFeatureExtractor: one per generated layer, summarising that layer's input activations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ht_jax.model.plan import ConvSpec, LocalFeaturesPlan


def conv(spec: ConvSpec, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(spec.in_channels, spec.out_channels, (spec.kernel, spec.kernel),
                  strides=(spec.stride, spec.stride), padding=spec.padding, use_bias=True,
                  kernel_init=nnx.initializers.glorot_uniform(),
                  bias_init=nnx.initializers.zeros_init(), rngs=rngs)


class SharedFeatureExtractor(nnx.Module):
  """K 3x3 convs with bias and ReLU, then a global spatial mean: [n, H, W, C] -> [n, dim]."""

  def __init__(self, convs: tuple[ConvSpec, ...], *, rngs: nnx.Rngs):
    self.convs = nnx.List([conv(spec, rngs) for spec in convs])

  def __call__(self, images: jax.Array) -> jax.Array:
    x = images
    for layer in self.convs:
      x = jax.nn.relu(layer(x))
    return x.mean(axis=(1, 2))


class LocalFeatureExtractor(nnx.Module):
  """Valid convs over a layer's input activations; the spatial mean of each conv's pre-ReLU
  output (post-ReLU if `nonlinear`) is one block of the feature vector."""

  def __init__(self, plan: LocalFeaturesPlan, *, rngs: nnx.Rngs):
    self.nonlinear = plan.nonlinear
    self.passthrough = plan.passthrough
    self.convs = nnx.List([conv(spec, rngs) for spec in plan.convs])

  def __call__(self, activations: jax.Array) -> jax.Array:
    features, x = [], activations                       # activations: [n, s, s, C]
    for i, layer in enumerate(self.convs):
      x = layer(x if i == 0 else jax.nn.relu(x))
      features.append((jax.nn.relu(x) if self.nonlinear else x).mean(axis=(1, 2)))
    if self.passthrough:                                # flattened map, NHWC order
      features.append(activations.reshape(activations.shape[0], -1))
    if not features:
      return jnp.zeros((activations.shape[0], 0), activations.dtype)
    return jnp.concatenate(features, axis=-1)           # [n, plan.dim]
