"""The generated CNN's layers (twin of ht_jax/model/cnn.py). Activations are NCHW."""

from __future__ import annotations

import torch
from torch import nn

from ht_jax.model.plan import ConvLayerPlan, LogitsLayerPlan
from ht_torch.model.layers import CNN_LRELU_SLOPE, activation, batch_norm, conv2d, max_pool_2x2


def _glorot_hwio(shape) -> torch.Tensor:
  k, _, c_in, c_out = shape   # fans of an HWIO kernel, as Keras computes them
  limit = (6.0 / (k * k * c_in + k * k * c_out)) ** 0.5
  return torch.empty(shape).uniform_(-limit, limit)


class ConvLayer(nn.Module):

  def __init__(self, plan: ConvLayerPlan, activation_name: str, separate_evaluation_bn: bool,
               add_trainable_weights: bool):
    super().__init__()
    self.plan = plan
    self.activation_name = activation_name
    shape = (plan.kernel, plan.kernel, plan.in_channels, plan.out_channels)   # HWIO, as the JAX twin
    if plan.generator is None:
      self.kernel = nn.Parameter(_glorot_hwio(shape))
    elif add_trainable_weights:
      self.trainable_kernel = nn.Parameter(_glorot_hwio(shape))
    if not plan.generate_bn:
      self.bn_scale = nn.Parameter(torch.ones(plan.out_channels))
      self.bn_bias = nn.Parameter(torch.zeros(plan.out_channels))
      if separate_evaluation_bn:
        self.eval_bn_scale = nn.Parameter(torch.ones(plan.out_channels))
        self.eval_bn_bias = nn.Parameter(torch.zeros(plan.out_channels))

  def weights(self, generated):
    p = self.plan
    if generated is None:
      return {"kernel": self.kernel.reshape(-1, p.out_channels)}
    weights = dict(generated)
    if hasattr(self, "trainable_kernel"):
      weights["generated_kernel"] = weights["kernel"]
      weights["kernel"] = weights["kernel"] + self.trainable_kernel.reshape(-1, p.out_channels)
    return weights

  def forward(self, x, weights, query_pass: bool = False):
    p = self.plan
    y = conv2d(x, weights["kernel"], p.kernel, p.stride, p.padding)
    if "bias" in weights:
      y = y + weights["bias"][None, :, None, None]
    # The original order; ht_jax pools before a monotone activation (equal numbers, fewer passes).
    y = activation(self.activation_name, CNN_LRELU_SLOPE)(y)
    if p.pool:
      y = max_pool_2x2(y)
    if p.generate_bn:
      scale, bias = weights["bn_scale"], weights["bn_bias"]
    elif query_pass and hasattr(self, "eval_bn_scale"):
      scale, bias = self.eval_bn_scale, self.eval_bn_bias
    else:
      scale, bias = self.bn_scale, self.bn_bias
    return batch_norm(y, scale, bias)


def logits_layer(plan: LogitsLayerPlan, x, weights):
  """Flatten in TF's NHWC order (or global-average-pool), then the generated dense layer."""
  if plan.kind == "flatten":
    features = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
  else:
    features = x.mean(dim=(2, 3))
  return features @ weights["kernel"] + weights["bias"]
