"""One layer's weight generator: local features + label/weight-slot embeddings -> Transformer ->
one weight slice per weight token (HT_REFERENCE 5-6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ht_jax.model import token_io
from ht_jax.model.feature_extractors import LocalFeatureExtractor
from ht_jax.model.layers import dropout
from ht_jax.model.plan import GeneratorPlan
from ht_jax.model.transformer import Transformer


class LayerGenerator(nnx.Module):

  def __init__(self, plan: GeneratorPlan, model_cfg, num_layers: int, heads: int, *, rngs: nnx.Rngs):
    self.plan = plan
    self.feature_dropout = float(model_cfg.fe_dropout)
    normal = nnx.initializers.normal(1.0)
    self.local_features = LocalFeatureExtractor(plan.local_features, rngs=rngs)
    # Row N of the label table is the "unlabelled" token.
    self.label_embeddings = nnx.Param(normal(rngs.params(), (plan.num_labels + 1, plan.embedding_dim)))
    self.weight_embeddings = nnx.Param(normal(rngs.params(), (plan.num_weight_tokens, plan.embedding_dim)))
    self.transformer = Transformer(
        plan.token_width, plan.query_key_dim, plan.value_dim, plan.inner_dim, num_layers, heads,
        normaliser=model_cfg.transformer_activation, nonlinearity=model_cfg.transformer_nonlinearity,
        skip_last_nonlinearity=bool(model_cfg.transformer_skip_last_nonlinearity),
        dropout_rate=float(model_cfg.dropout_rate), rngs=rngs)

  def __call__(self, activations: jax.Array, labels: jax.Array, shared_features: jax.Array | None,
               sample_mask: jax.Array | None = None, key: jax.Array | None = None) -> jax.Array:
    """activations: [n, s, s, C] support activations at this layer; labels: [n] in 0..N;
    sample_mask: [n], 1 = token removed. Returns the weight slices [num_weight_tokens, B]."""
    keys = (None, None) if key is None else jax.random.split(key)
    with jax.named_scope("local_features"):
      features = dropout(self.local_features(activations), self.feature_dropout, keys[0])
    if shared_features is not None:
      features = jnp.concatenate([features, shared_features], axis=-1)   # [n, F]
    tokens = token_io.encode_tokens(self.plan, self.weight_embeddings[...],
                                    self.label_embeddings[...][labels], features)
    key_mask = None
    if sample_mask is not None:   # weight tokens are never masked
      key_mask = jnp.concatenate([jnp.zeros((self.plan.num_weight_tokens,), tokens.dtype),
                                  sample_mask.astype(tokens.dtype)])
    with jax.named_scope("transformer"):
      outputs = self.transformer(tokens, key_mask, keys[1], output_rows=self.plan.num_weight_tokens)
    return token_io.weight_slices(self.plan, outputs)
