"""The numbers prior: the digit prior's digits in the numbers_embedded builder's layout, one latent per digit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import model_store
from jaxmia.attack import render
from jaxmia.data import builders
from jaxmia.models import number_generator, stylegan2

DIGIT_KWARGS = dict(z_dim=8, c_dim=0, w_dim=6, img_resolution=32, img_channels=3,
                    mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=8))


@pytest.mark.parametrize("num_digits", [1, 2, 3])
def test_write_numbers_matches_the_builder_composites(num_digits):
  """Real handwriting through the JAX layout equals the TFDS builder's PIL composites to one uint8 level."""
  digits, _ = builders.embedded_digits()
  rows = np.random.default_rng(num_digits).integers(len(digits), size=(12, num_digits))
  expected = np.stack([np.asarray(builders.compose_number(digits[r], 32)) for r in rows]) / 127.5 - 1.0
  padded = np.pad(digits[rows], ((0, 0), (0, 0), (2, 2), (2, 2)))[..., None].repeat(3, axis=-1) / 127.5 - 1.0
  actual = np.asarray(number_generator.write_numbers(jnp.asarray(padded, jnp.float32), 2, 32))
  assert actual.shape == expected.shape == (12, 32, 32, 3)
  np.testing.assert_allclose(actual, expected, atol=1.0 / 127.5 + 1e-6)


def _jitted_apply(module):
  """`module.apply` compiled (eager StyleGAN2 synthesis takes minutes on a loaded CPU)."""
  return jax.jit(module.apply, static_argnames=("method", "noise_mode", "truncation_psi", "truncation_cutoff"))


def _models(num_digits):
  digit = stylegan2.Generator(**DIGIT_KWARGS)
  digit_variables = jax.jit(digit.init)(jax.random.key(0), jnp.zeros((1, 8)))
  numbers = number_generator.NumberGenerator(num_digits=num_digits, digit_generator=DIGIT_KWARGS)
  return digit, digit_variables, numbers, number_generator.number_variables(digit_variables)


def test_each_digit_comes_from_its_own_latent():
  digit, digit_variables, numbers, variables = _models(2)
  apply_digit, apply_numbers = _jitted_apply(digit), _jitted_apply(numbers)
  assert (numbers.z_dim, numbers.w_dim, numbers.num_ws, numbers.c_dim) == (16, 12, digit.num_ws, 0)
  z = jax.random.normal(jax.random.key(1), (3, 2, 8))
  ws = apply_numbers(variables, z.reshape(3, 16), truncation_psi=0.7, truncation_cutoff=2, method="mapping")
  for i in range(2):
    expected = apply_digit(digit_variables, z[:, i], truncation_psi=0.7, truncation_cutoff=2, method="mapping")
    np.testing.assert_allclose(ws[..., 6 * i:6 * (i + 1)], expected, rtol=1e-6)
  images = apply_numbers(variables, ws, noise_mode="const", method="synthesis")
  digit_images = jnp.stack([apply_digit(digit_variables, ws[..., 6 * i:6 * (i + 1)], noise_mode="const",
                                        method="synthesis") for i in range(2)], axis=1)
  np.testing.assert_allclose(images, number_generator.write_numbers(digit_images, 2, 32), rtol=1e-5, atol=1e-5)
  # Moving the second digit's part of w changes only the right half of the image.
  moved = ws.at[..., 6:].add(1.0)
  changed = jnp.abs(apply_numbers(variables, moved, noise_mode="const", method="synthesis") - images).max(axis=(0, 3))
  assert float(changed[:, :15].max()) < 1e-6 < float(changed[:, 17:].max())


def test_the_attack_sees_one_stylegan2():
  """A single w `[B, 1, k * w_dim]` broadcast over the ws (the attack's latent) gives k different digits."""
  _, _, numbers, variables = _models(3)
  w = jax.random.normal(jax.random.key(2), (2, 1, numbers.w_dim))
  images = jax.jit(lambda v, w: render.synthesize(numbers, v, w))(variables, w)
  assert images.shape == (2, 32, 32, 3)
  # Letterboxed 3-digit numbers: 14 rows of digits from row 9, background above and below.
  np.testing.assert_array_equal(images[:, :9], -1.0)
  np.testing.assert_array_equal(images[:, 23:], -1.0)
  left, middle = images[:, 9:23, :10], images[:, 9:23, 11:21]
  assert float(jnp.abs(left - middle).max()) > 1e-3  # the three digits' parts of w are not tied


def test_store_round_trip_and_bad_digit_prior(tmp_path):
  _, _, numbers, variables = _models(2)
  path = model_store.save_model(tmp_path / "numbers", variables, kind="number_generator",
                                module_kwargs=dict(num_digits=2, digit_generator=DIGIT_KWARGS))
  loaded, loaded_variables = model_store.load_model(path)
  z = jax.random.normal(jax.random.key(3), (2, numbers.z_dim))
  np.testing.assert_array_equal(_jitted_apply(loaded)(loaded_variables, z, noise_mode="const"),
                                _jitted_apply(numbers)(variables, z, noise_mode="const"))
  with pytest.raises(ValueError, match="digit_padding"):
    number_generator.NumberGenerator(num_digits=2, digit_generator={**DIGIT_KWARGS, "img_resolution": 64})
