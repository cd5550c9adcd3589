"""`materialize`: exact identity (values and gradients), and it stops XLA recomputing a residual chain."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxmia.models.conv import conv_general_dilated
from jaxmia.models.materialize import materialize


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_values_and_gradients_are_bit_identical(dtype):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 6)) * 1e3, dtype).at[0, 0, 0].set(jnp.inf)
  np.testing.assert_array_equal(np.asarray(jax.jit(materialize)(x)), np.asarray(x))
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), dtype)
  _, vjp = jax.vjp(materialize, x)
  np.testing.assert_array_equal(np.asarray(jax.jit(vjp)(cotangent)[0]), np.asarray(cotangent))


def _residual_chain(num_blocks: int, materialize_blocks: bool):
  """Loss of `num_blocks` blocks `relu(norm(conv(x)) + x)` on `[8, 16, 16, 32]`."""
  def loss(kernels, x):
    for kernel in kernels:
      y = conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      y = (y - y.mean((0, 1, 2))) * lax.rsqrt(y.var((0, 1, 2)) + 1e-5)
      x = jax.nn.relu(y + x)
      x = materialize(x) if materialize_blocks else x
    return jnp.sum(x ** 2)
  kernels = [jax.random.normal(jax.random.key(i), (3, 3, 32, 32)) * 0.05 for i in range(num_blocks)]
  return jax.value_and_grad(loss), kernels, jax.random.normal(jax.random.key(99), (8, 16, 16, 32))


def _largest_fusion_operands(hlo: str) -> int:
  """Most parameters of any fused computation in compiled HLO text (one computation per unindented block)."""
  computations = re.split(r"\n(?=\S)", hlo)
  return max(c.count("parameter(") for c in computations if c.startswith("%fused"))


def test_chain_is_not_recomputed_in_every_fusion():
  """12 residual blocks: with the trunk materialised no fused kernel reaches back over more than a block or two
  (without it XLA:CPU fuses the trunk from the chain's start into consumers, ~3 operands per block)."""
  num_blocks = 12
  loss_and_grad, kernels, x = _residual_chain(num_blocks, materialize_blocks=True)
  hlo = jax.jit(loss_and_grad).lower(kernels, x).compile().as_text()
  assert _largest_fusion_operands(hlo) < 12
  plain_loss_and_grad, _, _ = _residual_chain(num_blocks, materialize_blocks=False)
  (value, grads), (plain_value, plain_grads) = jax.jit(loss_and_grad)(kernels, x), plain_loss_and_grad(kernels, x)
  np.testing.assert_allclose(value, plain_value, rtol=1e-6)
  for grad, plain in zip(grads, plain_grads):
    np.testing.assert_allclose(grad, plain, rtol=1e-4, atol=1e-4 * float(jnp.abs(plain).max()))
