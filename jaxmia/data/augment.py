"""Training augmentation and evaluation preprocessing: uint8 or [0, 1] images in, `[B, S, S, 3]` in [-1, 1] out.

PPA's training transform on images already resized to the dataset resolution: RandomResizedCrop
(scale 0.85..1, square), ColorJitter(0.2, 0.2, 0.1, 0.1), RandomHorizontalFlip, Normalize(0.5, 0.5).
Everything is jit-able; randomness comes from one key per sample.
"""
import jax
import jax.numpy as jnp

from jaxmia.data import image_ops

Array = jax.Array


def to_unit_range(images: Array) -> Array:
  """uint8 images -> float32 in [0, 1]; float images (assumed in [0, 1]) -> float32."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"expected uint8 images or floats in [0, 1], got dtype {images.dtype}.")
  return images.astype(jnp.float32)


def normalize(images: Array) -> Array:
  """[0, 1] -> [-1, 1] (torchvision `Normalize(mean=0.5, std=0.5)`, jaxmia's model input range)."""
  return images * 2.0 - 1.0


def denormalize(images: Array) -> Array:
  """[-1, 1] -> [0, 1]."""
  return (images + 1.0) * 0.5


def train_augment(images: Array, keys: Array, *, size: int, crop_scale: tuple[float, float] = (0.85, 1.0),
                  crop_ratio: tuple[float, float] = (1.0, 1.0), brightness: float = 0.2, contrast: float = 0.2,
                  saturation: float = 0.1, hue: float = 0.1, flip: bool = True) -> Array:
  """PPA's training augmentation: `[B, H, W, 3]` uint8 or [0, 1] -> `[B, size, size, 3]` float32 in [-1, 1].

  Per sample (key `keys[i]`): random resized crop to `size` (torchvision sampling, antialiased resize),
  color jitter (torchvision ranges, random op order), horizontal flip with probability 0.5 if `flip`,
  then normalisation to [-1, 1].
  """
  sample_keys = jax.vmap(lambda key: jax.random.split(key, 3))(keys)   # [B, 3]
  crop_keys, jitter_keys, flip_keys = sample_keys[:, 0], sample_keys[:, 1], sample_keys[:, 2]
  x = image_ops.random_resized_crop(to_unit_range(images), crop_keys, size, scale=crop_scale, ratio=crop_ratio)
  x = image_ops.color_jitter(x, jitter_keys, brightness, contrast, saturation, hue)
  if flip:
    x = image_ops.horizontal_flip(x, flip_keys)
  return normalize(x)


def eval_transform(images: Array, *, size: int) -> Array:
  """`[B, H, W, 3]` uint8 or [0, 1] -> `[B, size, size, 3]` in [-1, 1]: antialiased resize, normalise."""
  return normalize(image_ops.resize(to_unit_range(images), size))
