"""DiffAugment: each transformation against its definition, per-image draws, gradients, and the GAN wiring."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from jaxmia import diffaugment, gan
from jaxmia.config import load_file

gan_numbers = load_file(REPO / "configs" / "gan_numbers.py")


def _images(b=6, h=16, w=12, c=3, seed=0):
  return jax.random.uniform(jax.random.key(seed), (b, h, w, c), minval=-1.0, maxval=1.0)


def test_parse_policy_orders_and_rejects():
  assert diffaugment.parse_policy("cutout, translation") == ("translation", "cutout")
  assert diffaugment.parse_policy("") == ()
  with pytest.raises(ValueError, match="Unknown DiffAugment policy flip"):
    diffaugment.parse_policy("translation,flip")


def test_translation_is_a_zero_filled_shift_within_an_eighth():
  x = _images()
  y = np.asarray(diffaugment.diff_augment(x, jax.random.key(1), ("translation",)))
  x = np.asarray(x)
  shifts = []
  for xi, yi in zip(x, y):
    found = []
    for dy, dx in itertools.product(range(-2, 3), range(-2, 3)):  # round(16/8) = 2, round(12/8) = 2
      expected = np.zeros_like(xi)
      src = xi[max(0, -dy):16 - max(0, dy), max(0, -dx):12 - max(0, dx)]
      expected[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
      if np.array_equal(yi, expected):
        found.append((dy, dx))
    assert len(found) == 1
    shifts += found
  assert len(set(shifts)) > 1  # drawn per image


def test_cutout_zeroes_one_clipped_half_size_square():
  x = _images(b=32, h=16, w=16) + 3.0  # no pixel is 0 before the cutout
  y = np.asarray(diffaugment.diff_augment(x, jax.random.key(2), ("cutout",)))
  x = np.asarray(x)
  areas = []
  for xi, yi in zip(x, y):
    hole = np.all(yi == 0, axis=-1)
    np.testing.assert_array_equal(yi[~hole], xi[~hole])
    rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
    assert hole.sum() == len(rows) * len(cols)  # a rectangle (a square clipped by the border)
    assert len(rows) <= 8 and len(cols) <= 8 and np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    areas.append(hole.sum())
  assert max(areas) == 64 and min(areas) < 64


def test_color_matches_its_definition():
  x = _images()
  key = jax.random.key(3)
  y = diffaugment.diff_augment(x, key, ("color",))
  b_key, s_key, c_key = jax.random.split(jax.random.split(key, 1)[0], 3)
  shape = (x.shape[0], 1, 1, 1)
  z = x + jax.random.uniform(b_key, shape) - 0.5
  m = z.mean(-1, keepdims=True)
  z = (z - m) * 2 * jax.random.uniform(s_key, shape) + m
  m = z.mean((1, 2, 3), keepdims=True)
  z = (z - m) * (jax.random.uniform(c_key, shape) + 0.5) + m
  np.testing.assert_allclose(y, z, rtol=1e-6, atol=1e-6)


def test_gradient_flows_through_the_kept_pixels():
  x = _images()
  policy = diffaugment.parse_policy("translation,cutout")
  key = jax.random.key(4)
  weights = _images(seed=9)
  grad = jax.grad(lambda v: jnp.sum(diffaugment.diff_augment(v, key, policy) * weights))(x)
  # The output is a gather of x: d out / d x sums the weights of the output pixels each input lands on.
  y = diffaugment.diff_augment(x, key, policy)
  np.testing.assert_allclose(jnp.sum(grad * x), jnp.sum(y * weights), rtol=1e-5)


def test_gan_discriminator_sees_augmented_images():
  """Same state and key: the policy changes D's update; '' gives exactly the unaugmented step."""
  config = gan_numbers.get_config("smoke")
  reals = _images(b=config.batch_size, h=32, w=32)
  outcomes = {}
  for policy in ("", "translation,cutout"):
    config.diffaugment = policy
    _, d_step, _ = gan.make_steps(config)
    state = gan.create_state(config, jax.random.key(0))
    state, metrics = jax.jit(d_step)(state, reals, jax.random.key(1))
    outcomes[policy] = (jax.tree.leaves(state.d_params), float(metrics["logits_real"]))
  assert outcomes[""][1] != outcomes["translation,cutout"][1]
  assert any(not np.array_equal(a, b) for a, b in zip(outcomes[""][0], outcomes["translation,cutout"][0]))
