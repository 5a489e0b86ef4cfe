"""ht_torch's model pieces that have no JAX counterpart to compare with in the parity tests."""

import pytest
import torch

from ht_torch.model.transformer import Transformer


@pytest.mark.parametrize("dropout_rate", [0.0, 0.5])
def test_transformer_output_rows_are_the_full_outputs_first_rows(dropout_rate):
  """As tests/test_model.py for ht_jax: output_rows makes the last layer's feed-forward run on
  those rows only and gives the full outputs' first rows; under dropout the full layer runs, so the
  same generator seed draws the same masks."""
  torch.manual_seed(0)
  t = Transformer(12, 12, 12, 20, num_layers=2, heads=2, dropout_rate=dropout_rate)
  x = torch.randn(7, 12)
  mask = torch.tensor([0, 0, 0, 0, 1, 0, 1], dtype=torch.float32)
  seen = []
  t.layers[-1].feed_forward.hidden.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
  full = t(x, mask, torch.Generator().manual_seed(3))
  first = t(x, mask, torch.Generator().manual_seed(3), output_rows=3)
  assert first.shape == (3, 12)
  torch.testing.assert_close(first, full[:3], atol=1e-6, rtol=1e-6)
  assert seen == [7, 3 if dropout_rate == 0 else 7]
