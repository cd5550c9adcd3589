"""Differentiable augmentation for GAN training on small datasets (DiffAugment, Zhao et al., NeurIPS 2020).

The discriminator sees every image, real or generated, through the same random transformation, and the
generator's gradient flows through it. D then cannot memorise the few real images, while G is not pushed to
produce augmented-looking images, because the transformations below do not "leak" (their distribution of
outputs determines the distribution of inputs). Policies, applied in this order when listed:

  color        brightness + U(-0.5, 0.5); saturation x U(0, 2) around the pixel's channel mean; contrast
               x U(0.5, 1.5) around the image mean
  translation  shift by up to `size / 8` pixels (rounded) in each axis; uncovered pixels become 0
  cutout       a square of half the image size (rounded) at a random centre set to 0

Every draw is per image. Images are `[B, H, W, C]` in [-1, 1]; 0 (mid-grey) is the fill value of the paper's
implementation, kept so that the augmented reals and fakes share one distribution whatever the background.
"""
import jax
import jax.numpy as jnp

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
  """'translation,cutout' -> ('translation', 'cutout') in the canonical order; '' -> () (no augmentation)."""
  names = tuple(name.strip() for name in policy.split(",") if name.strip())
  unknown = sorted(set(names) - set(POLICIES))
  if unknown:
    raise ValueError(f"Unknown DiffAugment policy {', '.join(unknown)}; use a comma-separated subset of "
                     f"{', '.join(POLICIES)} (or '' for none).")
  return tuple(name for name in POLICIES if name in names)


def _color(images, key):
  b_key, s_key, c_key = jax.random.split(key, 3)
  shape = (images.shape[0], 1, 1, 1)
  images = images + (jax.random.uniform(b_key, shape, images.dtype) - 0.5)
  mean = jnp.mean(images, axis=3, keepdims=True)
  images = (images - mean) * (jax.random.uniform(s_key, shape, images.dtype) * 2.0) + mean
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  return (images - mean) * (jax.random.uniform(c_key, shape, images.dtype) + 0.5) + mean


def _shift(image, dy, dx):
  """`image` `[H, W, C]` moved by (dy, dx) pixels, zeros where nothing moved in."""
  h, w = image.shape[:2]
  rows, cols = jnp.arange(h) - dy, jnp.arange(w) - dx
  inside = ((rows >= 0) & (rows < h))[:, None, None] & ((cols >= 0) & (cols < w))[None, :, None]
  moved = image[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)]
  return jnp.where(inside, moved, jnp.zeros((), image.dtype))


def _translation(images, key, ratio=0.125):
  b, h, w = images.shape[:3]
  max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
  y_key, x_key = jax.random.split(key)
  dy = jax.random.randint(y_key, (b,), -max_dy, max_dy + 1)
  dx = jax.random.randint(x_key, (b,), -max_dx, max_dx + 1)
  return jax.vmap(_shift)(images, dy, dx)


def _cutout(images, key, ratio=0.5):
  b, h, w = images.shape[:3]
  size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
  y_key, x_key = jax.random.split(key)
  # Top-left corners; the square may stick out of the image by up to half its size, as a centre drawn
  # uniformly over the image would.
  top = jax.random.randint(y_key, (b, 1, 1), 0, h + (1 - size_y % 2)) - size_y // 2
  left = jax.random.randint(x_key, (b, 1, 1), 0, w + (1 - size_x % 2)) - size_x // 2
  rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  hole = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
  return jnp.where(hole[..., None], jnp.zeros((), images.dtype), images)


_TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(images: jax.Array, key: jax.Array, policy: tuple[str, ...]) -> jax.Array:
  """`images` `[B, H, W, C]` through the transformations of `policy` (see `parse_policy`), per-image draws."""
  for name, sub_key in zip(policy, jax.random.split(key, max(len(policy), 1))):
    images = _TRANSFORMS[name](images, sub_key)
  return images
