"""Feature extractors that feed the generators (twin of ht_jax/model/feature_extractors.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ht_jax.model.plan import ConvSpec, LocalFeaturesPlan
from ht_torch.model.layers import pad_same


class Conv(nn.Conv2d):
  """Conv2d with TF padding semantics ('SAME' is asymmetric, so it is applied explicitly)."""

  def __init__(self, spec: ConvSpec):
    super().__init__(spec.in_channels, spec.out_channels, spec.kernel, stride=spec.stride, bias=True)
    self.spec = spec
    nn.init.xavier_uniform_(self.weight)
    nn.init.zeros_(self.bias)

  def forward(self, x):
    if self.spec.padding == "SAME":
      x = pad_same(x, self.spec.kernel, self.spec.stride)
    return super().forward(x)


class SharedFeatureExtractor(nn.Module):

  def __init__(self, convs: tuple[ConvSpec, ...]):
    super().__init__()
    self.convs = nn.ModuleList([Conv(spec) for spec in convs])

  def forward(self, images):
    x = images
    for layer in self.convs:
      x = F.relu(layer(x))
    return x.mean(dim=(2, 3))


class LocalFeatureExtractor(nn.Module):

  def __init__(self, plan: LocalFeaturesPlan):
    super().__init__()
    self.nonlinear = plan.nonlinear
    self.passthrough = plan.passthrough
    self.convs = nn.ModuleList([Conv(spec) for spec in plan.convs])

  def forward(self, activations):
    features, x = [], activations                       # activations: [n, C, s, s]
    for i, layer in enumerate(self.convs):
      x = layer(x if i == 0 else F.relu(x))
      features.append((F.relu(x) if self.nonlinear else x).mean(dim=(2, 3)))
    if self.passthrough:                                # flattened map, NHWC order as the original
      features.append(activations.permute(0, 2, 3, 1).reshape(activations.shape[0], -1))
    if not features:
      return activations.new_zeros((activations.shape[0], 0))
    return torch.cat(features, dim=-1)
