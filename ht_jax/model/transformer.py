"""The generator's Transformer: encoder-only, post-LayerNorm, no positional encoding
(HT_REFERENCE 7.1). One instance per generated layer, each with its own width."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ht_jax.model.layers import TRANSFORMER_LRELU_SLOPE, activation, dropout

LAYER_NORM_EPSILON = 1e-6
MASK_PENALTY = 1e8


def dense(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
  # TF/Keras defaults: Glorot-uniform kernel, zero bias.
  return nnx.Linear(in_features, out_features, kernel_init=nnx.initializers.glorot_uniform(),
                    bias_init=nnx.initializers.zeros_init(), rngs=rngs)


def layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=LAYER_NORM_EPSILON, rngs=rngs)


class MultiHeadAttention(nnx.Module):

  def __init__(self, width: int, query_key_dim: int, value_dim: int, heads: int, normaliser: str,
               *, rngs: nnx.Rngs):
    self.heads = heads
    self.normaliser = normaliser
    self.query = dense(width, query_key_dim, rngs)
    self.key = dense(width, query_key_dim, rngs)
    self.value = dense(width, value_dim, rngs)
    self.output = dense(value_dim, width, rngs)

  def __call__(self, x: jax.Array, key_mask: jax.Array | None, rows: int | None = None) -> jax.Array:
    """x: [T, E]; the output for its first `rows` tokens (all by default), which attend to all T."""
    split = lambda y: y.reshape(y.shape[0], self.heads, -1).transpose(1, 0, 2)   # [heads, T, depth]
    q, k, v = split(self.query(x[:rows])), split(self.key(x)), split(self.value(x))
    scores = q @ k.transpose(0, 2, 1) / jnp.sqrt(jnp.float32(q.shape[-1]))   # [heads, rows, T]
    if key_mask is not None:                                  # 1 = this key cannot be attended to
      scores = scores - MASK_PENALTY * key_mask[None, None, :]
    weights = jax.nn.softmax(scores, axis=-1) if self.normaliser == "softmax" else jax.nn.sigmoid(scores)
    attended = (weights @ v).transpose(1, 0, 2).reshape(q.shape[1], -1)  # [rows, value_dim]
    return self.output(attended)


class FeedForward(nnx.Module):

  def __init__(self, width: int, inner_dim: int, nonlinearity: str | None, *, rngs: nnx.Rngs):
    self.nonlinearity = nonlinearity
    self.hidden = dense(width, inner_dim, rngs)
    self.output = dense(inner_dim, width, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.output(activation(self.nonlinearity, TRANSFORMER_LRELU_SLOPE)(self.hidden(x)))


class EncoderLayer(nnx.Module):

  def __init__(self, width, query_key_dim, value_dim, inner_dim, heads, normaliser, nonlinearity,
               dropout_rate, *, rngs: nnx.Rngs):
    self.dropout_rate = dropout_rate
    self.attention = MultiHeadAttention(width, query_key_dim, value_dim, heads, normaliser, rngs=rngs)
    self.attention_norm = layer_norm(width, rngs)
    self.feed_forward = FeedForward(width, inner_dim, nonlinearity, rngs=rngs)
    self.output_norm = layer_norm(width, rngs)

  def __call__(self, x, key_mask, dropout_key, rows: int | None = None):
    """The layer's output for the first `rows` tokens of x (all by default): every operation but
    the keys and values is row by row."""
    keys = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    x = self.attention_norm(x[:rows] + dropout(self.attention(x, key_mask, rows), self.dropout_rate, keys[0]))
    return self.output_norm(x + dropout(self.feed_forward(x), self.dropout_rate, keys[1]))


class Transformer(nnx.Module):

  def __init__(self, width: int, query_key_dim: int, value_dim: int, inner_dim: int, num_layers: int,
               heads: int, normaliser: str = "softmax", nonlinearity: str = "relu",
               skip_last_nonlinearity: bool = False, dropout_rate: float = 0.0, *, rngs: nnx.Rngs):
    self.layers = nnx.List([
        EncoderLayer(width, query_key_dim, value_dim, inner_dim, heads, normaliser,
                     None if (skip_last_nonlinearity and i == num_layers - 1) else nonlinearity,
                     dropout_rate, rngs=rngs)
        for i in range(num_layers)])

  def __call__(self, tokens: jax.Array, key_mask: jax.Array | None = None,
               dropout_key: jax.Array | None = None, output_rows: int | None = None) -> jax.Array:
    """tokens: [T, E] -> [T, E], or only the first `output_rows` outputs: the last layer then
    computes just those rows (the generator reads the weight tokens only; without dropout, whose
    masks have the layer's full shape)."""
    last = len(self.layers) - 1
    for i, layer in enumerate(self.layers):
      random = dropout_key is not None and layer.dropout_rate > 0
      rows = output_rows if i == last and not random else None
      tokens = layer(tokens, key_mask, None if dropout_key is None else jax.random.fold_in(dropout_key, i), rows)
    return tokens[:output_rows]
