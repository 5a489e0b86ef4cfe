"""The README's short default: 5-way 1-shot Omniglot, 8-channel maxpool-4-layer, ten minutes of
training on a 2-core CPU (scripts/quickstart.sh runs it, then evaluates).

  python -m ht_jax.train --config=configs/quickstart.py --workdir=runs/quickstart

The omniglot_1shot_v1 architecture at 5 ways on the seed-2022 class split, with these changes so
that ten CPU minutes suffice (the README's results section has the measured accuracy):
- the transformer generates the logits layer and the four conv layers are learned
  (number_of_trained_cnn_layers=4, the paper's "generate only the logits layer" setting); with
  every layer generated the same budget reaches far less (README);
- Adam at 2e-3 on 2 episodes per step instead of SGD on one;
- 5 query images per class instead of 3 x (20/5);
- ink-on-black images (invert_images=False), the polarity its README figure was measured with.
"""

from configs import omniglot_1shot_v1


def get_config(arg: str | None = None):
  c = omniglot_1shot_v1.get_config(arg)
  c.data.num_labels, c.data.samples_transformer, c.data.samples_cnn = 5, 5, 25
  c.data.invert_images = False
  c.model.number_of_trained_cnn_layers = 4
  c.train.optimizer = "adam"
  c.train.learning_rate = 2e-3
  c.train.learning_rate_decay_steps = 10000.0
  c.train.learning_rate_decay_rate = 0.5
  c.train.episodes_per_step = 2
  c.train.max_train_minutes = 10.0 if arg != "tiny" else 0.0
  c.train.steps = 100000 if arg != "tiny" else c.train.steps
  c.train.checkpoint_every = 2000 if arg != "tiny" else c.train.checkpoint_every
  c.train.log_every = 100 if arg != "tiny" else c.train.log_every
  c.eval.num_task_evals = 100 if arg != "tiny" else c.eval.num_task_evals
  c.eval.splits = "val,test"
  return c
