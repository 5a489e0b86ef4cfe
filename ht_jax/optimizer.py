"""The original's optimiser: plain SGD with continuous exponential learning-rate decay
(HT_REFERENCE 9); Adam with the same schedule as an option."""

from __future__ import annotations

import optax

from ht_jax.model.plan import ConfigError


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  # lr(step) = lr0 * rate ** (step / decay_steps), evaluated at the pre-increment step.
  return optax.exponential_decay(float(train_cfg.learning_rate), int(train_cfg.learning_rate_decay_steps),
                                 float(train_cfg.learning_rate_decay_rate), staircase=False)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(train_cfg)
  if train_cfg.optimizer == "sgd":
    return optax.sgd(schedule)
  if train_cfg.optimizer == "adam":
    return optax.adam(schedule)
  raise ConfigError(f"train.optimizer={train_cfg.optimizer!r} is not supported; use 'sgd' or 'adam'.")
