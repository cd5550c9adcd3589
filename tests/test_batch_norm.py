"""`jaxmia.models.batch_norm`: the XLA:CPU formulation of train mode (matrix-product sums, closed-form gradient)
against the plain one (`jnp.mean` statistics, JAX's gradient), in values and in every gradient."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import parallel
from jaxmia.models import batch_norm


def _inputs(shape, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 4)
  channels = shape[-1]
  x = (jax.random.normal(keys[0], shape) * 3.0 + 2.0).astype(dtype)  # off-centre: the centring matters
  scale = jax.random.uniform(keys[1], (channels,), minval=0.5, maxval=1.5)
  bias = jax.random.normal(keys[2], (channels,))
  weights = jax.random.normal(keys[3], shape)  # a loss that weights every output differently
  return x, scale, bias, weights


def _loss(normalize, x, scale, bias, weights):
  """A scalar of all three outputs, so the gradient covers the mean and variance outputs' cotangents too."""
  y, mean, var = normalize(x, scale, bias, 1e-5, jnp.float32)
  return jnp.sum(y.astype(jnp.float32) * weights) + jnp.sum(jnp.sin(mean)) + jnp.sum(jnp.sqrt(var))


@pytest.mark.parametrize("shape", [(4, 5, 6, 8), (7, 3), (2, 1, 1, 16)])
def test_matmul_formulation_equals_the_plain_one_in_values_and_gradients(shape):
  x, scale, bias, weights = _inputs(shape)
  outputs = [jax.jit(normalize, static_argnums=(3, 4))(x, scale, bias, 1e-5, jnp.float32) for normalize in (
      batch_norm.normalize_with_matmul_sums, batch_norm.normalize_with_reductions)]
  for a, b in zip(*outputs):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  grad = jax.grad(_loss, argnums=(1, 2, 3))
  expected = jax.jit(functools.partial(grad, batch_norm.normalize_with_reductions))(x, scale, bias, weights)
  got = jax.jit(functools.partial(grad, batch_norm.normalize_with_matmul_sums))(x, scale, bias, weights)
  for name, a, b in zip(("x", "scale", "bias"), got, expected):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()), err_msg=name)


def test_gradient_matches_the_closed_form_in_float64_arithmetic():
  """dL/dx of sum(w * y) is scale * rstd * (w - mean(w) - xhat * mean(w * xhat)) per channel."""
  x, scale, bias, weights = _inputs((6, 4, 4, 5))
  got = jax.jit(jax.grad(lambda x: jnp.sum(batch_norm.normalize_with_matmul_sums(x, scale, bias, 1e-5, jnp.float32)[0]
                                           * weights)))(x)
  x64, w64 = np.asarray(x, np.float64).reshape(-1, 5), np.asarray(weights, np.float64).reshape(-1, 5)
  rstd = 1.0 / np.sqrt(x64.var(0) + 1e-5)
  xhat = (x64 - x64.mean(0)) * rstd
  expected = np.asarray(scale, np.float64) * rstd * (w64 - w64.mean(0) - xhat * (w64 * xhat).mean(0))
  np.testing.assert_allclose(np.asarray(got).reshape(-1, 5), expected, rtol=1e-4, atol=1e-5)


def test_mixed_dtypes_keep_the_plain_result_types():
  """bfloat16 activations with float32 statistics, and a float32 module on bfloat16 inputs (the promotion)."""
  x, scale, bias, weights = _inputs((4, 3, 3, 8), jnp.bfloat16)
  for dtype in (jnp.bfloat16, jnp.float32):
    plain = batch_norm.normalize_with_reductions(x, scale, bias, 1e-5, dtype)
    matmul = batch_norm.normalize_with_matmul_sums(x, scale, bias, 1e-5, dtype)
    assert [a.dtype for a in matmul] == [a.dtype for a in plain]
    np.testing.assert_allclose(np.asarray(matmul[0], np.float32), np.asarray(plain[0], np.float32), rtol=2e-2,
                               atol=2e-2)
    dx = jax.grad(lambda x: jnp.sum(batch_norm.normalize_with_matmul_sums(x, scale, bias, 1e-5, dtype)[0]
                                    .astype(jnp.float32) * weights))(x)
    assert dx.dtype == jnp.bfloat16


def test_matmul_formulation_on_a_sharded_batch_uses_the_global_batch():
  x, scale, bias, weights = _inputs((8, 3, 3, 6))
  x = x + jnp.arange(8.0)[:, None, None, None]  # each device's quarter has other statistics
  grad = jax.jit(jax.value_and_grad(functools.partial(_loss, batch_norm.normalize_with_matmul_sums), argnums=(0, 1, 2)))
  value, grads = grad(x, scale, bias, weights)
  mesh = parallel.make_mesh()
  sharded_value, sharded_grads = grad(parallel.shard_batch(x, mesh), scale, bias, parallel.shard_batch(weights, mesh))
  np.testing.assert_allclose(sharded_value, value, rtol=1e-5)
  for a, b in zip(sharded_grads, grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
