"""Image operations on batches `[B, H, W, C]` (float), torchvision-compatible and jit-able.

Resizing is separable bilinear interpolation written as two small matrix products,
`out = A @ x @ B^T` with `A` `[h, H]` and `B` `[w, W]`. The weights reproduce torchvision's tensor
`resize` (`F.interpolate(mode='bilinear', align_corners=False)`, with or without `antialias`): output
pixel `o` is centred at `(o + 0.5) * scale` in input pixels (`scale = in / out`) and takes a triangle
filter of half-width `max(scale, 1)` (antialiased) or 1 (plain bilinear), renormalised over the pixels
inside the image. For static shapes the matrices are built once with NumPy at trace time; random crops
build them per sample with jnp from the sampled box.

Random ops take one PRNG key per sample (`keys` `[B]`), so sample `i`'s output depends only on
`x[i]` and `keys[i]`, never on its position in the batch.
"""
import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
# ITU-R 601 luma weights, as torchvision's `rgb_to_grayscale`.
_LUMA = (0.2989, 0.587, 0.114)


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  height, width = size
  return int(height), int(width)


def _triangle_weights(xp, start, length, in_size: int, out_size: int, antialias: bool):
  """`[out_size, in_size]` float32 weights resampling the window `[start, start + length)` to `out_size` pixels.

  `xp` is `np` (static window) or `jnp` (traced window). Pixel positions are computed in float32 in the
  same order as PyTorch's CPU kernels: float32 coordinates near 1000 carry ~6e-5 absolute error, and
  following PyTorch keeps NumPy-built weights within ~1e-6 of torchvision instead of ~4e-5. Under jit,
  XLA may replace `/ out_size` by a multiplication with its reciprocal (1 ulp off), so traced windows
  can deviate from torchvision by up to ~3e-5 on a few pixels.
  """
  f32 = xp.float32
  scale = xp.asarray(length, f32) / f32(out_size)
  centres = scale * (xp.arange(out_size, dtype=f32) + 0.5)
  offsets = xp.arange(in_size, dtype=f32) - xp.asarray(start, f32)   # pixel index relative to the window
  distance = (offsets[None, :] - centres[:, None]) + 0.5
  if antialias:   # low-pass when shrinking: the triangle widens by the scale factor
    distance = distance * (1.0 / xp.maximum(scale, 1.0))
  weights = xp.maximum(0.0, 1.0 - xp.abs(distance))
  inside = (offsets >= 0) & (offsets < length)
  weights = xp.where(inside[None, :], weights, 0.0).astype(f32)
  return weights / weights.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
  """Interpolation matrix `[out_size, in_size]` (float32, read-only) of a torchvision bilinear resize."""
  weights = _triangle_weights(np, 0, in_size, in_size, out_size, antialias)
  weights.setflags(write=False)
  return weights


def _compute_dtype(x: Array):
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"image ops need float images, got {x.dtype}; convert uint8 images with "
                    "jaxmia.data.augment.to_unit_range first.")
  return jnp.promote_types(x.dtype, jnp.float32)


def _separable(x: Array, rows, cols) -> Array:
  """`rows @ x @ cols^T` on the H and W axes of `x` `[..., H, W, C]`; `None` leaves an axis unchanged."""
  dtype = _compute_dtype(x)
  out = x.astype(dtype)
  apply_rows = lambda y: jnp.einsum("oh,...hwc->...owc", rows.astype(dtype), y, precision=_HIGHEST)
  apply_cols = lambda y: jnp.einsum("pw,...hwc->...hpc", cols.astype(dtype), y, precision=_HIGHEST)
  if rows is None or cols is None:
    out = apply_rows(out) if rows is not None else out
    out = apply_cols(out) if cols is not None else out
    return out.astype(x.dtype)
  (h, height), (w, width) = rows.shape, cols.shape
  if h * height * width + h * width * w <= height * w * width + h * height * w:   # cheaper order first
    out = apply_cols(apply_rows(out))
  else:
    out = apply_rows(apply_cols(out))
  return out.astype(x.dtype)


