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
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmia.models import xla_cpu

SUM_BLOCKS = 64  # the ones-vector products' length, which bounds their sequential rounding (`_channel_sum`)


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


def _channel_sum(x):
  """`[..., C]` float32 -> `[C]`, the sum over all axes but the last, in two levels: the N = x.size / C rows as K
  blocks of N / K consecutive rows (K the largest divisor of N up to `SUM_BLOCKS`), summed block against block by
  a product with a vector of K ones (a matrix product for XLA), then the N / K block rows reduced. A product
  accumulates its K terms one after another, so K bounds that part of the rounding; one product over all N rows
  was several times less accurate than XLA's reductions in cancelling sums (the gradient's)."""
  rows = math.prod(x.shape[:-1])
  blocks = max(k for k in range(1, min(rows, SUM_BLOCKS) + 1) if rows % k == 0)
  partial = jnp.ones((blocks,), jnp.float32) @ x.reshape(blocks, -1)
  return partial.reshape(-1, x.shape[-1]).sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_with_matmul_sums(x, scale, bias, epsilon: float, dtype):
  """`normalize_with_reductions` with the sums as matrix products and the closed-form gradient (module
  docstring)."""
  return _matmul_sums_fwd(x, scale, bias, epsilon, dtype)[0]


def _matmul_sums_fwd(x, scale, bias, epsilon, dtype):
  x32 = x.astype(jnp.float32)
  n = x.size // x.shape[-1]
  mean = _channel_sum(x32) / n
  var = _channel_sum(jnp.square(x32 - mean)) / n
  return (_apply(x, mean, var, scale, bias, epsilon, dtype), mean, var), (x, mean, var, scale)


def _matmul_sums_bwd(epsilon, dtype, residuals, cotangents):
  del dtype  # the gradient is computed in float32 and returned in x's dtype
  x, mean, var, scale = residuals
  dy, dmean, dvar = cotangents
  dy32 = dy.astype(jnp.float32)
  n = x.size // x.shape[-1]
  rstd = jax.lax.rsqrt(var + epsilon)
  centred = x.astype(jnp.float32) - mean
  sum_dy = _channel_sum(dy32)
  sum_dy_centred = _channel_sum(dy32 * centred)
  # y = scale * centred * rstd + bias; the mean and var outputs' own cotangents (zero in training, where they
  # only update the running statistics) add dmean / n and dvar * 2 * centred / n.
  dx = (scale * rstd) * (dy32 - sum_dy / n - centred * (rstd * rstd * sum_dy_centred / n))
  dx = dx + dmean / n + centred * (2.0 * dvar / n)
  return dx.astype(x.dtype), sum_dy_centred * rstd, sum_dy


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
