"""Episode sampler: counts, labels, provenance of images, augmentation, determinism, evaluation tasks
and every DataError path, on the real Omniglot data."""

import numpy as np
import pytest

from configs.common import base_config
from ht_data.augment import AugmentationSettings
from ht_data.dataset import ClassDataset
from ht_data.episodes import Episode, EpisodeSampler, EpisodeSpec, balanced_counts
from ht_data.errors import DataError

TRAIN_IDS = np.arange(1150)


def omniglot_1shot_data(**overrides):
  """config.data of the omniglot_1shot_v1 script (HT_REFERENCE 3.1)."""
  data = base_config().data
  data.update(dict(
      train_dataset="omniglot:0-1149", test_dataset="omniglot:1200-1622", shuffle_labels_seed=2022,
      num_labels=20, samples_transformer=20, samples_cnn=60, balanced_batches=True, image_size=28,
      per_label_augmentation=True, random_rotate_by_90=True, angle_range=30.0,
      smooth_probability=0.0, contrast_probability=0.0, test_rotation_probability=0.0,
      test_smooth_probability=0.0, test_contrast_probability=0.0, test_resize_probability=0.0,
      test_negate_probability=0.0, test_roll_probability=0.0))
  data.update(overrides)
  return data


@pytest.fixture(scope="module")
def dataset(omniglot):
  return ClassDataset("omniglot", omniglot.images)


def sampler(dataset, training=False, ids=TRAIN_IDS, query_size=None, **overrides):
  spec = EpisodeSpec.from_config(omniglot_1shot_data(**overrides), training, query_size)
  return EpisodeSampler(dataset, ids, spec)


def raw(images):
  """Undo x/128 - 1 (exact for integer pixels)."""
  restored = (images + 1.0) * 128.0
  assert np.array_equal(restored, np.rint(restored))
  return restored.astype(np.uint8)


def rotations_matching(dataset, class_id, image):
  """Quarter turns k for which some drawing of class_id, turned by k, equals image exactly."""
  rows = dataset.images[class_id]
  return {k for k in range(4) if np.all(np.rot90(rows, k, axes=(1, 2)) == image, axis=(1, 2, 3)).any()}


def test_balanced_counts():
  np.testing.assert_array_equal(balanced_counts(23, 5), [5, 5, 5, 4, 4])
  np.testing.assert_array_equal(balanced_counts(60, 20), np.full(20, 3))


def test_episode_shapes_labels_and_provenance(dataset):
  episode = sampler(dataset, samples_transformer=25, samples_cnn=50).episode(0, 0, 0)
  assert episode.support_images.shape == (1, 25, 28, 28, 1) and episode.support_images.dtype == np.float32
  assert episode.query_images.shape == (1, 50, 28, 28, 1)
  for labels in (episode.support_labels, episode.query_labels, episode.support_classes):
    assert labels.dtype == np.int32
  support_counts = np.bincount(episode.support_labels[0], minlength=20)
  assert sorted(support_counts, reverse=True) == list(balanced_counts(25, 20))
  np.testing.assert_array_equal(np.bincount(episode.query_labels[0], minlength=20), balanced_counts(50, 20))
  # The first B mod N label slots get the extra sample (label = slot in the shuffled class order).
  np.testing.assert_array_equal(support_counts, balanced_counts(25, 20))
  # One class per label, the same in support and query, 20 distinct training classes.
  label_to_class = {}
  for labels, classes in ((episode.support_labels[0], episode.support_classes[0]),
                          (episode.query_labels[0], episode.query_classes[0])):
    for label, class_id in zip(labels, classes):
      assert label_to_class.setdefault(label, class_id) == class_id
  assert len(set(label_to_class.values())) == 20 and set(label_to_class.values()) <= set(TRAIN_IDS)
  # Every image is a genuine, unaugmented drawing of its class.
  for images, classes in ((episode.support_images[0], episode.support_classes[0]),
                          (episode.query_images[0], episode.query_classes[0])):
    for image, class_id in zip(raw(images), classes):
      assert rotations_matching(dataset, class_id, image) >= {0}
  # Support draws of one class are distinct drawings (without replacement within a batch).
  for label in range(5):
    shots = raw(episode.support_images[0][episode.support_labels[0] == label])
    assert len({shot.tobytes() for shot in shots}) == len(shots)