def resize(x: Array, size: int | tuple[int, int], antialias: bool = True) -> Array:
  """Bilinear resize of `[B, H, W, C]` to `[B, h, w, C]` like torchvision's tensor `resize`.

  `antialias=True` matches `torchvision.transforms.functional.resize(antialias=True)`;
  `antialias=False` matches `F.interpolate(mode='bilinear', align_corners=False)` (pytorch-fid's
  resize to 299), which does not low-pass filter when shrinking.
  """
  return _resize(x, _size_pair(size), bool(antialias))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize(x: Array, size: tuple[int, int], antialias: bool) -> Array:
  (h, w), (height, width) = size, x.shape[-3:-1]
  rows = None if h == height else resize_weights(height, h, antialias)
  cols = None if w == width else resize_weights(width, w, antialias)
  return _separable(x, rows, cols)


def center_crop(x: Array, size: int | tuple[int, int]) -> Array:
  """Central `[B, h, w, C]` window of `[B, H, W, C]`; offsets `int(round((H - h) / 2))` as torchvision."""
  h, w = _size_pair(size)
  height, width = x.shape[-3:-1]
  if h > height or w > width:
    raise ValueError(f"center_crop to {(h, w)} is larger than the image {(height, width)}; "
                     "resize the image up first or choose a smaller crop.")
  top, left = int(round((height - h) / 2)), int(round((width - w) / 2))
  return x[..., top:top + h, left:left + w, :]


