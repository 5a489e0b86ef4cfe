"""5-way 1-shot miniImageNet, the original's `tf/scripts/miniimagenet_1shot_v1.sh`.

  python -m ht_jax.train --config=configs/miniimagenet_1shot_v1.py --workdir=runs/mini \
      --config.data.dir=/path/with/miniimagenet.npy

Needs the original's NumPy cache (`miniimagenet.npy`, [100, 600, 84, 84, 3], made by its
utils/cache_miniimagenet.py). 16-channel maxpool-4-layer CNN, 8-head transformers at half width,
leaky ReLU, ImageNet-style augmentation of training episodes.
"""

from configs.common import base_config, disable_image_transforms


def apply_imagenet_1shot(c, name: str, train: str, test: str, channels: int, features: int):
  d, m, t, e = c.data, c.model, c.train, c.eval
  d.train_dataset, d.test_dataset = f"{name}:{train}", f"{name}:{test}"
  d.image_size = 84
  d.num_labels, d.samples_transformer, d.samples_cnn = 5, 5, 100
  d.balanced_batches = True
  d.per_label_augmentation = False
  d.random_rotate_by_90 = False
  d.apply_image_augmentations = True
  disable_image_transforms(d)
  m.num_layerwise_features = features
  m.default_num_channels = channels
  m.cnn_model_name = "maxpool-4-layer"
  m.lw_key_query_dim = m.lw_value_dim = m.lw_inner_dim = 0.5
  m.embedding_dim = 32
  m.num_layers = 3
  m.stride = 1
  m.heads = 8
  m.shared_feature_extractor = "4-layer"
  m.shared_features_dim = 16
  m.shared_feature_extractor_padding = "same"
  m.layerwise_generator = "joint"
  m.lw_use_nonlinear_feature = False
  m.lw_weight_allocation = "output"
  m.lw_generate_bias = m.lw_generate_bn = False
  m.transformer_nonlinearity = "lrelu"
  m.cnn_activation = "lrelu"
  m.separate_evaluation_bn_vars = False
  m.use_decoder = False
  m.add_trainable_weights = False
  t.learning_rate = 0.01
  t.learning_rate_decay_steps = 100000.0
  t.learning_rate_decay_rate = 0.95
  t.steps = 4000000
  t.checkpoint_every = 50000
  e.datasets = name
  e.num_task_evals = 1024
  e.num_eval_batches = 16
  e.batch_size = 100
  return c


def get_config(arg: str | None = None):
  c = apply_imagenet_1shot(base_config(), "miniimagenet", "0-63", "80-99", channels=16, features=16)
  if arg == "tiny":
    from configs.omniglot_1shot_v1 import tiny
    c = tiny(c)
  return c
