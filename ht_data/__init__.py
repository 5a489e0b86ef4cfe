"""NumPy-only data pipeline of the HyperTransformer port: Omniglot download and reading, NumPy
caches of the original, class splits, augmentations and few-shot episode sampling.

Never imports jax, torch or tensorflow, so every framework can use it.
"""

from ht_data.augment import (AugmentationParams, AugmentationSettings, ImageAugmentationDraws,
                             apply_augmentation, apply_image_augmentations, augmentation_settings,
                             draw_augmentation_params, draw_image_augmentations, image_augmentation_inputs,
                             resize_bilinear)
from ht_data.dataset import ClassDataset, load_dataset, shuffled_class_order
from ht_data.download import area_downsample, download_omniglot, ensure_omniglot
from ht_data.episodes import Episode, EpisodeSampler, EpisodeSpec, balanced_counts
from ht_data.errors import DataError
from ht_data.numpy_cache import load_numpy_cache
from ht_data.omniglot import OmniglotData, OmniglotMetadata, read_omniglot, read_omniglot_metadata
from ht_data.paths import resolve_data_dir
from ht_data.splits import (EVAL_PRESETS, alphabet_split, monitor_class_ids, parse_dataset_spec,
                            split_class_ids, train_class_ids)

__all__ = [
    "AugmentationParams", "AugmentationSettings", "ClassDataset", "DataError", "EVAL_PRESETS", "Episode",
    "EpisodeSampler", "EpisodeSpec", "ImageAugmentationDraws", "OmniglotData", "OmniglotMetadata",
    "alphabet_split", "apply_augmentation", "apply_image_augmentations", "area_downsample",
    "augmentation_settings", "balanced_counts", "download_omniglot", "draw_augmentation_params",
    "draw_image_augmentations", "ensure_omniglot", "image_augmentation_inputs", "load_dataset",
    "load_numpy_cache", "monitor_class_ids", "parse_dataset_spec", "read_omniglot", "read_omniglot_metadata",
    "resize_bilinear", "resolve_data_dir", "shuffled_class_order", "split_class_ids", "train_class_ids",
]
