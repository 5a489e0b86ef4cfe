"""Semi-supervised Omniglot: 1 labelled and U unlabelled support samples per class (HT_REFERENCE 2.1,
4.4 step 3). The original has no script for it; `samples_transformer = (shots + U) * N` is its recipe.

  python -m ht_jax.train --config=configs/omniglot_semisupervised.py:5way --workdir=runs/semi5
  python -m ht_jax.evaluate --config=configs/omniglot_semisupervised.py:5way --workdir=runs/semi5 --once

The argument is a comma-separated list:
- `5way` (default): 5-way 1-shot plus 5 unlabelled per class; `20way`: 20-way 1-shot plus 2 per class;
- `supervised`: the same tasks' labelled samples only (U = 0), the baseline arm at the same budget;
- `tiny`: a seconds-long CPU variant for tests.
The transformer depth is `--config.model.num_layers` (the paper: unlabelled samples help only with
at least 2 layers). The architecture and optimiser are the quickstart's (only the logits layer is
generated, the paper's prototype-like setting; Adam on 2 episodes per step) so that each arm trains
in minutes on a CPU. Training removes unlabelled tokens at random (the original's
`max_prob_remove_unlabeled`, here 1.0: each episode draws p ~ U(0, 1) and hides each unlabelled token
from attention with probability p); measured without it, the 5-way model was still at chance after
1,500 steps (25 unlabelled tokens dilute the 5 labelled ones), with it it leaves chance by step 750.
The paper's values are not published. Evaluation reports each split with and without the
unlabelled samples of the same tasks (ht_data.protocol).
"""

from configs import quickstart

SETTINGS = {"5way": (5, 5), "20way": (20, 2)}   # ways, unlabelled samples per class


def get_config(arg: str | None = None):
  tokens = {t.strip() for t in (arg or "5way").split(",") if t.strip()}
  unknown = tokens - set(SETTINGS) - {"supervised", "tiny"}
  if unknown or len(tokens & set(SETTINGS)) > 1:
    raise ValueError(f"configs/omniglot_semisupervised.py:{arg} is not understood; use a comma-separated "
                     f"list of one of {sorted(SETTINGS)} and optionally 'supervised' and 'tiny'.")
  ways, unlabelled = SETTINGS[next(iter(tokens & set(SETTINGS)), "5way")]
  if "supervised" in tokens:
    unlabelled = 0
  c = quickstart.get_config("tiny" if "tiny" in tokens else None)
  d, t = c.data, c.train
  d.num_labels = ways
  d.unlabeled_samples_per_class = unlabelled
  d.samples_transformer = ways * (1 + unlabelled)
  d.samples_cnn = 5 * ways if ways <= 5 else 3 * ways
  c.model.max_prob_remove_unlabeled = 1.0 if unlabelled else 0.0
  # Equal training for every arm: a fixed number of steps, not of minutes.
  t.max_train_minutes = 0.0
  if "tiny" not in tokens:
    t.steps = 8000
    t.learning_rate_decay_steps = 4000.0
    t.checkpoint_every = 4000
    c.eval.splits = "test"
  return c
