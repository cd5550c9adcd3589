"""Image ops against torchvision outputs (`resize_ops.npz`, `fid_inception.npz`), jax.image and invariants."""
import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture, nchw_to_nhwc, recipe

from jaxmia.data import augment, image_ops


@pytest.fixture(scope="module")
def resize_fixture():
  _, seed, _, arrays = load_fixture("resize_ops")
  big = nchw_to_nhwc(recipe.make_input((2, 3, 1024, 1024), seed, "resize_1024"))
  return big, arrays


def _random_images(batch, height, width, seed=0):
  return np.random.default_rng(seed).uniform(size=(batch, height, width, 3)).astype(np.float32)


@pytest.mark.parametrize("size", [224, 299, 160])
def test_center_crop_then_resize_matches_torchvision(resize_fixture, size):
  big, arrays = resize_fixture
  out = image_ops.resize(image_ops.center_crop(big, 800), size)
  np.testing.assert_allclose(out, nchw_to_nhwc(arrays[f"output/x1024_crop800_r{size}"]), atol=1e-5)


def test_resize_256_to_224_matches_torchvision(resize_fixture):
  _, arrays = resize_fixture
  out = image_ops.resize(nchw_to_nhwc(arrays["input/x256_r224"]), 224)
  np.testing.assert_allclose(out, nchw_to_nhwc(arrays["output/x256_r224"]), atol=1e-5)


def test_crop_and_resize_with_traced_box_matches_torchvision(resize_fixture):
  big, arrays = resize_fixture
  boxes = jnp.array([[112, 112, 800, 800]] * 2)   # torchvision's center_crop(800) of 1024
  out = image_ops.crop_and_resize(big, boxes, 224)
  expected = nchw_to_nhwc(arrays["output/x1024_crop800_r224"])
  # Traced boxes: XLA's reciprocal multiply shifts float32 pixel positions by 1 ulp (see _triangle_weights).
  np.testing.assert_allclose(out, expected, atol=5e-5)
  assert np.abs(out - expected).mean() < 5e-6


def test_resize_without_antialias_matches_pytorch_fid_upsampling():
  _, _, _, arrays = load_fixture("fid_inception")
  out = image_ops.resize(nchw_to_nhwc(arrays["input/x256"]), 299, antialias=False)
  np.testing.assert_allclose(out[0, :, :, 0], arrays["output/resized_x256_img0_c0"], atol=1e-5)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("shape,size", [((37, 50), (16, 21)), ((20, 24), (45, 31)), ((64, 64), (64, 30))])
def test_resize_matches_jax_image_resize(antialias, shape, size):
  x = _random_images(2, *shape)
  expected = jax.image.resize(x, (2, *size, 3), method="linear", antialias=antialias)
  np.testing.assert_allclose(image_ops.resize(x, size, antialias=antialias), expected, atol=2e-6)


def test_resize_weights_are_normalised_and_identity_at_same_size():
  np.testing.assert_array_equal(image_ops.resize_weights(17, 17), np.eye(17, dtype=np.float32))
  for antialias in (True, False):
    np.testing.assert_allclose(image_ops.resize_weights(1024, 299, antialias).sum(1), 1.0, rtol=1e-6)


def test_center_crop_offsets_round_like_torchvision():
  x = jnp.arange(11 * 12, dtype=jnp.float32).reshape(1, 11, 12, 1)
  # (11 - 4) / 2 = 3.5 rounds to 4; (12 - 7) / 2 = 2.5 rounds (half to even) to 2.
  np.testing.assert_array_equal(image_ops.center_crop(x, (4, 7)), x[:, 4:8, 2:9])
  with pytest.raises(ValueError, match="larger than the image"):
    image_ops.center_crop(x, 12)


