"""Static shape plan of a HyperTransformer, derived from the config alone.

Pure Python (no jax, no torch): both frameworks build their modules from the same plan, so the
two models cannot disagree on a width, a token count or a padding. Numbers follow
HT_REFERENCE.md sections 6-8; `tests/test_plan.py` checks them against the table in 8.4.
"""

from __future__ import annotations

import dataclasses
import math

ARCHITECTURES = {
    # name: (number of conv layers, padding, max-pool after each conv, logits layer kind)
    "maxpool-4-layer": (4, "SAME", True, "flatten"),
    "3-layer": (3, "VALID", False, "pool"),
    "4-layer": (4, "VALID", False, "pool"),
}
SHARED_EXTRACTORS = {"none": 0, "2-layer": 2, "3-layer": 3, "4-layer": 4}
DATASET_CHANNELS = {"omniglot": 1, "emnist": 1, "fashion_mnist": 1, "kmnist": 1,
                    "miniimagenet": 3, "tieredimagenet": 3}


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One plain convolution of a feature extractor."""
  in_channels: int
  out_channels: int
  kernel: int
  stride: int
  padding: str  # "SAME" | "VALID"


@dataclasses.dataclass(frozen=True)
class LocalFeaturesPlan:
  convs: tuple[ConvSpec, ...]     # convs actually applied (the original stops when the map is too small)
  passthrough: int                # width of the flattened activation map fed as a feature (0: none)
  nonlinear: bool                 # take the means after ReLU (logits layer with lw_use_nonlinear_feature)

  @property
  def dim(self) -> int:
    return sum(c.out_channels for c in self.convs) + self.passthrough


@dataclasses.dataclass(frozen=True)
class GeneratorPlan:
  """Token geometry of one layer's weight generator."""
  num_labels: int
  embedding_dim: int              # d
  num_weight_tokens: int
  block_size: int                 # B: values carried by one weight token
  local_features: LocalFeaturesPlan
  shared_dim: int
  token_width: int                # E = d + max(B, F)
  query_key_dim: int
  value_dim: int
  inner_dim: int

  @property
  def feature_dim(self) -> int:   # F
    return self.local_features.dim + self.shared_dim


@dataclasses.dataclass(frozen=True)
class ConvLayerPlan:
  index: int
  in_size: int
  in_channels: int
  out_channels: int
  kernel: int
  stride: int
  padding: str
  pool: bool
  out_size: int
  generator: GeneratorPlan | None  # None: ordinary learned kernel (number_of_trained_cnn_layers)
  allocation: str                  # "output" | "spatial"
  generate_bias: bool
  generate_bn: bool


@dataclasses.dataclass(frozen=True)
class LogitsLayerPlan:
  index: int
  kind: str                        # "flatten" (NHWC-flattened map) | "pool" (global average)
  in_size: int
  in_channels: int
  num_labels: int
  generator: GeneratorPlan

  @property
  def in_features(self) -> int:
    return self.in_size * self.in_size * self.in_channels if self.kind == "flatten" else self.in_channels