def test_normalisation_range(dataset):
  batch = sampler(dataset).batch(3, 0, range(4))
  values = np.concatenate([batch.support_images.ravel(), batch.query_images.ravel()])
  assert values.min() == -1.0 and values.max() == 0.9921875   # ink 255 -> 255/128 - 1


def test_semi_supervised_labels(dataset):
  s = sampler(dataset, num_labels=5, samples_transformer=15, samples_cnn=10, unlabeled_samples_per_class=1)
  episode = s.episode(0, 1, 2)
  labels, classes = episode.support_labels[0], episode.support_classes[0]
  np.testing.assert_array_equal(np.bincount(labels, minlength=6), [2, 2, 2, 2, 2, 5])   # label N = 5
  assert set(classes[labels == 5]) == set(classes[labels < 5])    # one unlabelled sample per class
  assert episode.query_labels.max() < 5


def test_support_query_overlap_rate(dataset):
  s = sampler(dataset)   # 20-way, 1 shot, 3 queries per class
  overlaps = []
  for index in range(100):
    episode = s.episode(11, 0, index)
    support, query = raw(episode.support_images[0]), raw(episode.query_images[0])
    for label in range(20):
      shot = support[episode.support_labels[0] == label][0]
      queries = query[episode.query_labels[0] == label]
      overlaps.append(any(np.array_equal(shot, q) for q in queries))
  assert abs(np.mean(overlaps) - 3 / 20) < 0.03


def test_rot90_per_class_in_training_only(dataset):
  train, test = sampler(dataset, training=True), sampler(dataset, training=False)
  seen_turns = set()
  for index in range(4):
    episode = train.episode(5, 0, index)
    for label in range(20):
      turns = set(range(4))
      for images, labels, classes in (
          (episode.support_images, episode.support_labels, episode.support_classes),
          (episode.query_images, episode.query_labels, episode.query_classes)):
        chosen = labels[0] == label
        for image, class_id in zip(raw(images[0][chosen]), classes[0][chosen]):
          turns &= rotations_matching(dataset, class_id, image)
      assert turns, "support and query of a class must share one rotation"
      if len(turns) == 1:
        seen_turns |= turns
  assert seen_turns == {0, 1, 2, 3}
  episode = test.episode(5, 0, 0)   # test settings: never rotated
  for image, class_id in zip(raw(episode.query_images[0]), episode.query_classes[0]):
    assert np.all(dataset.images[class_id] == image, axis=(1, 2, 3)).any()


def test_determinism_and_batch_equals_episodes(dataset):
  s = sampler(dataset, training=True)
  first, again = s.episode(7, 3, 2), s.episode(7, 3, 2)
  batch = s.batch(7, 3, range(4))
  for name in ("support_images", "support_labels", "query_images", "query_labels", "support_classes",
               "query_classes"):
    np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    np.testing.assert_array_equal(getattr(batch, name)[2], getattr(first, name)[0])
    assert getattr(batch, name).shape[0] == 4
  for other in (s.episode(7, 3, 3), s.episode(7, 4, 2), s.episode(8, 3, 2)):
    assert not np.array_equal(other.support_classes, first.support_classes)
  shuffled_batch = s.batch(7, 3, [3, 2])
  np.testing.assert_array_equal(shuffled_batch.query_images[1], first.query_images[0])