def test_random_resized_crop_with_full_scale_is_resize():
  x = _random_images(3, 40, 40)
  keys = jax.random.split(jax.random.key(0), 3)
  expected = image_ops.resize(x, 24)
  full = image_ops.random_resized_crop(x, keys, 24, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(full, expected, atol=5e-5)
  # No candidate fits (area > image): torchvision falls back to the whole image.
  fallback = image_ops.random_resized_crop(x, keys, 24, scale=(1.5, 2.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(fallback, expected, atol=5e-5)


def test_crop_boxes_respect_scale_ratio_and_bounds():
  keys = jax.random.split(jax.random.key(1), 512)
  boxes = np.asarray(image_ops.sample_crop_boxes(keys, (100, 120), scale=(0.3, 0.6), ratio=(0.5, 2.0)))
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= 100).all() and (left + w <= 120).all()
  area = h * w / (100 * 120)
  assert area.min() > 0.28 and area.max() < 0.62   # slack for rounding h and w to integers
  assert (w / h).min() > 0.45 and (w / h).max() < 2.2
  assert len({tuple(b) for b in boxes}) > 400      # keys give different boxes
  # The smallest admissible crop lands anywhere: both edges of the image are reached.
  assert top.min() == 0 and left.min() == 0


def test_crop_and_resize_equals_slicing_then_resize():
  x = _random_images(2, 30, 26)
  boxes = jnp.array([[3, 5, 17, 20], [0, 0, 30, 9]])
  out = image_ops.crop_and_resize(x, boxes, (12, 15))
  for i, (top, left, h, w) in enumerate(np.asarray(boxes)):
    expected = image_ops.resize(x[i:i + 1, top:top + h, left:left + w], (12, 15))
    np.testing.assert_allclose(out[i:i + 1], expected, atol=5e-5)


@pytest.mark.parametrize("op", [
    lambda x, k: image_ops.random_resized_crop(x, k, 12, scale=(0.2, 1.0)),
    lambda x, k: image_ops.horizontal_flip(x, k),
    lambda x, k: image_ops.color_jitter(x, k, 0.3, 0.3, 0.3, 0.2),
], ids=["random_resized_crop", "horizontal_flip", "color_jitter"])
def test_random_ops_are_independent_per_sample(op):
  x = _random_images(4, 16, 16)
  keys = jax.random.split(jax.random.key(2), 4)
  batched = op(x, keys)
  # Sample 2 alone, and inside a batch whose other samples and keys changed, gives the same output.
  alone = op(x[2:3], keys[2:3])
  other = _random_images(4, 16, 16, seed=9)
  other[1] = x[2]
  other_keys = jax.random.split(jax.random.key(7), 4).at[1].set(keys[2])
  np.testing.assert_allclose(alone[0], batched[2], atol=1e-6)
  np.testing.assert_allclose(op(other, other_keys)[1], batched[2], atol=1e-6)


def test_horizontal_flip_is_an_involution_and_mirrors():
  x = _random_images(64, 4, 5)
  keys = jax.random.split(jax.random.key(3), 64)
  once = np.asarray(image_ops.horizontal_flip(x, keys))
  np.testing.assert_array_equal(image_ops.horizontal_flip(once, keys), x)
  flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(once, x)])
  kept = np.array([np.array_equal(o, i) for o, i in zip(once, x)])
  assert (flipped ^ kept).all() and 16 < flipped.sum() < 48
  np.testing.assert_array_equal(image_ops.horizontal_flip(x, keys, p=0.0), x)
  np.testing.assert_array_equal(image_ops.horizontal_flip(x, keys, p=1.0), x[:, :, ::-1])
  raw_keys = jax.random.split(jax.random.PRNGKey(3), 64)   # legacy uint32 keys work too
  assert image_ops.horizontal_flip(x, raw_keys).shape == x.shape


def test_color_jitter_with_zero_strength_is_identity():
  x = _random_images(3, 8, 8)
  keys = jax.random.split(jax.random.key(4), 3)
  np.testing.assert_array_equal(image_ops.color_jitter(x, keys), x)
  np.testing.assert_array_equal(image_ops.color_jitter(x, keys, 0.0, (1.0, 1.0), 0.0, (0.0, 0.0)), x)


