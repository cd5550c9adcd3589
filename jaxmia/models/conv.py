"""`conv_general_dilated`: `lax.conv_general_dilated` whose input gradient runs on a materialised kernel.

Values and gradients are those of `lax.conv_general_dilated`; only how XLA receives the backward pass differs.
JAX writes the input gradient of a convolution as a convolution with the kernel's I and O axes swapped in the
dimension numbers (no data movement). Outside loops XLA:CPU then copies the kernel into the layout its fast
convolution library (YNNPACK) takes; inside a `while` loop it does not, and falls back to a generic convolution
several times slower — which made the attack's on-device `fori_loop` over steps slower than the same step
outside a loop. Here the backward pass swaps the kernel's I/O axes physically (behind an
`optimization_barrier`, so XLA cannot fold the swap back into the dimension numbers), and every convolution
of the backward pass gets the fast path, in loops or not. A second barrier ties the copy to the cotangent, so
it is made when the backward pass reaches the layer, not all copies at once (peak memory). The weight
gradient is JAX's own and is dropped by XLA when nothing uses it (frozen networks in the attack).

A 1x1 convolution in NHWC/HWIO layout (ungrouped, undilated, unpadded; any stride) is computed as a strided
slice and a matrix product instead, with the same values up to summation order. XLA:CPU runs it as a plain
matmul, and its backward pass as two more, faster than its convolutions on ResNet bottleneck shapes
(`scripts/bench_conv.py --tables 1x1` and `scripts/bench_train.py` measure it).

Every output goes through `models.materialize`: XLA stores it, and the backward pass stores its cotangent,
instead of fusing the BatchNorm gradient that produces the cotangent into each of its consumers — the
transposes that feed the weight gradients among them, which then read the BatchNorm's operands in
transposed order (a large part of a ResNet-152 training step in a `jax.profiler` trace).

The README's speed section has the measured figures of all three.

All three are XLA:CPU formulations: with `jaxmia.models.xla_cpu` switched off (the default on GPU and TPU) this
is `lax.conv_general_dilated` itself. Pass it to Flax as
`nn.Conv(..., conv_general_dilated=conv_general_dilated)`.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxmia.models import xla_cpu
from jaxmia.models.materialize import materialize


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, options: tuple):
  return lax.conv_general_dilated(x, kernel, **dict(options))


def _conv_fwd(x, kernel, options):
  return _conv(x, kernel, options), (x, kernel)


def _conv_bwd(options, residuals, g):
  x, kernel = residuals
  kwargs = dict(options)
  numbers = kwargs["dimension_numbers"]  # a lax.ConvDimensionNumbers; rhs_spec is (O axis, I axis, spatial...)
  out_axis, in_axis, *spatial = numbers.rhs_spec
  kernel, g = lax.optimization_barrier((kernel, g))  # copy the kernel only once the cotangent exists
  swapped = lax.optimization_barrier(jnp.swapaxes(kernel, out_axis, in_axis))
  swapped_kwargs = dict(kwargs, dimension_numbers=numbers._replace(rhs_spec=(in_axis, out_axis, *spatial)))
  _, input_vjp = jax.vjp(lambda x: lax.conv_general_dilated(x, swapped, **swapped_kwargs), x)
  _, kernel_vjp = jax.vjp(lambda k: lax.conv_general_dilated(x, k, **kwargs), kernel)
  return input_vjp(g)[0], kernel_vjp(g)[0]


_conv.defvjp(_conv_fwd, _conv_bwd)


def _static(value):
  """Lists (Flax passes some) as tuples, so the options are hashable."""
  if isinstance(value, list) or type(value) is tuple:
    return tuple(_static(v) for v in value)
  return value


def _is_pointwise(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                  batch_group_count) -> bool:
  """A 1x1, unpadded, undilated, ungrouped 2-D convolution in NHWC/HWIO layout."""
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  unpadded = padding in ("VALID", "SAME") or all(tuple(p) == (0, 0) for p in padding)
  undilated = all(d in (None, 1) for dilation in (lhs_dilation, rhs_dilation) for d in (dilation or (1,)))
  return (lhs.ndim == 4 and dimension_numbers == nhwc and rhs.shape[:2] == (1, 1) and unpadded and undilated
          and feature_group_count == 1 and batch_group_count == 1)


def _pointwise(lhs, rhs, window_strides, precision, preferred_element_type):
  """`[B, H, W, I]` x `[1, 1, I, O]` -> `[B, ceil(H / sh), ceil(W / sw), O]` as a matrix product."""
  stride_h, stride_w = window_strides
  return lax.dot_general(lhs[:, ::stride_h, ::stride_w], rhs[0, 0], (((3,), (0,)), ((), ())),
                         precision=precision, preferred_element_type=preferred_element_type)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
  """Same signature and result as `lax.conv_general_dilated`."""
  if not xla_cpu.enabled():
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)
  dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if _is_pointwise(lhs, rhs, _static(padding), lhs_dilation, rhs_dilation, dimension_numbers,
                   feature_group_count, batch_group_count):
    return materialize(_pointwise(lhs, rhs, tuple(window_strides), precision, preferred_element_type))
  options = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                 rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                 feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                 precision=precision, preferred_element_type=preferred_element_type)
  return materialize(_conv(lhs, rhs, tuple((k, _static(v)) for k, v in options.items())))
