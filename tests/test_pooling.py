"""`jaxmia.models.pooling.max_pool`: the values of `flax.linen.max_pool` and a gradient that sums to it."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.models.pooling import max_pool


@pytest.mark.parametrize("window,stride,padding,size", [(3, 2, 1, 112), (3, 2, 0, 35), (3, 1, 1, 17), (2, 2, 0, 9)])
def test_matches_flax_max_pool(window, stride, padding, size):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, size, size + 1, 5)), jnp.float32)
  want = nn.max_pool(x, (window, window), strides=(stride, stride), padding=((padding, padding),) * 2)
  got = max_pool(x, window, stride, padding)
  assert got.shape == want.shape
  np.testing.assert_array_equal(got, want)


def test_gradient_goes_to_the_maximum_of_each_window():
  """Distinct values: the gradient equals reduce_window's (one-hot on each window's argmax, summed)."""
  x = jnp.asarray(np.random.default_rng(1).permutation(2 * 15 * 15 * 3).reshape(2, 15, 15, 3), jnp.float32)
  cotangent = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 8, 3)), jnp.float32)
  ours = jax.vjp(lambda x: max_pool(x, 3, 2, padding=1), x)[1](cotangent)[0]
  ref = jax.vjp(lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))), x)[1](cotangent)[0]
  np.testing.assert_allclose(ours, ref, rtol=1e-6)
