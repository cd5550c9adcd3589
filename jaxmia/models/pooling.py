"""`max_pool`: max pooling of `[B, H, W, C]` from strided slices, with PyTorch's gradient.

Same values as `flax.linen.max_pool` / `torch.nn.MaxPool2d`. The forward pass is the elementwise maximum of
the window's `window**2` strided slices, which XLA fuses into one loop. The backward pass routes each output's
cotangent to the first maximum of its window in row-major order, as PyTorch does (JAX's rule for
`maximum` would share it among equal maxima): the forward pass records the winning tap's index, and
the gradient is the sum over taps of the masked cotangent, spread back to the input grid by an interior-padded
`lax.pad`. On XLA:CPU this is one loop fusion, where `reduce_window`'s gradient, and differentiating the
maximum chain (it re-evaluates the chain per tap), were among the slowest parts of ResNet-18's step.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax


def max_pool(x, window: int, stride: int, padding: int = 0):
  """Max over `window x window` patches of `[B, H, W, C]` every `stride` pixels, after `padding` pixels of
  -inf on each side (padding never wins); returns `[B, (H + 2p - window) // stride + 1, ..., C]`."""
  return _max_pool(x, (window, stride, padding, x.shape[1], x.shape[2]))


def _taps(x, geometry):
  """The padded input's strided slices, one per window position, row-major: `window**2` x `[B, h, w, C]`."""
  window, stride, padding, _, _ = geometry
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
  out_h, out_w = _output_size(geometry)
  return [x[:, dy:dy + stride * (out_h - 1) + 1:stride, dx:dx + stride * (out_w - 1) + 1:stride]
          for dy in range(window) for dx in range(window)]


def _output_size(geometry) -> tuple[int, int]:
  window, stride, padding, height, width = geometry
  return (height + 2 * padding - window) // stride + 1, (width + 2 * padding - window) // stride + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x, geometry):
  return functools.reduce(jnp.maximum, _taps(x, geometry))


def _max_pool_fwd(x, geometry):
  taps = _taps(x, geometry)
  index_dtype = jnp.int8 if len(taps) <= 127 else jnp.int32
  pooled, winner = taps[0], jnp.zeros(taps[0].shape, index_dtype)
  for index, tap in enumerate(taps[1:], start=1):
    better = tap > pooled  # strict: ties keep the earlier tap
    pooled, winner = jnp.where(better, tap, pooled), jnp.where(better, index_dtype(index), winner)
  return pooled, winner


def _max_pool_bwd(geometry, winner, g):
  window, stride, padding, height, width = geometry
  out_h, out_w = _output_size(geometry)
  padded_h, padded_w = height + 2 * padding, width + 2 * padding
  zero = jnp.zeros((), g.dtype)
  grad = None
  for index in range(window * window):
    dy, dx = divmod(index, window)
    # Output (i, j) of this tap reads padded input (dy + stride * i, dx + stride * j).
    spread = lax.pad(jnp.where(winner == index, g, zero), zero,
                     ((0, 0, 0), (dy, padded_h - dy - stride * (out_h - 1) - 1, stride - 1),
                      (dx, padded_w - dx - stride * (out_w - 1) - 1, stride - 1), (0, 0, 0)))
    grad = spread if grad is None else grad + spread
  return (grad[:, padding:padding + height, padding:padding + width],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
