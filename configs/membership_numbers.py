"""Membership inference against a many-class numbers target (`jaxmia.train --config=configs/numbers.py
--workdir=runs/numbers`):

    python -m jaxmia.membership --config=configs/membership_numbers.py --workdir=runs/membership_numbers

Members: the target's 30 training images per class (3,000 for 100 classes); non-members: its test images. Shadows
train like the target on 3,000 of the public composites (which share no digit image with the private ones).
`:smoke` is the tiny test variant of configs/membership_digits.py pointed at a numbers smoke target.
Fields not set here: configs/membership_digits.py.
"""
from jaxmia.config import sibling

membership_digits = sibling(__file__, "membership_digits")


def get_config(arg=None):
  """`arg`: None for the full evaluation, 'smoke' for the tiny test variant."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown membership variant {arg!r}; use configs/membership_numbers.py[:smoke].")
  config = membership_digits.get_config(arg)
  config.target_workdir = "runs/numbers_smoke" if arg == "smoke" else "runs/numbers"  # jaxmia.train workdir
  return config
