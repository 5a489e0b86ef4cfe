"""One layer's weight generator (twin of ht_jax/model/generator.py)."""

from __future__ import annotations

import torch
from torch import nn

from ht_jax.model.plan import GeneratorPlan
from ht_torch.model import token_io
from ht_torch.model.feature_extractors import LocalFeatureExtractor
from ht_torch.model.layers import dropout
from ht_torch.model.transformer import Transformer


class LayerGenerator(nn.Module):

  def __init__(self, plan: GeneratorPlan, model_cfg, num_layers: int, heads: int):
    super().__init__()
    self.plan = plan
    self.feature_dropout = float(model_cfg.fe_dropout)
    self.local_features = LocalFeatureExtractor(plan.local_features)
    self.label_embeddings = nn.Parameter(torch.randn(plan.num_labels + 1, plan.embedding_dim))
    self.weight_embeddings = nn.Parameter(torch.randn(plan.num_weight_tokens, plan.embedding_dim))
    self.transformer = Transformer(
        plan.token_width, plan.query_key_dim, plan.value_dim, plan.inner_dim, num_layers, heads,
        normaliser=model_cfg.transformer_activation, nonlinearity=model_cfg.transformer_nonlinearity,
        skip_last_nonlinearity=bool(model_cfg.transformer_skip_last_nonlinearity),
        dropout_rate=float(model_cfg.dropout_rate))

  def forward(self, activations, labels, shared_features, sample_mask=None, generator=None):
    features = dropout(self.local_features(activations), self.feature_dropout, generator)
    if shared_features is not None:
      features = torch.cat([features, shared_features], dim=-1)
    tokens = token_io.encode_tokens(self.plan, self.weight_embeddings, self.label_embeddings[labels], features)
    key_mask = None
    if sample_mask is not None:
      key_mask = torch.cat([tokens.new_zeros(self.plan.num_weight_tokens), sample_mask.to(tokens.dtype)])
    outputs = self.transformer(tokens, key_mask, generator, output_rows=self.plan.num_weight_tokens)
    return token_io.weight_slices(self.plan, outputs)
