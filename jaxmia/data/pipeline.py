"""Dataset configs, random-access splits and deterministic, resumable, per-process batches.

    config = get_dataset_config('facescrub'); config.manual_dir = '/data/facescrub'
    train = load_split(config, 'train')          # prepares the TFDS dataset on first use
    for batch in batches(train, batch_size=128, seed=0, epoch=3, start_batch=k):
      ...                                        # {'image': uint8 [b, S, S, 3], 'label': int32 [b]}

Split names: 'train', 'test', 'validation' (carved from the stored train split when
`validation_fraction > 0`) and, for 'celeba', 'mnist_embedded' and 'numbers_embedded', 'public' (the GAN
prior's data; ignore its labels, -1 for CelebA's identities outside the classes).
The stored train/test split follows PPA (see `builders`); the views below are pure functions of the stored
labels and `split_seed`, so changing them never re-prepares the data:
- validation: PPA's rule, `RandomState(split_seed).permutation(n)`, the last `int(validation_fraction * n)`
  positions are validation, the rest train (both kept in stored order).
- `samples_per_class=k`: of each class's remaining training examples, the first `k` of a per-class permutation
  drawn from `default_rng(split_seed)` (classes in label order). Subsets are nested (k=10 within k=20) and the
  validation set does not depend on `k`.
- `public_subset=k` (CelebA): the public examples at the first `k` positions of
  `RandomState(split_seed).permutation(n)`, kept in stored order (KED-MI's GAN trains on 30,000 public images).
"""
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np
from ml_collections import config_dict

DATASETS = ('facescrub', 'celeba', 'stanford_dogs', 'mnist_embedded', 'numbers_embedded')
# Config fields that select the prepared TFDS variant (the stored bytes); the others only select views.
_STORAGE_FIELDS = ('image_size', 'resize', 'split_seed', 'test_fraction', 'num_identities', 'crop_to_bbox',
                   'public_fraction', 'num_digits', 'train_per_class', 'test_per_class', 'public_per_class')


def get_dataset_config(name: str) -> ml_collections.ConfigDict:
  """Default config of dataset `name` (one of `DATASETS`), with PPA's settings."""
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {DATASETS}.')
  config = ml_collections.ConfigDict()
  config.name = name
  # Root of the manual download (layout in the builder's error message); not needed once prepared, nor for
  # 'mnist_embedded'.
  config.manual_dir = config_dict.placeholder(str)
  config.data_dir = config_dict.placeholder(str)  # TFDS data dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.image_size = 224               # stored images are uint8 [image_size, image_size, 3]
  config.resize = 'stretch'             # 'stretch' | 'center_crop' | 'pad' (see jaxmia.data.builders)
  config.split_seed = 42                # seed of the train/test split and of the subsets below (PPA: 42)
  config.test_fraction = 0.1            # PPA's 90/10 split
  config.samples_per_class = config_dict.placeholder(int)  # keep only k training images per class
  config.validation_fraction = 0.0      # fraction of the stored train split held out as 'validation'
  if name == 'celeba':
    config.resize = 'center_crop'       # PPA: shorter side to image_size, then centre crop
    config.num_identities = 1000        # keep the identities with most images (the others are 'public')
    config.public_subset = config_dict.placeholder(int)  # keep only k seeded 'public' images (None: all)
  elif name == 'stanford_dogs':
    config.crop_to_bbox = False         # crop to the first annotated box (PPA: targets False, evaluation True)
  elif name == 'mnist_embedded':
    config.image_size = 32              # 28x28 digits zero-padded to 32x32
    config.resize = 'pad'
    config.test_fraction = 0.2          # of the private part: 2,000 train / 500 test images
    config.public_fraction = 0.5        # per class, for the GAN prior ('public' split, 2,500 images)
  elif name == 'numbers_embedded':
    config.image_size = 32              # k digits side by side, letterboxed into 32x32
    config.resize = 'letterbox'
    config.num_digits = 2               # classes are the 10**num_digits numbers
    config.test_fraction = 0.2          # digit images: 250 public, 200 train, 50 test per digit (as mnist_embedded)
    config.public_fraction = 0.5
    config.train_per_class = 100        # stored composites per class (samples_per_class takes a nested subset)
    config.test_per_class = 10
    config.public_per_class = 100       # the attacker's data (GAN prior)
  return config


@dataclasses.dataclass(frozen=True, eq=False)
class IndexedSource:
  """grain random-access source: example `i` is `records[indices[i]]` as `{'image', 'label': int32}`."""
  records: Any
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    example = self.records[int(self.indices[i])]
    return {'image': example['image'], 'label': np.int32(example['label'])}

  def __repr__(self) -> str:
    return f'IndexedSource({self.records!r}, {len(self.indices)} of {len(self.records)} examples)'


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """A split: `source[i]` -> `{'image': uint8 [S, S, 3], 'label': int32}`; `labels`: int32 [num_examples]."""
  source: IndexedSource
  num_classes: int
  num_examples: int
  class_names: tuple[str, ...]
  labels: np.ndarray


def train_subsets(labels: np.ndarray, num_classes: int, seed: int, validation_fraction: float = 0.0,
                  samples_per_class: int | None = None) -> dict[str, np.ndarray]:
  """{'train', 'validation'} positions into the stored train split (rules in the module docstring)."""
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f'validation_fraction must be in [0, 1), got {validation_fraction}.')
  num = len(labels)
  order = np.random.RandomState(seed).permutation(num)
  num_validation = int(validation_fraction * num)
  train, validation = np.sort(order[:num - num_validation]), np.sort(order[num - num_validation:])
  if samples_per_class is not None:
    if samples_per_class < 1:
      raise ValueError(f'samples_per_class must be positive or None, got {samples_per_class}.')
    rng = np.random.default_rng(seed)
    keep, short = [], {}
    for label in range(num_classes):
      members = rng.permutation(train[labels[train] == label])
      if len(members) < samples_per_class:
        short[label] = len(members)
      keep.append(members[:samples_per_class])
    if short:
      raise ValueError(f'samples_per_class={samples_per_class} but {len(short)} classes have fewer training '
                       f'images (label: count) {dict(list(short.items())[:10])}; choose a smaller value.')
    train = train[np.isin(train, np.concatenate(keep))]
  return {'train': train, 'validation': validation}