def _sample_crop_box(key, height: int, width: int, scale, ratio, attempts: int = 10) -> Array:
  """`[top, left, h, w]` int32 drawn like torchvision's `RandomResizedCrop.get_params`.

  All `attempts` candidates are drawn at once; the first that fits is used, else the fallback crop
  (the whole image, or the largest central crop with the nearest allowed aspect ratio). One uniform draw
  feeds everything (each `jax.random` call adds about a second of compile time on CPU).
  """
  u = jax.random.uniform(key, (2 * attempts + 2,))
  target_area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:attempts])
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  aspect = jnp.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[attempts:2 * attempts])
  ws = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
  hs = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
  fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = jnp.argmax(fits)

  in_ratio = width / height
  if in_ratio < min(ratio):
    fallback_h, fallback_w = int(round(width / min(ratio))), width
  elif in_ratio > max(ratio):
    fallback_h, fallback_w = height, int(round(height * max(ratio)))
  else:
    fallback_h, fallback_w = height, width

  found = fits.any()
  h = jnp.where(found, hs[first], fallback_h)
  w = jnp.where(found, ws[first], fallback_w)
  # Uniform integer offsets in [0, size - crop]; the central crop for the fallback.
  top = jnp.minimum(jnp.floor(u[-2] * (height - h + 1)).astype(jnp.int32), height - h)
  left = jnp.minimum(jnp.floor(u[-1] * (width - w + 1)).astype(jnp.int32), width - w)
  top = jnp.where(found, top, (height - fallback_h) // 2)
  left = jnp.where(found, left, (width - fallback_w) // 2)
  return jnp.stack([top, left, h, w]).astype(jnp.int32)


def sample_crop_boxes(keys: Array, image_size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Array:
  """Crop boxes `[B, 4]` int32 (`top, left, height, width`) sampled like torchvision's `RandomResizedCrop`.

  Per sample: area fraction uniform in `scale`, aspect ratio (w / h) log-uniform in `ratio`, 10 attempts
  with torchvision's central-crop fallback; one key per sample.
  """
  scale, ratio = tuple(float(v) for v in scale), tuple(float(v) for v in ratio)
  if not (len(scale) == len(ratio) == 2 and 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
    raise ValueError(f"crop boxes need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], "
                     f"got scale={scale}, ratio={ratio}.")
  return _sample_crop_boxes(keys, _size_pair(tuple(image_size)), scale, ratio)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _sample_crop_boxes(keys: Array, image_size: tuple[int, int], scale, ratio) -> Array:
  return jax.vmap(lambda key: _sample_crop_box(key, *image_size, scale, ratio))(keys)


def crop_and_resize(x: Array, boxes: Array, size: int | tuple[int, int], antialias: bool = True) -> Array:
  """Crops box `i` (`[top, left, height, width]`, traced ints) from sample `i` and resizes it to `size`.

  `x` `[B, H, W, C]`, `boxes` `[B, 4]` -> `[B, h, w, C]`. Each sample gets its own interpolation matrices,
  so this equals `resize(x[i:i+1, top:top+height, left:left+width], size, antialias)` for every `i`.
  """
  return _crop_and_resize(x, boxes, _size_pair(size), bool(antialias))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _crop_and_resize(x: Array, boxes: Array, size: tuple[int, int], antialias: bool) -> Array:
  (out_h, out_w), (height, width) = size, x.shape[1:3]

  def crop_one(image, box):
    top, left, h, w = box[0], box[1], box[2], box[3]
    rows = _triangle_weights(jnp, top, h, height, out_h, antialias)
    cols = _triangle_weights(jnp, left, w, width, out_w, antialias)
    return _separable(image, rows, cols)

  return jax.vmap(crop_one)(x, boxes)


def random_resized_crop(x: Array, keys: Array, size: int | tuple[int, int],
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), antialias: bool = True) -> Array:
  """Per-sample torchvision `RandomResizedCrop`: `[B, H, W, C]` -> `[B, h, w, C]`, one key per sample.

  Boxes from `sample_crop_boxes`, each resized with its own matrices by `crop_and_resize` (antialiased
  when shrinking, torchvision's default).
  """
  return crop_and_resize(x, sample_crop_boxes(keys, x.shape[1:3], scale, ratio), size, antialias)


@jax.jit
def horizontal_flip(x: Array, keys: Array, p: float = 0.5) -> Array:
  """Mirrors each sample of `[B, H, W, C]` left-right with probability `p` (one key per sample)."""
  flip = jax.vmap(lambda key: jax.random.uniform(key) < p)(keys)
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def _per_sample(factor, x: Array) -> Array:
  """Broadcasts a scalar or `[B]` factor against `[..., H, W, C]`."""
  return jnp.asarray(factor, x.dtype)[..., None, None, None]


def rgb_to_grayscale(x: Array) -> Array:
  """Luma `[..., H, W, 1]` of RGB `[..., H, W, 3]` with torchvision's weights."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b)[..., None]


@jax.jit
def adjust_brightness(x: Array, factor) -> Array:
  """Scales RGB `[..., H, W, 3]` in [0, 1] by `factor` (scalar or `[B]`), clipped to [0, 1]."""
  return jnp.clip(x * _per_sample(factor, x), 0.0, 1.0)


def _blend(x: Array, other: Array, factor) -> Array:
  factor = _per_sample(factor, x)
  return jnp.clip(factor * x + (1.0 - factor) * other, 0.0, 1.0)


@jax.jit
def adjust_contrast(x: Array, factor) -> Array:
  """Blends each image with its mean luma (one value per image), as torchvision's `adjust_contrast`."""
  return _blend(x, jnp.mean(rgb_to_grayscale(x), axis=(-3, -2, -1), keepdims=True), factor)


@jax.jit
def adjust_saturation(x: Array, factor) -> Array:
  """Blends each image with its own grayscale version, as torchvision's `adjust_saturation`."""
  return _blend(x, rgb_to_grayscale(x), factor)


def _wrap(x: Array, period: float) -> Array:
  """`x` modulo `period`, as `x - period * floor(x / period)`: `jnp.mod` on floats becomes a scalar `fmod` call
  per element on XLA:CPU, which made hue jitter most of the augmentation's time."""
  return x - period * jnp.floor(x / period)


def rgb_to_hsv(x: Array) -> Array:
  """RGB `[..., 3]` in [0, 1] -> HSV `[..., 3]`, hue in [0, 1) (grey pixels get hue 0)."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  value = jnp.max(x, axis=-1)
  chroma = value - jnp.min(x, axis=-1)
  safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  sector = jnp.where(value == r, (g - b) / safe_chroma,
                     jnp.where(value == g, 2.0 + (b - r) / safe_chroma, 4.0 + (r - g) / safe_chroma))
  hue = _wrap(sector / 6.0, 1.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(x: Array) -> Array:
  """HSV `[..., 3]` (hue in turns, any real value) -> RGB `[..., 3]`."""
  hue, saturation, value = x[..., 0], x[..., 1], x[..., 2]
  # Channel n (5 for red, 3 for green, 1 for blue) drops by v*s over the part of the hue circle
  # where it is not the maximum: a piecewise-linear ramp of k = (n + 6 h) mod 6.
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = _wrap(n + 6.0 * hue, 6.0)
    channels.append(value - value * saturation * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
  return jnp.stack(channels, axis=-1)


@jax.jit
def adjust_hue(x: Array, factor) -> Array:
  """Rotates the hue of RGB `[..., H, W, 3]` in [0, 1] by `factor` turns (scalar or `[B]`)."""
  hsv = rgb_to_hsv(x)
  hue = _wrap(hsv[..., 0] + _per_sample(factor, x)[..., 0], 1.0)
  return hsv_to_rgb(jnp.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))


def _factor_range(value, name: str, centre: float, bound: tuple[float, float]):
  """torchvision's ColorJitter argument: `v` -> `[centre - v, centre + v]` (clipped to `bound`), or `(lo, hi)`.

  Returns `None` when the range is the single point `centre` (the op is then skipped).
  """
  if isinstance(value, numbers.Real):
    if value < 0:
      raise ValueError(f"color_jitter {name} must be non-negative, got {value}.")
    low, high = max(centre - value, bound[0]), centre + value
  else:
    low, high = (float(v) for v in value)
  if not bound[0] <= low <= high <= bound[1]:
    raise ValueError(f"color_jitter {name} range {(low, high)} must lie within {bound}.")
  return None if low == high == centre else (low, high)


def color_jitter(x: Array, keys: Array, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0) -> Array:
  """torchvision `ColorJitter` with per-sample factors and per-sample random order of the four ops.

  `x`: RGB `[B, H, W, 3]` in [0, 1]. Strengths follow torchvision: a number `v` draws the brightness,
  contrast and saturation factors from `[max(0, 1 - v), 1 + v]` and the hue shift from `[-v, v]`
  (`v <= 0.5`); a pair gives the range directly. Like torchvision, each sample applies the enabled ops in
  its own random order. Zero strengths skip an op, so all-zero strengths return `x` unchanged.
  """
  ranges = (_factor_range(brightness, "brightness", 1.0, (0.0, math.inf)),
            _factor_range(contrast, "contrast", 1.0, (0.0, math.inf)),
            _factor_range(saturation, "saturation", 1.0, (0.0, math.inf)),
            _factor_range(hue, "hue", 0.0, (-0.5, 0.5)))
  ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
  enabled = [(op, factor_range) for op, factor_range in zip(ops, ranges) if factor_range is not None]
  return x if not enabled else _color_jitter(x, keys, tuple(enabled))


@functools.partial(jax.jit, static_argnums=2)
def _color_jitter(x: Array, keys: Array, enabled) -> Array:
  """`enabled`: static tuple of `(op, (low, high))` for the ops to apply, in `color_jitter`'s op order.

  Under vmap a `switch` evaluates every branch, so a step costs all the ops. The cheap ops run that way; the
  hue rotation (several times their cost) runs once per sample, between the steps drawn before and after it.
  """
  hue_last = enabled[-1][0] is adjust_hue
  branches = [lambda img, fs, i=i, op=op: op(img, fs[i]) for i, (op, _) in enumerate(enabled)]
  if hue_last:
    branches[-1] = lambda img, fs: img

  def jitter_one(image, key):
    # One uniform draw: the first half gives the factors, the argsort of the second half the op order.
    u = jax.random.uniform(key, (2, len(enabled)))
    factors = [lo + (hi - lo) * u[0, i] for i, (_, (lo, hi)) in enumerate(enabled)]
    order = jnp.argsort(u[1])

    def apply_steps(img, active):
      """The drawn ops of the steps where `active(step)`; a loop compiles each op once."""
      def apply_step(step, img):
        return jnp.where(active(step), jax.lax.switch(order[step], branches, img, factors), img)
      return jax.lax.fori_loop(0, len(enabled), apply_step, img)

    if not hue_last:
      return apply_steps(image, lambda step: True)
    hue_step = jnp.argmax(order == len(enabled) - 1)
    image = apply_steps(image, lambda step: step < hue_step)
    image = adjust_hue(image, factors[-1])
    return apply_steps(image, lambda step: step > hue_step)

  return jax.vmap(jitter_one)(x, keys)
