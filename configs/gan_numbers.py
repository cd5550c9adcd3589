"""StyleGAN2 prior of the embedded numbers (public composites of the public digit images), 32x32.

    python -m jaxmia.gan --config=configs/gan_numbers.py --workdir=runs/gan_numbers
    python -m jaxmia.gan --config=configs/gan_numbers.py:3 --workdir=runs/gan_numbers3   # 1,000 classes

`arg` is the number of digits (default 2: 100 classes). The public composites recombine only 2,500 digit
images, so D sees every image through DiffAugment ('translation,cutout'; colour jitter means nothing for grey
strokes); everything else is configs/gan_digits.py (NVlabs `auto` at 32x32) with wider networks, since a
composite holds k strokes at a smaller scale. How `converted_weights/numbers2_stylegan2` was made, its training
time and its class coverage: converted_weights/README.md.
Variant `:smoke` is a seconds-long run for tests.
"""
from jaxmia import data
from jaxmia.config import sibling

gan_digits = sibling(__file__, "gan_digits")


def get_config(arg=None):
  """`arg`: '1', '2' (default) or '3' digits, or 'smoke' for a tiny test run (2 digits)."""
  if arg not in (None, "1", "2", "3", "smoke"):
    raise ValueError(f"Unknown variant {arg!r}; use configs/gan_numbers.py[:1|:2|:3|:smoke].")
  config = gan_digits.get_config("smoke" if arg == "smoke" else None)
  config.dataset = data.get_dataset_config("numbers_embedded")
  config.dataset.num_digits = 2 if arg in (None, "smoke") else int(arg)
  config.diffaugment = "translation,cutout"
  if arg != "smoke":
    config.generator.channel_max = 48      # 48 channels up to 16x16, 32 at 32x32 (channel_base 1024)
    config.generator.channel_base = 1024
    config.discriminator.channel_max = 48
    config.discriminator.channel_base = 1024
    config.discriminator.mbstd_group_size = 16  # the whole batch: with groups of 4 G collapsed to one sample
    config.total_kimg = 80.0
    config.ema_kimg = 5.0
  return config