def public_subset(num_examples: int, seed: int, size: int) -> np.ndarray:
  """Sorted positions of a seeded `size`-example subset of a public split of `num_examples` (module docstring)."""
  if not 1 <= size <= num_examples:
    raise ValueError(f'public_subset must be in [1, {num_examples}] (the public images), got {size}.')
  return np.sort(np.random.RandomState(seed).permutation(num_examples)[:size])


def load_split(dataset_config: ml_collections.ConfigDict, split: str) -> Split:
  """Loads `split` of the dataset described by `dataset_config` (see `get_dataset_config`).

  Prepares the TFDS dataset on first use (idempotent; an interrupted preparation leaves only a temporary
  folder and starts over). Raises `builders.ManualDirError` showing the expected layout if the manual
  directory is missing or malformed.
  """
  from jaxmia.data import builders  # noqa: PLC0415 (imports TFDS, which takes seconds)
  storage = {key: dataset_config[key] for key in _STORAGE_FIELDS if key in dataset_config}
  builder = builders.make_builder(dataset_config.name, dataset_config.get('data_dir'), **storage)
  builders.prepare(builder, dataset_config.get('manual_dir'))

  stored_splits = sorted(builder.info.splits)
  stored = 'train' if split == 'validation' else split
  if stored not in stored_splits:
    raise ValueError(f'Unknown split {split!r} for {dataset_config.name}; expected one of '
                     f"{sorted(set(stored_splits) | {'validation'})}.")
  class_names = tuple(builder.info.features['label'].names)
  labels = np.asarray(builder.info.metadata['labels'][stored], np.int32)
  indices = np.arange(len(labels))
  if stored == 'train':
    indices = train_subsets(labels, len(class_names), dataset_config.split_seed,
                            dataset_config.get('validation_fraction', 0.0),
                            dataset_config.get('samples_per_class'))[split]
    if split == 'validation' and not len(indices):
      raise ValueError("Split 'validation' is empty: set dataset_config.validation_fraction > 0.")
  elif stored == 'public' and dataset_config.get('public_subset') is not None:
    indices = public_subset(len(labels), dataset_config.split_seed, int(dataset_config.public_subset))
  records = builder.as_data_source(split=stored)
  return Split(IndexedSource(records, indices), num_classes=len(class_names), num_examples=len(indices),
               class_names=class_names, labels=labels[indices])


def epoch_seed(seed: int, epoch: int) -> int:
  """A 32-bit shuffle seed for (seed, epoch), decorrelated across both (grain's own per-epoch rule is seed+epoch)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def batches(split: Split, batch_size: int, seed: int, epoch: int, shuffle: bool = True, start_batch: int = 0,
            drop_remainder: bool = True, *, process_index: int | None = None,
            process_count: int | None = None,
            num_threads: int | None = None) -> Iterator[Mapping[str, np.ndarray]]:
  """This process's part of each global batch of one epoch, from global batch `start_batch` on.

  The epoch's order is a pure function of (seed, epoch) (grain's index shuffle, no buffer); global batch `k`
  holds shuffled positions `[k * batch_size, (k + 1) * batch_size)` and process `p` of `P` gets the contiguous
  block `[p * b, (p + 1) * b)` of it with `b = batch_size // P`, as `{'image': uint8 [b, S, S, 3],
  'label': int32 [b]}`. `process_index`/`process_count` default to JAX's; `num_threads` (default: one per
  CPU) batches are read ahead in threads (image decoding releases the GIL).
  """
  import grain  # noqa: PLC0415 (grain loads with the first batches)
  if process_index is None or process_count is None:
    import jax  # noqa: PLC0415 (import jaxmia.data stays JAX-free)
    process_index, process_count = jax.process_index(), jax.process_count()
  if batch_size % process_count:
    raise ValueError(f'Global batch size {batch_size} is not divisible by the {process_count} processes.')
  if not drop_remainder and process_count > 1:
    raise ValueError('drop_remainder=False would give processes different numbers of batches; use '
                     'drop_remainder=True with several processes.')
  num_examples = len(split.source)
  num_batches = num_examples // batch_size if drop_remainder else math.ceil(num_examples / batch_size)
  if num_batches == 0:
    raise ValueError(f'Global batch size {batch_size} exceeds the {num_examples} examples of the split '
                     'with drop_remainder=True.')
  dataset = grain.MapDataset.source(split.source)
  if shuffle:
    dataset = dataset.shuffle(seed=epoch_seed(seed, epoch))
  dataset = dataset.batch(batch_size // process_count, drop_remainder=drop_remainder)
  dataset = dataset[process_index:num_batches * process_count:process_count][start_batch:]
  num_threads = os.cpu_count() or 1 if num_threads is None else num_threads
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads)
  return iter(dataset.to_iter_dataset(read_options))


def load_arrays(split: Split, chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """All of a (small) split in order: (images uint8 [N, S, S, 3], labels int32 [N])."""
  chunks = list(batches(split, chunk_size, seed=0, epoch=0, shuffle=False, drop_remainder=False,
                        process_index=0, process_count=1))
  return (np.concatenate([c['image'] for c in chunks]), np.concatenate([c['label'] for c in chunks]))
