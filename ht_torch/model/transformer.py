"""The generator's Transformer (twin of ht_jax/model/transformer.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ht_torch.model.layers import TRANSFORMER_LRELU_SLOPE, activation, dropout

LAYER_NORM_EPSILON = 1e-6
MASK_PENALTY = 1e8


def dense(in_features: int, out_features: int) -> nn.Linear:
  layer = nn.Linear(in_features, out_features)
  nn.init.xavier_uniform_(layer.weight)   # Glorot-uniform kernel, zero bias (TF defaults)
  nn.init.zeros_(layer.bias)
  return layer


def layer_norm(width: int) -> nn.LayerNorm:
  return nn.LayerNorm(width, eps=LAYER_NORM_EPSILON)


class MultiHeadAttention(nn.Module):

  def __init__(self, width, query_key_dim, value_dim, heads, normaliser):
    super().__init__()
    self.heads = heads
    self.normaliser = normaliser
    self.query = dense(width, query_key_dim)
    self.key = dense(width, query_key_dim)
    self.value = dense(width, value_dim)
    self.output = dense(value_dim, width)

  def forward(self, x, key_mask, rows=None):
    """x: [T, E]; the output for its first `rows` tokens (all by default), which attend to all T."""
    split = lambda y: y.reshape(y.shape[0], self.heads, -1).transpose(0, 1)   # [heads, T, depth]
    q, k, v = split(self.query(x[:rows])), split(self.key(x)), split(self.value(x))
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # [heads, rows, T]
    if key_mask is not None:
      scores = scores - MASK_PENALTY * key_mask[None, None, :]
    weights = torch.softmax(scores, dim=-1) if self.normaliser == "softmax" else torch.sigmoid(scores)
    attended = (weights @ v).transpose(0, 1).reshape(q.shape[1], -1)
    return self.output(attended)


class FeedForward(nn.Module):

  def __init__(self, width, inner_dim, nonlinearity):
    super().__init__()
    self.nonlinearity = nonlinearity
    self.hidden = dense(width, inner_dim)
    self.output = dense(inner_dim, width)

  def forward(self, x):
    return self.output(activation(self.nonlinearity, TRANSFORMER_LRELU_SLOPE)(self.hidden(x)))


class EncoderLayer(nn.Module):

  def __init__(self, width, query_key_dim, value_dim, inner_dim, heads, normaliser, nonlinearity, dropout_rate):
    super().__init__()
    self.dropout_rate = dropout_rate
    self.attention = MultiHeadAttention(width, query_key_dim, value_dim, heads, normaliser)
    self.attention_norm = layer_norm(width)
    self.feed_forward = FeedForward(width, inner_dim, nonlinearity)
    self.output_norm = layer_norm(width)

  def forward(self, x, key_mask, generator, rows=None):
    """The layer's output for the first `rows` tokens of x (all by default)."""
    x = self.attention_norm(x[:rows] + dropout(self.attention(x, key_mask, rows), self.dropout_rate, generator))
    return self.output_norm(x + dropout(self.feed_forward(x), self.dropout_rate, generator))


class Transformer(nn.Module):

  def __init__(self, width, query_key_dim, value_dim, inner_dim, num_layers, heads, normaliser="softmax",
               nonlinearity="relu", skip_last_nonlinearity=False, dropout_rate=0.0):
    super().__init__()
    self.layers = nn.ModuleList([
        EncoderLayer(width, query_key_dim, value_dim, inner_dim, heads, normaliser,
                     None if (skip_last_nonlinearity and i == num_layers - 1) else nonlinearity, dropout_rate)
        for i in range(num_layers)])

  def forward(self, tokens, key_mask=None, generator=None, output_rows=None):
    """tokens: [T, E] -> [T, E], or only the first `output_rows` outputs, which the last layer
    then computes alone (not under dropout, whose masks have the layer's full shape)."""
    last = len(self.layers) - 1
    for i, layer in enumerate(self.layers):
      random = generator is not None and layer.dropout_rate > 0
      rows = output_rows if i == last and not random else None
      tokens = layer(tokens, key_mask, generator, rows)
    return tokens[:output_rows]
