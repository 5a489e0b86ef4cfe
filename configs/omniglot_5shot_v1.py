"""20-way 5-shot Omniglot, the original's `tf/scripts/omniglot_5shot_v1.sh`.

  python -m ht_jax.train --config=configs/omniglot_5shot_v1.py --workdir=runs/omniglot_5shot

The original script calls the 1-shot one with --samples_transformer=100 --samples_cnn=100:
100 support tokens (5 per class) and 5 queries per class; everything else is identical.
"""

from configs import omniglot_1shot_v1


def get_config(arg: str | None = None):
  c = omniglot_1shot_v1.get_config(arg)
  c.data.samples_transformer = 100
  c.data.samples_cnn = 100
  return c
