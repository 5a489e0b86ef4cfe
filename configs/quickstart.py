"""The README's short default: 5-way 1-shot Omniglot, 8-channel maxpool-4-layer, about ten
minutes on a 2-core CPU (scripts/quickstart.sh runs it, then evaluates).

  python -m ht_jax.train --config=configs/quickstart.py --workdir=runs/quickstart

The architecture of omniglot_1shot_v1 at 5 ways; seed-2022 class split; 8 episodes per step
with Adam so that a few minutes of CPU suffice (the original: 1 episode per step, SGD).
"""

from configs import omniglot_1shot_v1


def get_config(arg: str | None = None):
  c = omniglot_1shot_v1.get_config(arg)
  c.data.num_labels, c.data.samples_transformer, c.data.samples_cnn = 5, 5, 75
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-3
  c.train.learning_rate_decay_steps = 1000.0
  c.train.learning_rate_decay_rate = 0.8
  c.train.episodes_per_step = 8
  c.train.steps = 2000 if arg != "tiny" else c.train.steps
  c.train.checkpoint_every = 500 if arg != "tiny" else c.train.checkpoint_every
  c.train.log_every = 50 if arg != "tiny" else c.train.log_every
  c.eval.num_task_evals = 100 if arg != "tiny" else c.eval.num_task_evals
  c.eval.splits = "val,test"
  return c