def test_eval_task(dataset):
  s = sampler(dataset, training=True, ids=np.arange(1200, 1623), query_size=100)
  episode, query_images, query_labels = s.eval_task(1234, 0, 4)
  assert episode.support_images.shape == (1, 20, 28, 28, 1)
  assert query_images.shape == (4, 100, 28, 28, 1) and query_labels.shape == (4, 100)
  np.testing.assert_array_equal(episode.query_images[0], query_images[0])
  for labels in query_labels:
    np.testing.assert_array_equal(np.bincount(labels, minlength=20), np.full(20, 5))
  assert not np.array_equal(query_images[0], query_images[1])   # independent query batches
  again = s.eval_task(1234, 0, 4)
  np.testing.assert_array_equal(again[0].support_images, episode.support_images)
  np.testing.assert_array_equal(again[1], query_images)
  assert not np.array_equal(s.eval_task(1234, 1, 1)[0].support_classes, episode.support_classes)
  assert not np.array_equal(s.episode(1234, 0, 0).support_classes, episode.support_classes)
  # Same classes and the same rotation draw for the support set and every query batch.
  label_class = dict(zip(episode.support_labels[0], episode.support_classes[0]))
  for label in range(0, 20, 4):
    class_id = label_class[label]
    shot = raw(episode.support_images[0][episode.support_labels[0] == label])[0]
    turns = rotations_matching(dataset, class_id, shot)
    for images, labels in zip(query_images, query_labels):
      for image in raw(images[labels == label]):
        turns &= rotations_matching(dataset, class_id, image)
    assert turns


def test_unbalanced_mode(dataset):
  s = sampler(dataset, balanced_batches=False, num_labels=5, samples_transformer=7, samples_cnn=13)
  episode = s.episode(0, 0, 0)
  assert episode.support_labels.shape == (1, 7) and episode.query_labels.shape == (1, 13)
  joint = np.concatenate([episode.support_labels[0], episode.query_labels[0]])
  np.testing.assert_array_equal(np.bincount(joint, minlength=5), np.full(5, 4))
  images = raw(np.concatenate([episode.support_images[0], episode.query_images[0]]))
  for label in range(5):   # one batch: no drawing repeats between support and query
    assert len({image.tobytes() for image in images[joint == label]}) == 4


def test_variable_size_rgb_dataset_with_resize_and_image_augmentation():
  rng = np.random.default_rng(0)
  classes = [rng.integers(0, 256, (n, 10, 10, 3), dtype=np.uint8) for n in (6, 9, 7, 8)]
  dataset = ClassDataset("toy", classes)
  data = omniglot_1shot_data(num_labels=3, samples_transformer=6, samples_cnn=9, image_size=8,
                             per_label_augmentation=False, random_rotate_by_90=False,
                             apply_image_augmentations=True)
  plain = EpisodeSampler(dataset, np.arange(4), EpisodeSpec.from_config(data, training=False))
  episode = plain.episode(0, 0, 0)
  assert episode.support_images.shape == (1, 6, 8, 8, 3)
  assert not plain.spec.image_augmentation   # never for test classes
  augmented = EpisodeSampler(dataset, np.arange(4), EpisodeSpec.from_config(data, training=True))
  assert augmented.spec.image_augmentation
  other = augmented.episode(0, 0, 0)
  assert other.query_images.shape == (1, 9, 8, 8, 3)
  # Same classes and samples (drawn before the augmentation), so only the shuffles and pixels differ.
  np.testing.assert_array_equal(np.sort(other.query_classes), np.sort(episode.query_classes))
  assert not np.allclose(other.query_images, episode.query_images)
  exact = EpisodeSampler(dataset, np.arange(4), EpisodeSpec.from_config(omniglot_1shot_data(
      num_labels=3, samples_transformer=6, samples_cnn=9, image_size=10, random_rotate_by_90=False), False))
  e = exact.episode(1, 0, 0)
  for image, class_id in zip(raw(e.support_images[0]), e.support_classes[0]):
    assert np.all(classes[class_id] == image, axis=(1, 2, 3)).any()


