"""The original's optimiser in torch (twin of ht_jax/optimizer.py): SGD, or Adam, with continuous
exponential learning-rate decay lr(step) = lr0 * rate ** (step / decay_steps)."""

from __future__ import annotations

import torch

from ht_jax.model.plan import ConfigError


def learning_rate(train_cfg, step: int) -> float:
  return float(train_cfg.learning_rate) * float(train_cfg.learning_rate_decay_rate) ** (
      step / float(train_cfg.learning_rate_decay_steps))


def make_optimizer(parameters, train_cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
  """The optimiser and its schedule; call scheduler.step() after each optimiser step, as optax
  evaluates its schedule at the pre-increment step. Adam's defaults are optax's (eps outside the
  square root, bias correction)."""
  lr0 = float(train_cfg.learning_rate)
  if train_cfg.optimizer == "sgd":
    optimizer = torch.optim.SGD(parameters, lr=lr0)
  elif train_cfg.optimizer == "adam":
    optimizer = torch.optim.Adam(parameters, lr=lr0, betas=(0.9, 0.999), eps=1e-8)
  else:
    raise ConfigError(f"train.optimizer={train_cfg.optimizer!r} is not supported; use 'sgd' or 'adam'.")
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate(train_cfg, step) / lr0)
  return optimizer, scheduler
