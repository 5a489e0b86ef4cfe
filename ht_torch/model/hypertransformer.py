"""The layer-wise HyperTransformer (twin of ht_jax/model/hypertransformer.py).

Inputs are NHWC arrays, as ht_data produces them; the model converts to NCHW at its boundary.
"""

from __future__ import annotations

import torch
from torch import nn

from ht_jax.model.plan import ModelPlan, build_plan
from ht_torch.model import token_io
from ht_torch.model.cnn import ConvLayer, logits_layer
from ht_torch.model.feature_extractors import SharedFeatureExtractor
from ht_torch.model.generator import LayerGenerator
from ht_torch.model.layers import dropout


def nchw(images) -> torch.Tensor:
  return torch.as_tensor(images).permute(0, 3, 1, 2)


class HyperTransformer(nn.Module):
  """All methods work on ONE episode (unbatched)."""

  def __init__(self, config):
    super().__init__()
    m = config.model
    self.plan: ModelPlan = build_plan(config)
    self.shared_dropout = float(m.shared_fe_dropout)
    self.max_prob_remove_labeled = float(m.max_prob_remove_labeled)
    self.max_prob_remove_unlabeled = float(m.max_prob_remove_unlabeled)
    self.shared_features = (SharedFeatureExtractor(self.plan.shared_convs) if self.plan.shared_convs else None)
    self.generators = nn.ModuleDict({
        str(index): LayerGenerator(plan, m, self.plan.num_transformer_layers, self.plan.heads)
        for index, plan in self.plan.generators.items()})
    self.cnn_layers = nn.ModuleList([
        ConvLayer(layer, m.cnn_activation, bool(m.separate_evaluation_bn_vars), bool(m.add_trainable_weights))
        for layer in self.plan.conv_layers])

  def sample_mask(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
    """Training-time token removal: p ~ U(0, max) per episode, each token removed with prob p
    (the same distribution as ht_jax's; the draws differ, so parity tests pass masks explicitly)."""
    if not (self.max_prob_remove_labeled or self.max_prob_remove_unlabeled):
      return None
    p_lab, p_unl = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
    p = torch.where(labels == self.plan.num_labels, p_unl * self.max_prob_remove_unlabeled,
                    p_lab * self.max_prob_remove_labeled)
    return (torch.rand(labels.shape, generator=generator, dtype=torch.float64) < p).float()

  def generate(self, support_images, support_labels, *, generator=None, sample_mask=None):
    """support_images: [S, H, W, C] (NHWC); returns the CNN weights and the NCHW support
    activations after each conv layer. `generator` enables the training-time randomness (dropout,
    token removal); `sample_mask` [S] (1 = token removed) overrides token removal."""
    x = nchw(support_images)
    labels = torch.as_tensor(support_labels).long()
    if sample_mask is None and generator is not None:
      sample_mask = self.sample_mask(labels, generator)
    elif sample_mask is not None:
      sample_mask = torch.as_tensor(sample_mask)
    shared = None
    if self.shared_features is not None:
      shared = dropout(self.shared_features(x), self.shared_dropout, generator)
    weights, activations = [], []
    for layer, cnn_layer in zip(self.plan.conv_layers, self.cnn_layers):
      generated = None
      if layer.generator is not None:
        slices = self.generators[str(layer.index)](x, labels, shared, sample_mask, generator)
        generated = token_io.decode_conv(layer, slices)
      weights.append(cnn_layer.weights(generated))
      x = cnn_layer(x, weights[-1])
      activations.append(x)
    logits = self.plan.logits_layer
    slices = self.generators[str(logits.index)](x, labels, shared, sample_mask, generator)
    weights.append(token_io.decode_logits(logits, slices))
    return weights, activations

  def classify(self, weights, images):
    x = nchw(images)
    for cnn_layer, layer_weights in zip(self.cnn_layers, weights):
      x = cnn_layer(x, layer_weights, query_pass=True)
    return logits_layer(self.plan.logits_layer, x, weights[-1])

  def forward(self, support_images, support_labels, query_images, *, generator=None, sample_mask=None):
    weights, _ = self.generate(support_images, support_labels, generator=generator, sample_mask=sample_mask)
    return self.classify(weights, query_images)
