"""Token widths and weight-token counts against HT_REFERENCE.md 8.4 (derived from the original)."""

import pytest

from configs import miniimagenet_1shot_v1, omniglot_1shot_v1, omniglot_5shot_v1, tieredimagenet_1shot_v1
from ht_jax.model.plan import ConfigError, build_plan, same_padding, transformer_width


def rows(plan):
  layers = [*plan.conv_layers, plan.logits_layer]
  return [(l.generator.num_weight_tokens, l.generator.block_size, l.generator.local_features.dim,
           l.generator.shared_dim, l.generator.token_width, l.generator.query_key_dim) for l in layers]


@pytest.mark.parametrize("module", [omniglot_1shot_v1, omniglot_5shot_v1])
def test_omniglot_table(module):
  plan = build_plan(module.get_config())
  assert rows(plan) == [(8, 9, 16, 32, 80, 80), (8, 72, 16, 32, 104, 104), (8, 72, 16, 32, 104, 104),
                        (8, 72, 8, 32, 104, 104), (20, 9, 8, 32, 72, 72)]
  assert [(l.in_size, l.out_size) for l in plan.conv_layers] == [(28, 14), (14, 7), (7, 3), (3, 1)]


def test_omniglot_transformer_parameter_count():
  """8.4 lists 117,600 / 197,808 / 95,472 transformer parameters for the E=80 / 104 / 72 layers."""
  from flax import nnx
  from ht_jax.model.hypertransformer import HyperTransformer
  model = HyperTransformer(omniglot_1shot_v1.get_config(), rngs=nnx.Rngs(0))
  counts = [sum(p.size for p in jax_leaves(nnx.state(model.generators[str(i)].transformer, nnx.Param)))
            for i in range(5)]
  assert counts == [117_600, 197_808, 197_808, 197_808, 95_472]


def jax_leaves(state):
  import jax
  return jax.tree_util.tree_leaves(state)


def test_miniimagenet_table():
  plan = build_plan(miniimagenet_1shot_v1.get_config())
  assert [r[4] for r in rows(plan)] == [80, 176, 176, 176, 433]
  assert [r[5] for r in rows(plan)] == [40, 88, 88, 88, 216]
  assert [r[0] for r in rows(plan)] == [16, 16, 16, 16, 5]
  assert [r[1] for r in rows(plan)] == [27, 144, 144, 144, 401]
  assert [(l.in_size, l.out_size) for l in plan.conv_layers] == [(84, 42), (42, 21), (21, 10), (10, 5)]


def test_tieredimagenet_table():
  plan = build_plan(tieredimagenet_1shot_v1.get_config())
  assert [r[4] for r in rows(plan)] == [64, 104, 104, 104, 233]
  assert [r[5] for r in rows(plan)] == [32, 56, 56, 56, 120]


def test_width_rule_and_same_padding():
  assert transformer_width(0.5, 433, 8) == 216
  assert transformer_width(0.5, 233, 8) == 120      # int(116.5) = 116 -> rounded up to 120
  assert transformer_width(64, 433, 8) == 64        # > 3: an absolute width
  assert same_padding(28, 3, 2) == (0, 1)           # TF puts the extra pixel after
  assert same_padding(21, 3, 2) == (1, 1)
  assert same_padding(28, 3, 1) == (1, 1)


def test_logits_only_and_spatial_allocation():
  c = omniglot_1shot_v1.get_config()
  c.model.number_of_trained_cnn_layers = 4
  plan = build_plan(c)
  assert [l.generator for l in plan.conv_layers] == [None] * 4 and list(plan.generators) == [4]
  c = omniglot_1shot_v1.get_config()
  c.model.lw_weight_allocation = "spatial"
  plan = build_plan(c)
  assert [(l.generator.num_weight_tokens, l.generator.block_size) for l in plan.conv_layers] == [
      (9, 8), (9, 64), (9, 64), (9, 64)]


@pytest.mark.parametrize("key,value,message", [
    ("cnn_model_name", "5-layer", "cnn_model_name"),
    ("use_decoder", True, "use_decoder"),
    ("number_of_trained_cnn_layers", 6, "number_of_trained_cnn_layers"),
    ("stride", 4, "shrinks"),
])
def test_bad_model_config(key, value, message):
  c = omniglot_1shot_v1.get_config()
  c.model[key] = value
  with pytest.raises(ConfigError, match=message):
    build_plan(c)
