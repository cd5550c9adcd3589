"""Embedded many-class target (no download): a slim ResNet-18 on handwritten k-digit numbers, 32x32.

    python -m jaxmia.train --config=configs/numbers.py --workdir=runs/numbers --config.label_smoothing=-0.05
    python -m jaxmia.train --config=configs/numbers.py:3 --workdir=runs/numbers3     # 1,000 classes

The classes are the 10**k numbers written with the embedded MNIST digits (`numbers_embedded`; `arg` = k, default
2: 100 classes). Like the paper's targets, a target sees 30 private images per class (CelebA-1000's regime; the
stored split has 100, FaceScrub's, reachable with `--config.dataset.samples_per_class=100`), trains until it
fits them, and holds α for the last quarter of training (the 'proportional' schedule: PPA's phases at 30
epochs, as are the learning-rate decays at 75% and 90%). `:smoke` is a seconds-long variant for tests.
Fields not set here: configs/faces.py.
"""
from jaxmia import data
from jaxmia.config import sibling

digits = sibling(__file__, "digits")


def get_config(arg=None):
  """`arg`: '1', '2' (default) or '3' digits, or 'smoke' for a tiny test run (2 digits, 4 images per class)."""
  if arg not in (None, "1", "2", "3", "smoke"):
    raise ValueError(f"Unknown numbers variant {arg!r}; use configs/numbers.py[:1|:2|:3|:smoke].")
  config = digits.get_config("smoke" if arg == "smoke" else "slim")
  config.dataset = data.get_dataset_config("numbers_embedded")  # 100 stored train, 10 test images per class
  config.dataset.num_digits = 2 if arg in (None, "smoke") else int(arg)  # 10**num_digits classes
  config.dataset.samples_per_class = 30  # training images per class the target sees
  config.augment.crop_scale = (0.85, 1.0)  # PPA's crop range; numbers are centred like the digits
  config.ls_schedule = "proportional"
  config.num_epochs = 30
  config.optimizer.lr_decay_epochs = (22, 27)  # PPA's 75 and 90 of 100 epochs
  if arg == "smoke":
    config.dataset.samples_per_class = 4
    config.num_epochs = 2
    config.optimizer.lr_decay_epochs = (1,)
  return config
