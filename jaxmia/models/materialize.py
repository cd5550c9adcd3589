"""`materialize(x)`: the identity, written so that XLA computes `x` once instead of inside each consumer.

XLA fuses a chain of elementwise ops into every consumer of its result, and duplicates the chain when the
result has several consumers, unless the op at the chain's end is expensive (a floating-point division is).
A residual network's trunk is such a chain: block k's output `relu(bn(conv) + output of block k-1)` is
elementwise in the previous output, so each consumer of a block's output — the next block's convolution,
its residual add, the backward pass's ReLU mask and the weight-gradient convolution's input transpose —
recomputed the whole stage's trunk from its start. In a ResNet-152 training step on XLA:CPU one such fusion
took in all 36 blocks of `layer3`, and these recomputations were a large share of the step (`docs/speed.md` has
the figures).

`materialize` divides by 1.0 hidden behind an `optimization_barrier`, so XLA's simplifier cannot drop the
division before fusion decides what to duplicate. Division by one is exact in every floating dtype, so values
and gradients (the cotangent is divided by one too, cutting the backward pass's chain the same way) are
unchanged bit for bit. `optimization_barrier` alone does not do it: XLA removes barriers before fusion.
With `jaxmia.models.xla_cpu` switched off (the default on GPU and TPU) it returns `x` as it is.
"""
import jax.numpy as jnp
from jax import lax

from jaxmia.models import xla_cpu


def materialize(x: jnp.ndarray) -> jnp.ndarray:
  """`x` unchanged (any shape, floating dtype); XLA stores it instead of recomputing it in its consumers."""
  if not xla_cpu.enabled():
    return x
  return x / lax.optimization_barrier(jnp.ones((), x.dtype))
