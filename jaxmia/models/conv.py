"""`conv_general_dilated`: `lax.conv_general_dilated` whose input gradient runs on a materialised kernel.

Values and gradients are those of `lax.conv_general_dilated`; only how XLA receives the backward pass differs.
JAX writes the input gradient of a convolution as a convolution with the kernel's I and O axes swapped in the
dimension numbers (no data movement). Outside loops XLA:CPU then copies the kernel into the layout its fast
convolution library (YNNPACK) takes; inside a `while` loop it does not, and falls back to a generic convolution
that measured ~3.5x slower — which made the attack's on-device `fori_loop` over steps 1.7x slower than the same
step outside a loop. Here the backward pass swaps the kernel's I/O axes physically (behind an
`optimization_barrier`, so XLA cannot fold the swap back into the dimension numbers), and every convolution
of the backward pass gets the fast path, in loops or not. A second barrier ties the copy to the cotangent, so
it is made when the backward pass reaches the layer, not all copies at once (peak memory). The weight
gradient is JAX's own and is dropped by XLA when nothing uses it (frozen networks in the attack).

Pass it to Flax as `nn.Conv(..., conv_general_dilated=conv_general_dilated)`.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax


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


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
  """Same signature and result as `lax.conv_general_dilated`."""
  dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  options = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                 rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                 feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                 precision=precision, preferred_element_type=preferred_element_type)
  return _conv(lhs, rhs, tuple((k, _static(v)) for k, v in options.items()))
