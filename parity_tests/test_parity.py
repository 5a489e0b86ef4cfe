"""JAX and PyTorch compute the same generated weights, activations, logits and loss.

Each framework computes its own numbers from the same parameters (converted, never shared) and the
identical ht_data episode. Tolerances are DESIGN.md's: weights/activations/logits 1e-5 absolute or
relative, loss 1e-6 relative. Gradients are not compared yet (see compare).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import ht_data
from configs import miniimagenet_1shot_v1, omniglot_1shot_v1, omniglot_5shot_v1, tieredimagenet_1shot_v1
from ht_jax.model.loss import episode_loss as jax_loss
from ht_jax.train import create_model
from ht_torch.convert import jax_to_torch, load_into_torch, torch_to_jax
from ht_torch.model.hypertransformer import HyperTransformer as TorchHyperTransformer
from ht_torch.model.loss import episode_loss as torch_loss


def omniglot(**model):
  c = omniglot_1shot_v1.get_config("tiny")
  for k, v in model.items():
    c.model[k] = v
  return c


def small_rgb(module):
  """The 84x84 RGB scripts' model on a 36x36 image, so the test stays fast."""
  c = module.get_config("tiny")
  c.data.image_size = 36
  return c


CONFIGS = {
    "omniglot_1shot_v1": lambda: omniglot(),
    "omniglot_5shot_v1": lambda: omniglot_5shot_v1.get_config("tiny"),
    "miniimagenet_1shot_v1": lambda: small_rgb(miniimagenet_1shot_v1),
    "tieredimagenet_1shot_v1": lambda: small_rgb(tieredimagenet_1shot_v1),
    "3-layer": lambda: omniglot(cnn_model_name="3-layer", stride=2),
    "4-layer": lambda: omniglot(cnn_model_name="4-layer", stride=1),
    "logits-only": lambda: omniglot(number_of_trained_cnn_layers=4),
    "lrelu": lambda: omniglot(cnn_activation="lrelu", transformer_nonlinearity="lrelu"),
    "bias-and-bn": lambda: omniglot(lw_generate_bias=True, lw_generate_bn=True),
    "spatial": lambda: omniglot(lw_weight_allocation="spatial"),
}


@functools.lru_cache(maxsize=2)
def omniglot_dataset(invert: bool):
  c = omniglot_1shot_v1.get_config("tiny")
  c.data.invert_images = invert
  return ht_data.load_dataset(c.data)


def episode(config):
  """One real Omniglot episode for 28x28 configs, a seeded random RGB one otherwise."""
  d = config.data
  if d.train_dataset.startswith("omniglot"):
    dataset = omniglot_dataset(bool(d.invert_images))
    sampler = ht_data.EpisodeSampler(dataset, ht_data.train_class_ids(d), ht_data.EpisodeSpec.from_config(d, True))
    e = sampler.episode(0, 3, 0)
    return e.support_images[0], e.support_labels[0], e.query_images[0], e.query_labels[0]
  rng = np.random.default_rng(0)
  n, s, q, size = d.num_labels, d.samples_transformer, d.samples_cnn, d.image_size
  return (rng.uniform(-1, 1, (s, size, size, 3)).astype(np.float32), np.arange(s) % n,
          rng.uniform(-1, 1, (q, size, size, 3)).astype(np.float32), np.arange(q) % n)


def assert_close(a, b, what, atol=1e-5, rtol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, what
  err = np.abs(a - b).max() if a.size else 0.0
  assert err <= max(atol, rtol * np.abs(a).max()), f"{what}: max abs diff {err}"


def jax_numbers(graphdef, params, config, ep):
  sx, sy, qx, qy = map(jnp.asarray, ep)

  @jax.jit   # jitted as in training (and far faster than op-by-op)
  def numbers(params):
    model = nnx.merge(graphdef, params)
    weights, acts = model.generate(sx, sy)
    loss = jax_loss(model, config.model, sx, sy, qx, qy)[0]
    return weights, acts, model.classify(weights, qx), loss
  return numbers(params)


def torch_numbers(model, config, ep):
  sx, sy, qx, qy = ep
  with torch.no_grad():
    weights, acts = model.generate(sx, sy)
    loss, _ = torch_loss(model, config.model, sx, sy, qx, qy)
    return weights, acts, model.classify(weights, qx), loss


def compare(config, graphdef, params, torch_model):
  ep = episode(config)
  jw, ja, jl, jloss = jax_numbers(graphdef, params, config, ep)
  tw, ta, tl, tloss = torch_numbers(torch_model, config, ep)
  for i, (a, b) in enumerate(zip(jw, tw)):
    for key in a:
      assert_close(a[key], b[key].detach(), f"layer {i} {key}")
  for i, (a, b) in enumerate(zip(ja, ta)):
    assert_close(a, b.detach().permute(0, 2, 3, 1), f"support activations after layer {i}")
  assert_close(jl, tl, "query logits")
  assert_close(jloss, tloss.detach(), "loss", atol=0, rtol=1e-6)
  # Gradient parity is not asserted yet: a first comparison showed per-tensor differences above
  # DESIGN.md's 1e-4 relative on small tensors, and one non-finite entry, still to be understood.
  # (The issue tracker has the details; the next step is to compare gradients here.)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_jax_initialised_converted_to_torch(name):
  config = CONFIGS[name]()
  graphdef, params = create_model(config, seed=1)
  torch_model = TorchHyperTransformer(config)
  load_into_torch(torch_model, jax_to_torch(params))
  compare(config, graphdef, params, torch_model)
  # JAX -> torch -> JAX is exact.
  back = torch_to_jax(torch_model.state_dict(), params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)))


@pytest.mark.parametrize("name", ["omniglot_1shot_v1", "miniimagenet_1shot_v1", "bias-and-bn", "spatial"])
def test_torch_initialised_converted_to_jax(name):
  config = CONFIGS[name]()
  torch.manual_seed(0)
  torch_model = TorchHyperTransformer(config)
  graphdef, reference = create_model(config, seed=2)
  params = torch_to_jax(torch_model.state_dict(), reference)
  compare(config, graphdef, params, torch_model)
