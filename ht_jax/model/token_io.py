"""Transformer IO: support samples and weight slots in as tokens, weight slices out, and the
slices decoded into CNN weights (HT_REFERENCE 6.3-6.4 and 8.1-8.2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ht_jax.model.plan import ConvLayerPlan, GeneratorPlan, LogitsLayerPlan


def encode_tokens(plan: GeneratorPlan, weight_embeddings: jax.Array, label_embeddings: jax.Array,
                  features: jax.Array) -> jax.Array:
  """[weight tokens ..., sample tokens ...] of width E; features are zero-padded on the right.

  weight_embeddings: [num_weight_tokens, d]; label_embeddings: [n, d] (rows of the label table);
  features: [n, F]. Returns [num_weight_tokens + n, E].
  """
  width, d = plan.token_width, plan.embedding_dim
  weight_tokens = jnp.pad(weight_embeddings, ((0, 0), (0, width - d)))
  samples = jnp.concatenate([label_embeddings, features], axis=-1)
  sample_tokens = jnp.pad(samples, ((0, 0), (0, width - samples.shape[-1])))
  return jnp.concatenate([weight_tokens, sample_tokens], axis=0)


def weight_slices(plan: GeneratorPlan, outputs: jax.Array) -> jax.Array:
  """slice_j = output[j, d:d+B] for each weight token j: [num_weight_tokens, B]."""
  d = plan.embedding_dim
  return outputs[:plan.num_weight_tokens, d:d + plan.block_size]


def decode_conv(layer: ConvLayerPlan, slices: jax.Array) -> dict[str, jax.Array]:
  """Weight slices -> {"kernel": [k*k*C_in, C_out] (HWIO flattened), optional bias/bn_scale/bn_bias}."""
  k, c_in, c_out = layer.kernel, layer.in_channels, layer.out_channels
  if layer.allocation == "spatial":   # token p = kh*k + kw holds a row-major (C_in, C_out) matrix
    return {"kernel": slices.reshape(k * k * c_in, c_out)}
  n = k * k * c_in                    # token o holds output channel o in (kh, kw, c_in) order
  weights = {"kernel": slices[:, :n].T}
  offset = n
  if layer.generate_bias:
    weights["bias"] = slices[:, offset]
    offset += 1
  if layer.generate_bn:               # raw values: gamma is not offset by +1
    weights["bn_scale"], weights["bn_bias"] = slices[:, offset], slices[:, offset + 1]
  return weights


def decode_logits(layer: LogitsLayerPlan, slices: jax.Array) -> dict[str, jax.Array]:
  """Token j is class j: kernel column j = slice_j[:-1], bias_j = slice_j[-1]."""
  return {"kernel": slices[:, :layer.in_features].T, "bias": slices[:, layer.in_features]}
