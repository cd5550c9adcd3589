"""`max_pool`: max pooling of `[B, H, W, C]` as elementwise maxima of strided slices.

Same values as `flax.linen.max_pool` / `torch.nn.MaxPool2d`. XLA fuses the slices into one loop, and the
gradient is a chain of selects; `reduce_window`'s gradient on XLA:CPU tracks argmax indices instead and took
~180 ms for ResNet-18's stem pool at batch 16 (a sixth of the training step). Where a window holds several
equal maxima the gradient is shared among them (JAX's rule for `maximum`), not given to the first one.
"""
import jax.numpy as jnp


def max_pool(x, window: int, stride: int, padding: int = 0):
  """Max over `window x window` patches of `[B, H, W, C]` every `stride` pixels, after `padding` pixels of
  -inf on each side (padding never wins); returns `[B, (H + 2p - window) // stride + 1, ..., C]`."""
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
  out_h = (x.shape[1] - window) // stride + 1
  out_w = (x.shape[2] - window) // stride + 1
  pooled = None
  for dy in range(window):
    for dx in range(window):
      tap = x[:, dy:dy + stride * (out_h - 1) + 1:stride, dx:dx + stride * (out_w - 1) + 1:stride]
      pooled = tap if pooled is None else jnp.maximum(pooled, tap)
  return pooled