def test_color_jitter_applies_each_samples_drawn_ops_in_its_drawn_order():
  """Reference: one uniform draw per sample, factors from its first row, op order = argsort of its second."""
  x = _random_images(24, 6, 6)
  keys = jax.random.split(jax.random.key(11), 24)
  out = np.asarray(image_ops.color_jitter(x, keys, 0.3, 0.3, 0.2, 0.1))
  ops = (image_ops.adjust_brightness, image_ops.adjust_contrast, image_ops.adjust_saturation,
         image_ops.adjust_hue)
  ranges = ((0.7, 1.3), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1))
  hue_steps = set()
  for i in range(len(x)):
    u = np.asarray(jax.random.uniform(keys[i], (2, 4)))
    expected = x[i:i + 1]
    for op in np.argsort(u[1]):
      low, high = ranges[op]
      expected = ops[op](expected, low + (high - low) * u[0, op])
    hue_steps.add(int(np.argmax(np.argsort(u[1]) == 3)))
    np.testing.assert_allclose(out[i], expected[0], atol=1e-5)
  assert hue_steps == {0, 1, 2, 3}   # the hue rotation was drawn first, last and in between


def test_hue_rotation_by_zero_or_a_full_turn_is_identity():
  x = _random_images(2, 8, 8)
  for turns in (0.0, 1.0, -1.0):
    np.testing.assert_allclose(image_ops.adjust_hue(x, jnp.full((2,), turns)), x, atol=2e-6)


def test_hue_shift_matches_colorsys():
  x = _random_images(1, 4, 4)
  x[0, 0, 0] = [0.5, 0.5, 0.5]   # grey: hue undefined, must stay grey
  shift = 0.23
  expected = np.array([[colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
                        for h, s, v in (colorsys.rgb_to_hsv(*p) for p in row)] for row in x[0]])
  np.testing.assert_allclose(image_ops.adjust_hue(x, shift)[0], expected, atol=2e-6)


def test_brightness_contrast_saturation_closed_forms():
  x = _random_images(2, 6, 6)
  gray = 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
  np.testing.assert_allclose(image_ops.adjust_brightness(x, jnp.array([0.5, 0.0])),
                             np.stack([x[0] * 0.5, np.zeros_like(x[1])]), rtol=1e-6)
  np.testing.assert_allclose(image_ops.adjust_saturation(x, 0.0), np.repeat(gray[..., None], 3, -1), rtol=1e-6)
  flat = image_ops.adjust_contrast(x, 0.0)   # every pixel becomes the image's mean luma
  np.testing.assert_allclose(flat, np.broadcast_to(gray.mean((1, 2))[:, None, None, None], x.shape), rtol=1e-5)


def test_color_jitter_brightness_factor_range():
  x = 0.2 + 0.5 * _random_images(256, 2, 2)   # in [0.2, 0.7]: brightness up to 1.4 never clips
  keys = jax.random.split(jax.random.key(5), 256)
  out = np.asarray(image_ops.color_jitter(x, keys, brightness=0.4))
  factors = out / x
  np.testing.assert_allclose(factors, factors[:, :1, :1, :1] * np.ones_like(factors), rtol=1e-5)
  f = factors[:, 0, 0, 0]
  assert f.min() >= 0.6 - 1e-6 and f.max() <= 1.4 + 1e-6 and f.min() < 0.7 and f.max() > 1.3
  with pytest.raises(ValueError, match="hue"):
    image_ops.color_jitter(x, keys, hue=0.7)


def test_train_augment_range_dtype_and_input_types():
  images = (np.random.default_rng(6).uniform(size=(4, 20, 20, 3)) * 255).astype(np.uint8)
  keys = jax.random.split(jax.random.key(8), 4)
  out = jax.jit(lambda x, k: augment.train_augment(x, k, size=16))(images, keys)
  assert out.shape == (4, 16, 16, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
  np.testing.assert_allclose(augment.to_unit_range(images), images / np.float32(255), rtol=1e-6)
  np.testing.assert_array_equal(augment.to_unit_range(images / np.float32(255)), images / np.float32(255))


def test_train_augment_without_randomness_is_eval_transform():
  images = (np.random.default_rng(7).uniform(size=(2, 20, 20, 3)) * 255).astype(np.uint8)
  keys = jax.random.split(jax.random.key(9), 2)
  plain = augment.train_augment(images, keys, size=16, crop_scale=(1.0, 1.0), brightness=0.0, contrast=0.0,
                                saturation=0.0, hue=0.0, flip=False)
  expected = augment.eval_transform(images, size=16)
  np.testing.assert_allclose(plain, expected, atol=1e-4)
  np.testing.assert_allclose(augment.denormalize(expected),
                             image_ops.resize(augment.to_unit_range(images), 16), atol=1e-6)
