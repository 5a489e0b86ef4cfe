"""Defaults of every original flag (tf/common_flags.py), grouped as data / model / train / eval,
plus where the run spreads over devices and hosts (parallel).

Each script config (`omniglot_1shot_v1.py`, ...) starts from `base_config()` and sets exactly the
flags its original shell script sets. Key names are the original flag names, so the README's flag
table is a one-to-one map. Where our default differs from the original's bare flag default the
line says why.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- Data and episodes (ht_data reads only this section) ------------------------------------
  c.data = d = ml_collections.ConfigDict()
  d.dir = ""                        # data directory; "" -> $HT_DATA_DIR -> ~/.cache/hypertransformer
  d.download = True                 # fetch and convert the official Omniglot zips when missing
  d.split = "seed2022"              # omniglot classes: "seed2022" (the original) | "alphabet"
  d.train_dataset = "emnist"        # spec "name" or "name:a-b,c" (class ids after the shuffle)
  d.test_dataset = "emnist:8-61"    # classes of the training-time monitoring episode
  d.use_labels = 8                  # classes 0..use_labels-1 when train_dataset has no range
  d.shuffle_labels_seed = 0         # >0: Python-random permutation of class ids at load time
  d.image_size = 28
  d.invert_images = False           # True: 255 - pixels (Omniglot's PNG polarity, dark ink on white)
  d.num_labels = 4                  # ways N
  d.samples_transformer = 32        # support samples per episode (labelled + unlabelled)
  d.samples_cnn = 128               # query samples per training episode
  d.unlabeled_samples_per_class = 0
  d.balanced_batches = False
  # Augmentation of training classes; test_* = -1 inherits the training value.
  d.per_label_augmentation = False
  d.random_rotate_by_90 = False
  d.rotation_probability = 0.0
  d.angle_range = 180.0
  d.smooth_probability = 0.5
  d.contrast_probability = 0.5
  d.resize_probability = 0.0
  d.negate_probability = 0.0
  d.roll_probability = 0.0
  d.boundary_probability = 0.0      # unused by the original too
  d.apply_image_augmentations = False
  d.augment_images_individually = False
  d.image_augmentation_in_step = True   # ours: the jitted step applies it (ht_jax/augment.py), not the host
  d.test_per_label_augmentation = False
  d.test_random_rotate_by_90 = False
  d.test_rotation_probability = -1.0
  d.test_angle_range = -1.0
  d.test_smooth_probability = -1.0
  d.test_contrast_probability = -1.0
  d.test_resize_probability = -1.0
  d.test_negate_probability = -1.0
  d.test_roll_probability = -1.0

  # --- Model (ht_jax.model and ht_torch read only this section) ---------------------------------
  c.model = m = ml_collections.ConfigDict()
  m.cnn_model_name = "3-layer"      # maxpool-4-layer | 3-layer | 4-layer
  m.default_num_channels = 16
  m.kernel_size = 3
  m.stride = 2
  m.cnn_activation = "relu"         # relu | lrelu (slope 0.01)
  m.cnn_dropout_rate = 0.0          # inert in the original (support pass only); kept for the table
  m.embedding_dim = 8
  m.num_layers = 4
  m.heads = 4
  m.lw_key_query_dim = 1.0
  m.lw_value_dim = 1.0
  m.lw_inner_dim = 1.0
  m.dropout_rate = 0.0
  m.transformer_activation = "softmax"     # softmax | sigmoid
  m.transformer_nonlinearity = "relu"      # relu | gelu | lrelu (slope 0.1)
  m.transformer_skip_last_nonlinearity = False
  m.layerwise_generator = "joint"          # only "joint" (what every script uses) is implemented
  m.use_decoder = False                    # encoder-decoder variant: not implemented
  m.num_layerwise_features = -1            # original "": -1 -> max(in, out) channels; 0 -> none; or a width
  m.lw_use_nonlinear_feature = False
  m.lw_weight_allocation = "spatial"       # spatial | output
  m.lw_generate_bias = False
  m.lw_generate_bn = False
  m.add_trainable_weights = False
  m.weight_variation_regularization = 0.0
  m.number_of_trained_cnn_layers = 0
  m.shared_feature_extractor = "none"      # none | 2-layer | 3-layer | 4-layer
  m.shared_features_dim = 32
  m.shared_feature_extractor_padding = "valid"
  m.separate_evaluation_bn_vars = False
  m.logits_feature_extractor = "default"   # default | passthrough | mix
  m.warmup_steps = 0                       # auxiliary warm-up heads: not implemented
  m.max_prob_remove_unlabeled = 0.0
  m.max_prob_remove_labeled = 0.0
  m.shared_fe_dropout = 0.0
  m.fe_dropout = 0.0
  m.l2_reg_weight = 0.0
  m.label_smoothing = 0.0

  # --- Training ---------------------------------------------------------------------------------
  c.train = t = ml_collections.ConfigDict()
  t.steps = 10000                   # train_steps
  t.episodes_per_step = 1           # episodes vmapped per step; 1 reproduces the original
  t.episode_groups = 0              # the step's episodes vmapped in this many independent slices
                                    # (speed only); 0: automatic, min(episodes_per_step, 4) on one
                                    # CPU device (16 for images of 64 pixels and more), 1 elsewhere
                                    # (ht_jax/parallel.py:auto_groups)
  t.optimizer = "sgd"               # sgd (the original) | adam
  t.learning_rate = 1e-3
  t.learning_rate_decay_steps = 10000.0
  t.learning_rate_decay_rate = 1.0
  t.checkpoint_every = 50000        # steps_between_saves
  t.keep_checkpoints = 3            # the original's max_to_keep
  t.log_every = 100                 # the original's summary period
  t.seed = 0
  t.max_train_minutes = 0.0         # >0: stop (and save) after this much training time

  # --- Evaluation -------------------------------------------------------------------------------
  c.eval = e = ml_collections.ConfigDict()
  e.datasets = ""                   # eval_datasets preset: omniglot | miniimagenet | tieredimagenet
  e.splits = "train,val,test"
  e.num_task_evals = 512
  e.num_eval_batches = 16
  e.batch_size = 200                # eval_batch_size
  e.seed = 1234                     # evaluation episodes are the same for every checkpoint
  e.tasks_per_call = 8              # tasks vmapped per evaluation call (speed only; rounded up to
                                    # a multiple of the device count, each device takes its share)

  # --- Devices and hosts (ht_jax/parallel.py; README "Scaling out") -----------------------------
  # Every device of every process is one `data` mesh axis; train.episodes_per_step is the global
  # batch and must be a multiple of the device count.
  c.parallel = p = ml_collections.ConfigDict()
  p.distributed = False             # True: many processes, jax.distributed.initialize() (TPU pod, GPU cluster)
  p.coordinator_address = ""        # "host:port" of process 0; "" -> from the environment (TPU, SLURM, Open MPI)
  p.num_processes = 0               # 0 -> from the environment
  p.process_id = -1                 # -1 -> from the environment
  return c


def disable_image_transforms(d: ml_collections.ConfigDict) -> None:
  """What every original script sets: no random rotation/smooth/contrast/resize/negate/roll for
  training or test classes (the bare flag defaults switch smoothing and contrast on)."""
  d.rotation_probability = d.boundary_probability = d.smooth_probability = 0.0
  d.contrast_probability = d.resize_probability = d.negate_probability = d.roll_probability = 0.0
  d.angle_range = 30.0   # inert: rotation probability is 0
  for name in ("rotation", "smooth", "contrast", "resize", "negate", "roll"):
    d[f"test_{name}_probability"] = 0.0
  d.test_angle_range = -1.0
