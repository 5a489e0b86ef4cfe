"""5-way 1-shot tieredImageNet, the original's `tf/scripts/tieredimagenet_1shot_v1.sh`.

  python -m ht_jax.train --config=configs/tieredimagenet_1shot_v1.py --workdir=runs/tiered \
      --config.data.dir=/path/with/tieredimagenet/

Needs the original's NumPy cache (folder `tieredimagenet/` of chunk files, made by its
utils/cache_tieredimagenet.py). Identical to miniImageNet 1-shot except 8 channels, 8 local
features and the tieredImageNet class ranges.
"""

from configs.common import base_config
from configs.miniimagenet_1shot_v1 import apply_imagenet_1shot


def get_config(arg: str | None = None):
  c = apply_imagenet_1shot(base_config(), "tieredimagenet", "0-350", "448-607", channels=8, features=8)
  if arg == "tiny":
    from configs.omniglot_1shot_v1 import tiny
    c = tiny(c)
  return c
