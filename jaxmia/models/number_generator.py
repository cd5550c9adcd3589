"""A StyleGAN2 prior of k-digit numbers built from a StyleGAN2 of single digits.

One digit generator (shared weights) draws each of a number's k digits from its own latent, and the digits are
laid out exactly as the `numbers_embedded` builder lays out real handwriting (`jaxmia.data.numbers_layout`:
each digit's central column band, side by side, letterboxed into the square). Why: StyleGAN2s trained on the
composites themselves collapsed to one or a few numbers on this CPU budget (docs/figures/numbers_prior), while
the digit prior draws every digit; composing it draws every number, each position independently.

To the attack it is one StyleGAN2: a latent is the k digits' latents concatenated,
`z [B, k * z_dim]` -> `ws [B, num_ws, k * w_dim]` -> image `[B, S, S, C]`, so optimising one w per image
(`[B, 1, k * w_dim]`, broadcast over the ws) moves every digit, each through its own part of w.
"""
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
from flax.core import FrozenDict

from jaxmia.data import image_ops
from jaxmia.data import numbers_layout
from jaxmia.models import stylegan2


class NumberGenerator(nn.Module):
  """k digit images of one digit StyleGAN2 written side by side.

  Attributes:
    num_digits: k, the digits per number.
    digit_generator: the `stylegan2.Generator` kwargs of the digit prior (its `jaxmia.json` module_kwargs).
    img_resolution: S, the side of the number images (the builder's `image_size`).
    digit_padding: rows/columns of background around the 28x28 digit in the digit prior's images (2 for
      digits zero-padded to 32x32, the digit builder's `resize='pad'`).
    dtype: the digit synthesis compute dtype.
  """
  num_digits: int
  digit_generator: Mapping[str, Any]
  img_resolution: int = 32
  digit_padding: int = 2
  dtype: Any = jnp.float32

  def __post_init__(self):
    object.__setattr__(self, "digit_generator", FrozenDict(self.digit_generator))
    if self.num_digits < 1:
      raise ValueError(f"num_digits must be >= 1, got {self.num_digits}.")
    digit_resolution = self.digit_generator["img_resolution"]
    if 2 * self.digit_padding + numbers_layout.DIGIT_SIZE != digit_resolution:
      raise ValueError(f"A {digit_resolution}x{digit_resolution} digit prior cannot hold a "
                       f"{numbers_layout.DIGIT_SIZE}x{numbers_layout.DIGIT_SIZE} digit with digit_padding="
                       f"{self.digit_padding}; use a prior of padded digits (configs/gan_digits.py).")
    if self.digit_generator.get("c_dim", 0):
      raise ValueError("The digit prior must be unconditional (c_dim = 0).")
    super().__post_init__()

  def setup(self):
    self.digit = stylegan2.Generator(**self.digit_generator, dtype=self.dtype, name="digit")

  @property
  def z_dim(self) -> int:
    return self.num_digits * self.digit_generator["z_dim"]

  @property
  def w_dim(self) -> int:
    return self.num_digits * self.digit_generator["w_dim"]

  @property
  def c_dim(self) -> int:
    return 0

  @property
  def img_channels(self) -> int:
    return self.digit_generator["img_channels"]

  @property
  def num_ws(self) -> int:
    return stylegan2.num_ws_for(self.digit_generator["img_resolution"])

  def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
    """`z [B, k * z_dim]` -> `ws [B, num_ws, k * w_dim]` (digit i's ws in the i-th w_dim slice)."""
    del c  # unconditional
    k, batch = self.num_digits, z.shape[0]
    ws = self.digit.mapping(z.reshape(batch * k, -1), None, truncation_psi, truncation_cutoff)
    return ws.reshape(batch, k, self.num_ws, -1).transpose(0, 2, 1, 3).reshape(batch, self.num_ws, self.w_dim)

  def synthesis(self, ws, noise_mode: str = "random"):
    """`ws [B, num_ws, k * w_dim]` -> number images `[B, S, S, C]` float32 (background -1), not clamped."""
    k, batch = self.num_digits, ws.shape[0]
    digit_ws = ws.reshape(batch, self.num_ws, k, -1).transpose(0, 2, 1, 3).reshape(batch * k, self.num_ws, -1)
    digits = self.digit.synthesis(digit_ws, noise_mode)  # [B * k, R, R, C]
    return write_numbers(digits.reshape(batch, k, *digits.shape[1:]), self.digit_padding, self.img_resolution)

  def __call__(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, noise_mode: str = "random"):
    return self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff), noise_mode)


def write_numbers(digits, padding: int, size: int):
  """Number images `[B, size, size, C]` (background -1) of digit images `digits` `[B, k, R, R, C]` in [-1, 1],
  each a 28x28 digit with `padding` background around it: the `numbers_embedded` builder's layout."""
  batch, k = digits.shape[:2]
  first, last = numbers_layout.DIGIT_COLUMNS
  bands = digits[:, :, padding:padding + numbers_layout.DIGIT_SIZE, padding + first:padding + last]
  height, width = numbers_layout.strip_shape(k)
  strip = bands.transpose(0, 2, 1, 3, 4).reshape(batch, height, width, -1)  # [B, 28, k * 22, C]
  new_height, new_width, top, left = numbers_layout.letterbox_geometry(height, width, size)
  scaled = image_ops.resize(strip, (new_height, new_width), antialias=True)
  pad = ((0, 0), (top, size - new_height - top), (left, size - new_width - left), (0, 0))
  return jnp.pad(scaled, pad, constant_values=-1.0)


def number_variables(digit_variables: Mapping[str, Any]) -> dict:
  """The `NumberGenerator` variables holding the digit prior's `digit_variables` (every collection)."""
  return {collection: {"digit": tree} for collection, tree in digit_variables.items()}
