"""Transformer IO (twin of ht_jax/model/token_io.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ht_jax.model.plan import ConvLayerPlan, GeneratorPlan, LogitsLayerPlan


def encode_tokens(plan: GeneratorPlan, weight_embeddings, label_embeddings, features):
  width, d = plan.token_width, plan.embedding_dim
  weight_tokens = F.pad(weight_embeddings, (0, width - d))
  samples = torch.cat([label_embeddings, features], dim=-1)
  sample_tokens = F.pad(samples, (0, width - samples.shape[-1]))
  return torch.cat([weight_tokens, sample_tokens], dim=0)


def weight_slices(plan: GeneratorPlan, outputs):
  d = plan.embedding_dim
  return outputs[:plan.num_weight_tokens, d:d + plan.block_size]


def decode_conv(layer: ConvLayerPlan, slices) -> dict[str, torch.Tensor]:
  k, c_in, c_out = layer.kernel, layer.in_channels, layer.out_channels
  if layer.allocation == "spatial":
    return {"kernel": slices.reshape(k * k * c_in, c_out)}
  n = k * k * c_in
  weights = {"kernel": slices[:, :n].T}
  offset = n
  if layer.generate_bias:
    weights["bias"] = slices[:, offset]
    offset += 1
  if layer.generate_bn:
    weights["bn_scale"], weights["bn_bias"] = slices[:, offset], slices[:, offset + 1]
  return weights


def decode_logits(layer: LogitsLayerPlan, slices) -> dict[str, torch.Tensor]:
  return {"kernel": slices[:, :layer.in_features].T, "bias": slices[:, layer.in_features]}
