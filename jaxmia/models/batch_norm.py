"""`BatchNorm`: PyTorch's batch normalisation over the last axis, shared by every jaxmia network that has one.

In train mode it normalises with the batch's mean and biased variance (two passes: the variance is the mean of
the squared deviations) and updates the running statistics as PyTorch does. Under `jax.jit` with the batch
sharded over the `('data',)` mesh the batch is the global one (XLA inserts the cross-device sums), unlike
PyTorch DataParallel, which normalises per device.

XLA:CPU formulation (`jaxmia.models.xla_cpu`): XLA:CPU's reductions over the batch and spatial axes run far
below the machine's memory bandwidth, while a product with a vector of ones runs on its multithreaded
matrix-product library (`scripts/bench_conv.py --tables batchnorm` measures both). With the switch on, train
mode's per-channel sums are such products, and its gradient is the closed form (two per-channel sums and one
elementwise pass) instead of the autodiff of the two-pass variance, which reduces over the activations several
times more. Values and gradients are the same up to summation order. With the switch off (the default on GPU
and TPU) the statistics are `jnp.mean` and the gradient is JAX's own.
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmia.models import xla_cpu


def _apply(x, mean, var, scale, bias, epsilon: float, dtype):
  """`(x - mean) / sqrt(var + eps) * scale + bias` as one multiply-add, the float32 per-channel factors cast to
  the compute `dtype` (the result has the promoted type of `x` and `dtype`)."""
  multiplier = scale * jax.lax.rsqrt(var + epsilon)
  shift = bias - mean * multiplier
  return x * multiplier.astype(dtype) + shift.astype(dtype)


def normalize_with_reductions(x, scale, bias, epsilon: float, dtype):
  """Train-mode normalisation with `jnp.mean` statistics and JAX's gradient: (y, batch mean, biased var)."""
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axes)
  var = jnp.square(x32 - mean).mean(axes)
  return _apply(x, mean, var, scale, bias, epsilon, dtype), mean, var


def _channel_sum(rows):
  """`[N, C]` float32 -> `[C]`: the column sums as a product with a vector of ones (a matrix product for XLA)."""
  return jnp.ones((rows.shape[0],), jnp.float32) @ rows


def _rows(x):
  """`[..., C]` -> `[N, C]` float32."""
  return x.reshape(-1, x.shape[-1]).astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_with_matmul_sums(x, scale, bias, epsilon: float, dtype):
  """`normalize_with_reductions` with the sums as matrix products and the closed-form gradient (module
  docstring)."""
  return _matmul_sums_fwd(x, scale, bias, epsilon, dtype)[0]


def _matmul_sums_fwd(x, scale, bias, epsilon, dtype):
  rows = _rows(x)
  n = rows.shape[0]
  mean = _channel_sum(rows) / n
  var = _channel_sum(jnp.square(rows - mean)) / n
  return (_apply(x, mean, var, scale, bias, epsilon, dtype), mean, var), (x, mean, var, scale)


def _matmul_sums_bwd(epsilon, dtype, residuals, cotangents):
  del dtype  # the gradient is computed in float32 and returned in x's dtype
  x, mean, var, scale = residuals
  dy, dmean, dvar = cotangents
  rows, dy_rows = _rows(x), _rows(dy)
  n = rows.shape[0]
  rstd = jax.lax.rsqrt(var + epsilon)
  centred = rows - mean
  sum_dy = _channel_sum(dy_rows)
  sum_dy_centred = _channel_sum(dy_rows * centred)
  # y = scale * centred * rstd + bias; the mean and var outputs' own cotangents (zero in training, where they
  # only update the running statistics) add dmean / n and dvar * 2 * centred / n.
  dx = (scale * rstd) * (dy_rows - sum_dy / n - centred * (rstd * rstd * sum_dy_centred / n))
  dx = dx + dmean / n + centred * (2.0 * dvar / n)
  return dx.reshape(x.shape).astype(x.dtype), sum_dy_centred * rstd, sum_dy


normalize_with_matmul_sums.defvjp(_matmul_sums_fwd, _matmul_sums_bwd)


def normalize_train(x, scale, bias, epsilon: float, dtype=jnp.float32):
  """Train-mode batch normalisation of `[..., C]` over all axes but the last: (y, batch mean `[C]`, biased batch
  variance `[C]`), statistics float32, y as `_apply` gives it; the XLA:CPU formulation when the switch is on."""
  if xla_cpu.enabled():
    return normalize_with_matmul_sums(x, scale, bias, epsilon, dtype)
  return normalize_with_reductions(x, scale, bias, epsilon, dtype)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis with PyTorch's semantics (eps 1e-5, PyTorch momentum 0.1).

  Variables are named as in `flax.linen.BatchNorm` (`params`: scale, bias; `batch_stats`: mean, var). Unlike it,
  the running variance is updated with the unbiased batch variance (times n / (n - 1), n = elements per
  channel), as PyTorch does; normalisation uses the biased one. Statistics are computed in float32 for any
  compute `dtype`. `momentum` is the weight of the old running value (flax convention: 0.9 == PyTorch's 0.1).
  """
  epsilon: float = 1e-5
  momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    if not train:
      return _apply(x, running_mean.value, running_var.value, scale, bias, self.epsilon, self.dtype)
    y, mean, var = normalize_train(x, scale, bias, self.epsilon, self.dtype)
    if not self.is_initializing():
      n = x.size // channels
      unbiased_var = var * (n / max(n - 1, 1))
      running_mean.value = self.momentum * running_mean.value + (1.0 - self.momentum) * mean
      running_var.value = self.momentum * running_var.value + (1.0 - self.momentum) * unbiased_var
    return y
