"""`conv_general_dilated`: `lax.conv_general_dilated` whose input gradient runs on a materialised kernel.

Values and gradients are those of `lax.conv_general_dilated`; only how XLA receives the backward pass differs.
JAX writes the input gradient of a convolution as a convolution with the kernel's I and O axes swapped in the
dimension numbers (no data movement). Outside loops XLA:CPU then copies the kernel into the layout its fast
convolution library (YNNPACK) takes; inside a `while` loop it does not, and falls back to a generic convolution
several times slower — which made the attack's on-device `fori_loop` over steps slower than the same step
outside a loop. Here the backward pass swaps the kernel's I/O axes physically (behind an
`optimization_barrier`, so XLA cannot fold the swap back into the dimension numbers), and every convolution
of the backward pass gets the fast path, in loops or not. (That is XLA:CPU with its default libraries, as the
low-resolution programs compile; jaxmia's training and PPA attack steps keep convolutions off YNNPACK,
`xla_cpu.step_compiler_options`.) A second barrier ties the copy to the cotangent, so
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

On request (`as_patches=True`; GMI's and KED-MI's networks ask for it) an ungrouped 2-D convolution in NHWC/HWIO
layout is computed as patches times a matrix: the padded, dilated input cut into one strided slice per kernel
tap, concatenated along channels, times the kernel as a `[kh * kw * I, O]` matrix; its gradients are slices,
pads and matrix products. Their 5x5 layers run on 4x4 and 2x2 maps at 32x32, where XLA:CPU's convolution, and
the weight gradient of their other layers, fall back to a generic convolution far slower
(`scripts/bench_conv.py --tables small` measures it). Not the default: ResNet's and DenseNet's last 3x3 layers
at 32 px take the same slow path, but switching them changes the rounding of the targets the committed studies
trained; they follow when those studies are regenerated.

`docs/speed.md` has the measured figures.

`conv_transpose2x` (stride-2 transposed convolutions: StyleGAN2's up-sampling convs, GMI's generator) is an
exact polyphase rewrite used on every backend.

All of these are XLA:CPU formulations: with `jaxmia.models.xla_cpu` switched off (the default on GPU and TPU) this
is `lax.conv_general_dilated` itself. Pass it to Flax as
`nn.Conv(..., conv_general_dilated=conv_general_dilated)`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
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


def _dilated(size: int, dilation: int) -> int:
  return (size - 1) * dilation + 1 if size else 0


def _is_patchable(lhs, rhs, dimension_numbers, feature_group_count, batch_group_count) -> bool:
  """An ungrouped 2-D convolution in NHWC/HWIO layout."""
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  return lhs.ndim == 4 and dimension_numbers == nhwc and feature_group_count == 1 and batch_group_count == 1


def _patches_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, precision,
                  preferred_element_type):
  """`[B, H, W, I]` x `[kh, kw, I, O]` -> `[B, oh, ow, O]`: one strided slice per tap, then a matrix product."""
  lhs_dilation, rhs_dilation = tuple(lhs_dilation or (1, 1)), tuple(rhs_dilation or (1, 1))
  kh, kw, channels, features = rhs.shape
  extents = [_dilated(k, d) for k, d in zip((kh, kw), rhs_dilation)]
  if isinstance(padding, str):  # as lax: the pads of the undilated input against the dilated kernel
    padding = lax.padtype_to_pads(lhs.shape[1:3], extents, window_strides, padding)
  (low_h, high_h), (low_w, high_w) = padding
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (low_h, high_h, lhs_dilation[0] - 1),
                                              (low_w, high_w, lhs_dilation[1] - 1), (0, 0, 0)))
  (stride_h, stride_w), (height, width) = window_strides, x.shape[1:3]
  out_h, out_w = (height - extents[0]) // stride_h + 1, (width - extents[1]) // stride_w + 1
  taps = [x[:, i * rhs_dilation[0]:i * rhs_dilation[0] + (out_h - 1) * stride_h + 1:stride_h,
            j * rhs_dilation[1]:j * rhs_dilation[1] + (out_w - 1) * stride_w + 1:stride_w]
          for i in range(kh) for j in range(kw)]
  return lax.dot_general(jnp.concatenate(taps, axis=-1), rhs.reshape(kh * kw * channels, features),
                         (((3,), (0,)), ((), ())), precision=precision, preferred_element_type=preferred_element_type)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None, *, as_patches: bool = False):
  """Same signature and result as `lax.conv_general_dilated`; `as_patches`: patches times a matrix (module
  docstring; bind it with `functools.partial` to pass this to Flax)."""
  if not xla_cpu.enabled():
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)
  dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if _is_pointwise(lhs, rhs, _static(padding), lhs_dilation, rhs_dilation, dimension_numbers,
                   feature_group_count, batch_group_count):
    return materialize(_pointwise(lhs, rhs, tuple(window_strides), precision, preferred_element_type))
  if as_patches and _is_patchable(lhs, rhs, dimension_numbers, feature_group_count, batch_group_count):
    return materialize(_patches_conv(lhs, rhs, tuple(window_strides), _static(padding), lhs_dilation,
                                     rhs_dilation, precision, preferred_element_type))
  options = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                 rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                 feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                 precision=precision, preferred_element_type=preferred_element_type)
  return materialize(_conv(lhs, rhs, tuple((k, _static(v)) for k, v in options.items())))


def _phase_kernel(kernel, phase: int, axis: int):
  """Taps of a stride-2 transposed conv that feed output pixels of parity `phase`, in correlation order."""
  k = kernel.shape[axis]
  idx = np.arange(phase, k, 2)[::-1]
  return jnp.take(kernel, idx, axis=axis)


def conv_transpose2x(x, kernel, *, as_patches: bool = False):
  """Stride-2 transposed convolution (as `torch.nn.functional.conv_transpose2d`, no padding).

  `[B, H, W, I]` and `[k, k, I, O]` -> `[B, 2H + k - 2, 2W + k - 2, O]`; output pixel `2i + t` receives
  `x[i] * kernel[t]`. Computed as four stride-1 convolutions at the input resolution, one per output parity,
  interleaved afterwards, so the gradient is made of ordinary convolutions too (a single `lhs_dilation`
  convolution of the zero-dilated input costs four times the multiplications, and its gradients take XLA:CPU's
  generic path). `as_patches` as in `conv_general_dilated`.
  """
  b, h, w, _ = x.shape
  k = kernel.shape[0]
  if kernel.shape[1] != k or k < 2:
    raise ValueError(f"conv_transpose2x needs a square kernel of size >= 2, got {kernel.shape[:2]}")
  size = 2 * h + k - 2
  rows = []
  for py in (0, 1):
    row = []
    for px in (0, 1):
      sub = _phase_kernel(_phase_kernel(kernel, py, 0), px, 1)
      ty, tx = sub.shape[0] - 1, sub.shape[1] - 1
      # Output pixel m of parity p sums x[m - j] * kernel[p + 2j]: a correlation with the reversed taps.
      out_y, out_x = (size - py + 1) // 2, (2 * w + k - 2 - px + 1) // 2
      pad_y = (ty, out_y - h)
      pad_x = (tx, out_x - w)
      row.append(conv_general_dilated(x, sub, (1, 1), (pad_y, pad_x), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      as_patches=as_patches))
    rows.append(row)
  # Interleave the parities: pad every phase to the size of phase 0, stack, reshape, crop.
  n0y, n0x = rows[0][0].shape[1], rows[0][0].shape[2]

  def grow(a):
    return jnp.pad(a, ((0, 0), (0, n0y - a.shape[1]), (0, n0x - a.shape[2]), (0, 0)))

  y = jnp.stack([jnp.stack([grow(a) for a in row], axis=3) for row in rows], axis=2)  # [B, n0y, 2, n0x, 2, O]
  y = y.reshape(b, 2 * n0y, 2 * n0x, y.shape[-1])
  return y[:, :size, :2 * w + k - 2]