@dataclasses.dataclass(frozen=True)
class ModelPlan:
  image_size: int
  image_channels: int
  shared_convs: tuple[ConvSpec, ...]
  shared_dim: int
  conv_layers: tuple[ConvLayerPlan, ...]
  logits_layer: LogitsLayerPlan
  num_labels: int
  num_transformer_layers: int
  heads: int

  @property
  def generators(self) -> dict[int, GeneratorPlan]:
    """Generated layers by layer index (the logits layer is the last index)."""
    gens = {l.index: l.generator for l in self.conv_layers if l.generator is not None}
    gens[self.logits_layer.index] = self.logits_layer.generator
    return gens


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
  if padding == "SAME":
    return -(-size // stride)
  return (size - kernel) // stride + 1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME' padding: the extra pixel goes after (28 -> 14 with stride 2 pads (0, 1))."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def transformer_width(fraction: float, token_width: int, heads: int) -> int:
  """HT_REFERENCE 7.2: a fraction of E rounded up to a multiple of the heads, or an absolute size."""
  if fraction <= 3:
    return int(math.ceil(int(token_width * fraction) / heads) * heads)
  return int(fraction)


def image_channels(data_cfg) -> int:
  if "image_channels" in data_cfg and data_cfg.image_channels:
    return int(data_cfg.image_channels)
  name = str(data_cfg.train_dataset).split(":")[0]
  if name not in DATASET_CHANNELS:
    raise ConfigError(f"unknown image channels for dataset {name!r}; set --config.data.image_channels.")
  return DATASET_CHANNELS[name]


def _local_features(size: int, in_channels: int, dim: int, layers: int, nonlinear: bool,
                    passthrough: int) -> LocalFeaturesPlan:
  """HT_REFERENCE 6.2: valid 3x3 convs, stride 2 except the last; kernel shrinks below 3x3."""
  convs = []
  kernel, stride_rest = (size, 1) if size < 3 else (3, 2)
  channels = in_channels
  for i in range(layers if dim > 0 else 0):
    if size < kernel:
      break
    stride = 1 if i == layers - 1 else stride_rest
    convs.append(ConvSpec(channels, dim, kernel, stride, "VALID"))
    size = conv_output_size(size, kernel, stride, "VALID")
    channels = dim
  return LocalFeaturesPlan(tuple(convs), passthrough, nonlinear)


def _generator(model_cfg, num_labels, num_tokens, block, local, shared_dim) -> GeneratorPlan:
  d = int(model_cfg.embedding_dim)
  heads = int(model_cfg.heads)
  width = d + max(block, local.dim + shared_dim)
  return GeneratorPlan(
      num_labels=num_labels, embedding_dim=d, num_weight_tokens=num_tokens, block_size=block,
      local_features=local, shared_dim=shared_dim, token_width=width,
      query_key_dim=transformer_width(model_cfg.lw_key_query_dim, width, heads),
      value_dim=transformer_width(model_cfg.lw_value_dim, width, heads),
      inner_dim=transformer_width(model_cfg.lw_inner_dim, width, heads))


def _layerwise_features(model_cfg, default: int) -> int:
  value = int(model_cfg.num_layerwise_features)   # the original's "" is -1 here
  if value < -1:
    raise ConfigError(f"model.num_layerwise_features must be -1 (default width), 0 or a width, got {value}.")
  return default if value == -1 else value


def _check_supported(model_cfg) -> None:
  choices = {
      "cnn_model_name": tuple(ARCHITECTURES), "shared_feature_extractor": tuple(SHARED_EXTRACTORS),
      "cnn_activation": ("relu", "lrelu"), "transformer_activation": ("softmax", "sigmoid"),
      "transformer_nonlinearity": ("relu", "gelu", "lrelu"), "lw_weight_allocation": ("output", "spatial"),
      "shared_feature_extractor_padding": ("valid", "same"),
      "logits_feature_extractor": ("default", "passthrough", "mix"), "layerwise_generator": ("joint",),
  }
  for key, allowed in choices.items():
    if model_cfg[key] not in allowed:
      raise ConfigError(f"model.{key}={model_cfg[key]!r} is not supported; use one of {', '.join(allowed)}.")
  if model_cfg.use_decoder:
    raise ConfigError("model.use_decoder=True (encoder-decoder generator) is not implemented; "
                      "every original script uses False.")
  if model_cfg.warmup_steps:
    raise ConfigError("model.warmup_steps>0 (auxiliary warm-up heads) is not implemented; set it to 0.")
  if model_cfg.lw_weight_allocation == "spatial" and (model_cfg.lw_generate_bias or model_cfg.lw_generate_bn):
    raise ConfigError("model.lw_generate_bias / lw_generate_bn need model.lw_weight_allocation='output'.")


def build_plan(config) -> ModelPlan:
  """All shapes of the model for `config` (a full config with .data and .model)."""
  m, data = config.model, config.data
  _check_supported(m)
  n_conv, padding, pool, logits_kind = ARCHITECTURES[m.cnn_model_name]
  num_labels = int(data.num_labels)
  channels = image_channels(data)
  size = int(data.image_size)

  # Shared extractor: K 3x3 convs with bias and ReLU, stride 2 but the last, then a global mean.
  shared_convs, s = [], size
  shared_pad = m.shared_feature_extractor_padding.upper()
  k_shared = SHARED_EXTRACTORS[m.shared_feature_extractor]
  for i in range(k_shared):
    stride = 1 if i == k_shared - 1 else 2
    shared_convs.append(ConvSpec(channels if i == 0 else m.shared_features_dim,
                                 m.shared_features_dim, 3, stride, shared_pad))
    s = conv_output_size(s, 3, stride, shared_pad)
    if s < 1:
      raise ConfigError(f"the {m.shared_feature_extractor} shared feature extractor shrinks "
                        f"{size}x{size} images to nothing; use padding 'same' or fewer layers.")
  shared_dim = int(m.shared_features_dim) if k_shared else 0

  trained = int(m.number_of_trained_cnn_layers)
  if abs(trained) > n_conv:
    raise ConfigError(f"model.number_of_trained_cnn_layers={trained} exceeds the {n_conv} conv layers "
                      f"of {m.cnn_model_name}.")
  learned = set(range(trained)) if trained >= 0 else set(range(n_conv + trained, n_conv))

  layers, in_ch, k, stride = [], channels, int(m.kernel_size), int(m.stride)
  out_ch = int(m.default_num_channels)
  for i in range(n_conv):
    conv_size = conv_output_size(size, k, stride, padding)
    out_size = conv_size // 2 if pool else conv_size
    if conv_size < 1 or out_size < 1:
      raise ConfigError(f"{m.cnn_model_name} with kernel {k}, stride {stride} shrinks {data.image_size}x"
                        f"{data.image_size} images to nothing at conv layer {i + 1}; use a smaller stride.")
    generator = None
    if i not in learned:
      if m.lw_weight_allocation == "output":
        tokens, block = out_ch, k * k * in_ch + int(m.lw_generate_bias) + 2 * int(m.lw_generate_bn)
      else:
        tokens, block = k * k, in_ch * out_ch
      local = _local_features(size, in_ch, _layerwise_features(m, max(in_ch, out_ch)), 2, False, 0)
      generator = _generator(m, num_labels, tokens, block, local, shared_dim)
    layers.append(ConvLayerPlan(
        index=i, in_size=size, in_channels=in_ch, out_channels=out_ch, kernel=k, stride=stride,
        padding=padding, pool=pool, out_size=out_size, generator=generator,
        allocation=m.lw_weight_allocation, generate_bias=bool(m.lw_generate_bias) and generator is not None,
        generate_bn=bool(m.lw_generate_bn) and generator is not None))
    size, in_ch = out_size, out_ch

  in_features = size * size * in_ch if logits_kind == "flatten" else in_ch
  passthrough = 0
  feature_dim = _layerwise_features(m, in_ch)
  if logits_kind == "flatten" and m.logits_feature_extractor != "default":
    passthrough = size * size * in_ch
    if m.logits_feature_extractor == "passthrough":
      feature_dim = 0
  local = _local_features(size, in_ch, feature_dim, 1, bool(m.lw_use_nonlinear_feature), passthrough)
  logits = LogitsLayerPlan(
      index=n_conv, kind=logits_kind, in_size=size, in_channels=in_ch, num_labels=num_labels,
      generator=_generator(m, num_labels, num_labels, in_features + 1, local, shared_dim))
  return ModelPlan(
      image_size=int(data.image_size), image_channels=channels, shared_convs=tuple(shared_convs),
      shared_dim=shared_dim, conv_layers=tuple(layers), logits_layer=logits, num_labels=num_labels,
      num_transformer_layers=int(m.num_layers), heads=int(m.heads))