# ------------------------------------------------------------------------------------------------
# DataError paths


def test_more_ways_than_classes(dataset):
  with pytest.raises(DataError, match="num_labels=20 ways exceeds the 5 classes"):
    sampler(dataset, ids=np.arange(5))


def test_fewer_support_samples_than_ways(dataset):
  with pytest.raises(DataError, match="fewer support samples than num_labels=20 ways"):
    sampler(dataset, samples_transformer=19)


def test_too_many_unlabelled(dataset):
  with pytest.raises(DataError, match="unlabeled_samples_per_class=2 leaves some class without"):
    sampler(dataset, num_labels=5, samples_transformer=12, unlabeled_samples_per_class=2)
  with pytest.raises(DataError, match="balanced_batches=True"):
    sampler(dataset, num_labels=5, samples_transformer=15, unlabeled_samples_per_class=1,
            balanced_batches=False)


def test_class_too_small_for_a_batch(dataset):
  with pytest.raises(DataError, match="has 20 images but an episode batch needs 21"):
    sampler(dataset, num_labels=5, samples_cnn=105)
  small = ClassDataset("toy", [np.zeros((n, 4, 4, 1), np.uint8) for n in (5, 5, 2)])
  spec = EpisodeSpec(ways=3, support_size=3, query_size=9)
  with pytest.raises(DataError, match="Class 2 of 'toy' has 2 images"):
    EpisodeSampler(small, np.arange(3), spec)


def test_bad_class_ids_and_image_checks(dataset):
  with pytest.raises(DataError, match="must lie in 0..1622"):
    sampler(dataset, ids=np.arange(1600, 1700))
  with pytest.raises(DataError, match="duplicates"):
    sampler(dataset, ids=np.r_[np.arange(30), 3])
  grey_aug = EpisodeSpec(ways=2, support_size=2, query_size=2, image_augmentation=True)
  with pytest.raises(DataError, match="needs RGB images"):
    EpisodeSampler(dataset, np.arange(10), grey_aug)
  wide = ClassDataset("wide", np.zeros((3, 4, 5, 6, 1), np.uint8))
  with pytest.raises(DataError, match="needs square images"):
    EpisodeSampler(wide, np.arange(3),
                   EpisodeSpec(2, 2, 2, augmentation=AugmentationSettings(rotate_by_90=True)))


def test_episode_concatenate_keeps_all_fields(dataset):
  s = sampler(dataset)
  joined = Episode.concatenate([s.episode(0, 0, 0), s.episode(0, 0, 1)])
  assert joined.support_classes.shape == (2, 20) and joined.query_images.shape == (2, 60, 28, 28, 1)


def test_batch_equals_episodes_with_every_augmentation(dataset):
  s = sampler(dataset, training=True, rotation_probability=0.5, roll_probability=0.5, resize_probability=0.5,
              contrast_probability=0.5, smooth_probability=0.5, negate_probability=0.5, image_size=20)
  batch = s.batch(2, 9, range(3))
  assert batch.query_images.shape == (3, 60, 20, 20, 1)
  for index in range(3):
    single = s.episode(2, 9, index)
    np.testing.assert_array_equal(batch.support_images[index], single.support_images[0])
    np.testing.assert_array_equal(batch.query_images[index], single.query_images[0])
  assert batch.support_images.min() >= -1 and batch.support_images.max() <= 1   # 0..255 after each transform
  rng = np.random.default_rng(1)
  rgb = ClassDataset("rgb", rng.integers(0, 256, (6, 5, 12, 12, 3), dtype=np.uint8))
  spec = EpisodeSpec(ways=3, support_size=3, query_size=6, image_size=10, image_augmentation=True)
  rgb_sampler = EpisodeSampler(rgb, np.arange(6), spec)
  batch = rgb_sampler.batch(0, 0, [4, 5])
  np.testing.assert_array_equal(batch.query_images[1], rgb_sampler.episode(0, 0, 5).query_images[0])
