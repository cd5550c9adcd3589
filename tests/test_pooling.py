"""`jaxmia.models.pooling.max_pool`: the values of `flax.linen.max_pool`, and PyTorch's gradient."""
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
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)   # sums of up to 4 windows, any order


@pytest.mark.parametrize("window,stride,padding,size", [(3, 2, 1, 112), (3, 2, 0, 35), (3, 1, 1, 17), (2, 2, 0, 9)])
def test_gradient_matches_reduce_window_for_every_geometry(window, stride, padding, size):
  x = jnp.asarray(np.random.default_rng(3).permutation(2 * size * (size + 1) * 4).reshape(2, size, size + 1, 4),
                  jnp.float32)
  pool = lambda x: max_pool(x, window, stride, padding)
  ref_pool = lambda x: nn.max_pool(x, (window, window), strides=(stride, stride), padding=((padding, padding),) * 2)
  cotangent = jnp.asarray(np.random.default_rng(4).standard_normal(pool(x).shape), jnp.float32)
  np.testing.assert_allclose(jax.jit(jax.vjp(pool, x)[1])(cotangent)[0], jax.vjp(ref_pool, x)[1](cotangent)[0],
                             rtol=1e-6, atol=1e-6)


def test_tied_maxima_give_the_whole_gradient_to_the_first_one():
  """PyTorch's rule: a constant 4x4 image, 3x3 windows, stride 2, padding 1 -> each window's first pixel."""
  cotangent = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: jnp.sum(max_pool(x, 3, 2, padding=1) * cotangent))(jnp.ones((1, 4, 4, 1)))
  want = np.zeros((4, 4))
  want[:2, :2] = [[1.0, 2.0], [3.0, 4.0]]   # windows start at rows/cols -1 and 1: first real pixels 0 and 1
  np.testing.assert_array_equal(grad[0, :, :, 0], want)
