"""ht_torch.train.batched_train_step (episodes vmapped with torch.func) against train_step (episodes
looped): the same update, in float64, with and without fixed token-removal masks."""

import copy

import numpy as np
import pytest
import torch

from benchmarks import common
from ht_torch.model.hypertransformer import HyperTransformer
from ht_torch.optimizer import make_optimizer
from ht_torch.train import batched_train_step, train_step


@pytest.mark.parametrize("masked", [False, True])
def test_batched_step_equals_the_looped_step(masked):
  config = common.load_config("omniglot_1shot_v1")
  config.train.learning_rate = 0.5                       # a visible update
  batch = {k: np.asarray(v, np.float64) if v.dtype.kind == "f" else v
           for k, v in common.training_batches(config, 3, 1)[0].items()}
  if masked:
    batch["sample_masks"] = (np.random.default_rng(0).random(batch["support_labels"].shape) < 0.3).astype(np.float64)
  torch.manual_seed(0)
  looped = HyperTransformer(config).double()
  batched = copy.deepcopy(looped)
  before = {k: v.clone() for k, v in looped.state_dict().items()}
  metrics_looped = train_step(looped, *make_optimizer(looped.parameters(), config.train), config.model, batch)
  metrics_batched = batched_train_step(batched, *make_optimizer(batched.parameters(), config.train), config.model, batch)
  moved = max(float((looped.state_dict()[k] - v).abs().max()) for k, v in before.items())
  assert moved > 1e-3                                    # the step changed the parameters ...
  for k, v in looped.state_dict().items():               # ... identically in both
    np.testing.assert_allclose(batched.state_dict()[k].numpy(), v.numpy(), rtol=0, atol=1e-12, err_msg=k)
  for k in metrics_looped:
    assert metrics_batched[k] == pytest.approx(metrics_looped[k], abs=1e-6)   # accuracy is float32
