"""Semi-supervised HT: unlabelled tokens, training-time token removal in both frameworks, the
with/without-unlabelled evaluation and the semi-supervised configs. (JAX-torch parity with
unlabelled samples and a fixed mask: parity_tests, configurations "semi-supervised*".)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from configs import omniglot_semisupervised
from ht_data import DataError, protocol
from ht_jax.evaluate import Evaluator, format_table
from ht_jax.model.hypertransformer import HyperTransformer
from ht_torch.convert import jax_to_torch, load_into_torch
from ht_torch.model.hypertransformer import HyperTransformer as TorchHyperTransformer
from tests.test_train import small_config


def semi_config(**model):
  c = small_config()
  c.data.unlabeled_samples_per_class = 2
  c.data.samples_transformer = 15
  for k, v in model.items():
    c.model[k] = v
  return c


def support_episode(seed=0, size=15, ways=5):
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (size, 28, 28, 1)).astype(np.float32)
  labels = np.where(np.arange(size) < 2 * ways, ways, np.arange(size) % ways).astype(np.int32)
  return images, labels


def first_layer_weights_jax(model, images, labels, mask):
  weights, _ = model.generate(jnp.asarray(images), jnp.asarray(labels),
                              sample_mask=None if mask is None else jnp.asarray(mask))
  return np.asarray(weights[0]["kernel"])


def first_layer_weights_torch(model, images, labels, mask):
  with torch.no_grad():
    weights, _ = model.generate(images, labels, sample_mask=None if mask is None else torch.from_numpy(mask))
  return weights[0]["kernel"].numpy()


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_a_removed_token_cannot_be_attended_to(framework):
  """The first generated layer sees each support image only through its own token: once that token
  is removed, changing its image (or label) leaves the generated kernel unchanged; kept, it does not.
  (Later layers still see it, through the support pass's batch statistics, as in the original.)"""
  c = semi_config()
  model = HyperTransformer(c, rngs=nnx.Rngs(0))
  first = first_layer_weights_jax
  if framework == "torch":
    params = nnx.state(model, nnx.Param)
    model = TorchHyperTransformer(c)
    load_into_torch(model, jax_to_torch(params))
    first = first_layer_weights_torch
  images, labels = support_episode()
  changed_images, changed_labels = images.copy(), labels.copy()
  changed_images[3] = -changed_images[3]
  changed_labels[12] = 0 if labels[12] != 0 else 1      # a labelled token's label
  mask = np.zeros(len(labels), np.float32)
  mask[[3, 12]] = 1.0
  removed = first(model, images, labels, mask)
  np.testing.assert_allclose(first(model, changed_images, changed_labels, mask), removed, atol=1e-6)
  kept = first(model, images, labels, None)
  assert np.abs(first(model, changed_images, changed_labels, None) - kept).max() > 1e-4
  assert np.abs(removed - kept).max() > 1e-4               # removing tokens changes the weights


def test_token_removal_rates_match_between_frameworks():
  """p ~ U(0, max) per episode and each token removed with probability p: the expected removed
  fraction is max/2. Labelled tokens are never removed when their max is 0."""
  c = semi_config(max_prob_remove_unlabeled=0.8, max_prob_remove_labeled=0.0)
  _, labels = support_episode()
  unlabelled = labels == 5
  jax_model = HyperTransformer(c, rngs=nnx.Rngs(0))
  jax_masks = np.asarray(jax.vmap(lambda k: jax_model.sample_mask(jnp.asarray(labels), k))(
      jax.random.split(jax.random.key(0), 4000)))
  torch_model = TorchHyperTransformer(c)
  generator = torch.Generator().manual_seed(0)
  torch_masks = np.stack([torch_model.sample_mask(torch.as_tensor(labels).long(), generator).numpy()
                          for _ in range(4000)])
  for masks in (jax_masks, torch_masks):
    assert masks[:, ~unlabelled].sum() == 0
    assert abs(masks[:, unlabelled].mean() - 0.4) < 0.02   # 4000 x 10 draws: s.e. about 0.005
    # p is per episode, so removals within an episode are correlated (Var of the count > binomial).
    counts = masks[:, unlabelled].sum(axis=1)
    assert counts.var() > 2 * 10 * 0.4 * 0.6


def test_torch_training_draws_a_mask_only_when_enabled():
  _, labels = support_episode()
  plain = TorchHyperTransformer(semi_config())
  assert plain.sample_mask(torch.as_tensor(labels).long(), torch.Generator()) is None
  both = TorchHyperTransformer(semi_config(max_prob_remove_unlabeled=1.0, max_prob_remove_labeled=1.0))
  masks = np.stack([both.sample_mask(torch.as_tensor(labels).long(), torch.Generator().manual_seed(s)).numpy()
                    for s in range(200)])
  assert masks[:, labels < 5].mean() > 0.3 and masks[:, labels == 5].mean() > 0.3


def test_labelled_only_removes_exactly_the_unlabelled_samples():
  rng = np.random.default_rng(1)
  labels = np.stack([rng.permutation(np.r_[np.arange(5), np.full(10, 5)]) for _ in range(3)])
  images = np.broadcast_to(np.arange(15, dtype=np.float32)[None, :, None, None, None], (3, 15, 4, 4, 1)) + 0
  kept_images, kept_labels = protocol.labelled_only(images, labels, 5)
  assert kept_labels.shape == (3, 5) and kept_images.shape == (3, 5, 4, 4, 1)
  for row in range(3):
    positions = np.flatnonzero(labels[row] != 5)         # labelled samples, in their order
    np.testing.assert_array_equal(kept_labels[row], labels[row, positions])
    np.testing.assert_array_equal(kept_images[row, :, 0, 0, 0], positions)
  labels[0, np.flatnonzero(labels[0] == 5)[0]] = 0         # rows no longer hold equally many
  with pytest.raises(DataError, match="different numbers of labelled samples"):
    protocol.labelled_only(images, labels, 5)


def test_evaluation_reports_with_and_without_unlabelled_on_the_same_tasks():
  c = semi_config()
  c.eval.num_task_evals, c.eval.num_eval_batches, c.eval.batch_size, c.eval.splits = 4, 2, 10, "test"
  evaluator = Evaluator(c)
  params = evaluator.target["params"]
  result = evaluator.evaluate(params, step=0)
  assert result["unlabelled_per_class"] == 2 and result["shots"] == 1
  test = result["splits"]["test"]
  assert test["unlabelled_gain"]["accuracy"] == pytest.approx(
      test["accuracy"] - test["labelled_only"]["accuracy"], abs=1e-9)

  # The labelled-only number is the model run on each task's support minus its unlabelled samples.
  model = nnx.merge(evaluator.graphdef, params)
  accs = []
  for task in range(4):
    support, qx, qy = evaluator.samplers["test"].eval_task(int(c.eval.seed), task, 2)
    sx, sy = support.support_images[0], support.support_labels[0]
    assert (sy == 5).sum() == 10
    weights, _ = model.generate(jnp.asarray(sx[sy < 5]), jnp.asarray(sy[sy < 5]))
    accs.append(np.mean([np.mean(np.argmax(model.classify(weights, jnp.asarray(x)), -1) == y) for x, y in zip(qx, qy)]))
  assert test["labelled_only"]["accuracy"] == pytest.approx(np.mean(accs), abs=1e-6)
  assert "without unlabelled" in format_table(result) and "+ 2 unlabelled" in format_table(result)


def test_semisupervised_configs():
  five = omniglot_semisupervised.get_config("5way")
  assert (five.data.num_labels, five.data.unlabeled_samples_per_class, five.data.samples_transformer) == (5, 5, 30)
  assert five.model.max_prob_remove_unlabeled == 1.0
  twenty = omniglot_semisupervised.get_config("20way")
  assert (twenty.data.num_labels, twenty.data.unlabeled_samples_per_class, twenty.data.samples_transformer) == (20, 2, 60)
  baseline = omniglot_semisupervised.get_config("5way,supervised")
  assert (baseline.data.unlabeled_samples_per_class, baseline.data.samples_transformer) == (0, 5)
  assert baseline.model.max_prob_remove_unlabeled == 0.0
  assert baseline.train.steps == five.train.steps              # the same budget for both arms
  with pytest.raises(ValueError, match="is not understood"):
    omniglot_semisupervised.get_config("5way,20way")
