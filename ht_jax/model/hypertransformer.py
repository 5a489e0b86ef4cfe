"""The layer-wise HyperTransformer: generates every weight of a small CNN from one episode's
support set, layer by layer, then classifies the query set with it (HT_REFERENCE 5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ht_jax.model import token_io
from ht_jax.model.cnn import ConvLayer, logits_layer
from ht_jax.model.feature_extractors import SharedFeatureExtractor
from ht_jax.model.generator import LayerGenerator
from ht_jax.model.layers import dropout
from ht_jax.model.plan import ModelPlan, build_plan

Weights = list[dict[str, jax.Array]]   # effective weights of each CNN layer, logits layer last


class HyperTransformer(nnx.Module):
  """All methods work on ONE episode (unbatched); training vmaps them over episodes."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    m = config.model
    self.plan: ModelPlan = build_plan(config)
    self.shared_dropout = float(m.shared_fe_dropout)
    self.max_prob_remove_labeled = float(m.max_prob_remove_labeled)
    self.max_prob_remove_unlabeled = float(m.max_prob_remove_unlabeled)
    self.shared_features = (SharedFeatureExtractor(self.plan.shared_convs, rngs=rngs)
                            if self.plan.shared_convs else None)
    self.generators = nnx.Dict({
        str(index): LayerGenerator(plan, m, self.plan.num_transformer_layers, self.plan.heads, rngs=rngs)
        for index, plan in self.plan.generators.items()})
    self.cnn_layers = nnx.List([
        ConvLayer(layer, m.cnn_activation, bool(m.separate_evaluation_bn_vars),
                  bool(m.add_trainable_weights), rngs=rngs)
        for layer in self.plan.conv_layers])

  def sample_mask(self, labels: jax.Array, key: jax.Array) -> jax.Array | None:
    """Training-time token removal: p ~ U(0, max) per episode, each token removed with prob p."""
    if not (self.max_prob_remove_labeled or self.max_prob_remove_unlabeled):
      return None
    k_lab, k_unl, k_mask = jax.random.split(key, 3)
    p_lab = jax.random.uniform(k_lab, maxval=self.max_prob_remove_labeled)
    p_unl = jax.random.uniform(k_unl, maxval=self.max_prob_remove_unlabeled)
    p = jnp.where(labels == self.plan.num_labels, p_unl, p_lab)
    return (jax.random.uniform(k_mask, labels.shape) < p).astype(jnp.float32)

  def generate(self, support_images: jax.Array, support_labels: jax.Array, *,
               key: jax.Array | None = None, sample_mask: jax.Array | None = None
               ) -> tuple[Weights, list[jax.Array]]:
    """Generate the CNN. Returns its weights and the support activations after each conv layer.

    support_images: [S, H, W, C]; support_labels: [S] in 0..N (N = unlabelled). `key` enables the
    training-time randomness (dropout, token removal); `sample_mask` [S] overrides token removal.
    """
    keys = [None] * (len(self.plan.conv_layers) + 3) if key is None else list(
        jax.random.split(key, len(self.plan.conv_layers) + 3))
    if sample_mask is None and key is not None:
      sample_mask = self.sample_mask(support_labels, keys[-1])
    shared = None
    if self.shared_features is not None:
      with jax.named_scope("shared_features"):   # scopes name the ops in profiles (benchmarks/profile_step.py)
        shared = dropout(self.shared_features(support_images), self.shared_dropout, keys[-2])

    weights, activations, x = [], [], support_images
    for layer, cnn_layer in zip(self.plan.conv_layers, self.cnn_layers):
      generated = None
      if layer.generator is not None:
        with jax.named_scope("generator"):
          slices = self.generators[str(layer.index)](x, support_labels, shared, sample_mask, keys[layer.index])
        generated = token_io.decode_conv(layer, slices)
      weights.append(cnn_layer.weights(generated))
      with jax.named_scope("cnn_support"):
        x = cnn_layer(x, weights[-1])                      # support pass: support-batch BN statistics
      activations.append(x)
    logits = self.plan.logits_layer
    with jax.named_scope("generator"):
      slices = self.generators[str(logits.index)](x, support_labels, shared, sample_mask, keys[logits.index])
    weights.append(token_io.decode_logits(logits, slices))
    return weights, activations

  def classify(self, weights: Weights, images: jax.Array) -> jax.Array:
    """Query pass of the generated CNN: [Q, H, W, C] -> logits [Q, N] (query-batch BN statistics)."""
    x = images
    with jax.named_scope("cnn_query"):
      for cnn_layer, layer_weights in zip(self.cnn_layers, weights):
        x = cnn_layer(x, layer_weights, query_pass=True)
      return logits_layer(self.plan.logits_layer, x, weights[-1])

  def __call__(self, support_images, support_labels, query_images, *, key=None, sample_mask=None):
    weights, _ = self.generate(support_images, support_labels, key=key, sample_mask=sample_mask)
    return self.classify(weights, query_images)
