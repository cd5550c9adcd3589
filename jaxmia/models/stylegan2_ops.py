"""Numerical building blocks of StyleGAN2: bias + activation, FIR resampling, resampling and modulated convs.

All images and feature maps are `[B, H, W, C]`; conv kernels are `[kh, kw, in, out]` (HWIO). Everything is
a pure function of arrays and static Python settings, so it traces once and runs without Python loops.

Semantics follow NVlabs stylegan2-ada-pytorch (`upfirdn2d`, `conv2d_resample`, `bias_act`), which these
functions reproduce to float32 rounding:

* FIR resampling filters are separable: a 1-D tap list `f` stands for the normalised 2-D filter
  `outer(f, f) / sum(f)**2` that NVlabs stores as `resample_filter` buffers. Filtering runs as two 1-D passes
  of shifted slices (a handful of fused multiply-adds per pixel, no depthwise convolution), and
  down-sampling evaluates only the kept pixels.
* Up-sampling convs are transposed stride-2 convs followed by the FIR filter (as NVlabs does). The
  transposed conv is split into its four polyphase components, each an ordinary stride-1 convolution at the
  input resolution, interleaved afterwards, so its gradient is made of ordinary convolutions too; against a
  single `lhs_dilation` convolution (whose input gradient is a stride-2 convolution) it is as fast at B=1 and
  faster at larger batches, forward and backward (`scripts/bench_generator.py --compare_modconv` times both).
* FIR passes have a custom VJP: the adjoint of a FIR pass is another FIR pass (reversed taps, `up` and
  `down` swapped), whereas autodiff through the slices builds one padded cotangent per tap, a much more
  expensive backward pass for the filters after the up-convs.
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmia.models.conv import conv_general_dilated, conv_transpose2x

_SQRT2 = float(np.sqrt(2.0))

# name -> (function, default gain), as in NVlabs `bias_act.activation_funcs`.
ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (jax.nn.relu, _SQRT2),
    "lrelu": (lambda x: jax.nn.leaky_relu(x, 0.2), _SQRT2),
    "tanh": (jnp.tanh, 1.0),
    "sigmoid": (jax.nn.sigmoid, 1.0),
    "elu": (jax.nn.elu, 1.0),
    "selu": (jax.nn.selu, 1.0),
    "softplus": (jax.nn.softplus, 1.0),
    "swish": (jax.nn.silu, _SQRT2),
}

_DIMS = ("NHWC", "HWIO", "NHWC")


def check_activation(name: str) -> str:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; StyleGAN2 supports {', '.join(ACTIVATIONS)}.")
  return name


def bias_act(x, bias=None, activation: str = "linear", gain: float = 1.0, clamp: float | None = None):
  """`activation(x + bias) * default_gain * gain`, then clipped to `+-clamp * gain` (clamp None: no clip).

  `bias` broadcasts over the last axis. `clamp` is a layer's `conv_clamp`; like NVlabs, it is scaled by the
  same extra `gain` as the activation (e.g. sqrt(0.5) in resnet blocks).
  """
  fn, default_gain = ACTIVATIONS[activation]
  if bias is not None:
    x = x + bias.astype(x.dtype)
  x = fn(x)
  total_gain = default_gain * gain
  if total_gain != 1:
    x = x * jnp.asarray(total_gain, x.dtype)
  if clamp is not None:
    limit = jnp.asarray(clamp * gain, x.dtype)
    x = jnp.clip(x, -limit, limit)
  return x


def normalize_2nd_moment(x, axis: int = -1, eps: float = 1e-8):
  """Scales `x` to unit mean square along `axis`."""
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


def fir_taps(resample_filter: Sequence[float]) -> np.ndarray:
  """Normalised 1-D taps (float64, sum 1) of a separable FIR filter given as a list such as [1, 3, 3, 1]."""
  taps = np.asarray(resample_filter, dtype=np.float64)
  if taps.ndim != 1 or taps.size == 0 or taps.sum() == 0:
    raise ValueError(f"resample_filter must be a non-empty 1-D list of taps with a non-zero sum, got "
                     f"{resample_filter!r}.")
  return taps / taps.sum()


def filter_2d(resample_filter: Sequence[float]) -> np.ndarray:
  """The 2-D float32 filter NVlabs stores as `resample_filter` buffers for these taps."""
  taps = np.asarray(resample_filter, dtype=np.float32)
  f = np.outer(taps, taps)
  return (f / f.sum()).astype(np.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _fir_axis(x, kernel: tuple[float, ...], axis: int, up: int, down: int, pad: tuple[int, int], size: int):
  """One separable pass of `upfirdn` along `axis` (of length `size`): zero-insert by `up`, pad/crop,
  correlate with `kernel`, keep every `down`-th sample. A sum of shifted (strided) slices."""
  config = [(0, 0, 0)] * x.ndim
  config[axis] = (pad[0], pad[1] + up - 1, up - 1)
  x = lax.pad(x, jnp.zeros((), x.dtype), config)
  valid = x.shape[axis] - len(kernel) + 1
  if valid <= 0:
    raise ValueError(f"FIR filter of {len(kernel)} taps does not fit into {x.shape[axis]} padded pixels.")
  out = (valid - 1) // down + 1
  terms = [k * lax.slice_in_dim(x, i, i + (out - 1) * down + 1, stride=down, axis=axis)
           for i, k in enumerate(kernel) if k != 0]
  return sum(terms[1:], terms[0])


def _fir_axis_fwd(x, kernel, axis, up, down, pad, size):
  return _fir_axis(x, kernel, axis, up, down, pad, size), None


def _fir_axis_bwd(kernel, axis, up, down, pad, size, _, g):
  # The adjoint of a FIR pass is again one: zero-insert by `down`, correlate with the reversed kernel over the
  # transposed padding, keep every `up`-th sample. Autodiff would instead materialise one padded copy of the
  # cotangent per tap, which made the backward pass several times slower than the forward pass.
  k = len(kernel)
  trailing = g.shape[axis] * down - (size * up + pad[0] + pad[1] - k + 1)
  return (_fir_axis(g, kernel[::-1], axis, down, up, (k - 1 - pad[0], k - 1 - pad[1] - trailing),
                    g.shape[axis]),)


_fir_axis.defvjp(_fir_axis_fwd, _fir_axis_bwd)


def upfirdn2d(x, taps: np.ndarray, *, up: int = 1, down: int = 1, padding: tuple[int, int] = (0, 0),
              gain: float = 1.0):
  """NVlabs `upfirdn2d` for a separable filter on `[B, H, W, C]`; `padding` (before, after) on both axes.

  Zeros are inserted after each pixel (`up`), the result is padded (negative values crop), convolved with
  the 2-D filter `outer(taps, taps) * gain` and every `down`-th pixel is kept.
  """
  # upfirdn convolves, i.e. correlates with the flipped taps (the default filters are symmetric anyway).
  kernel = tuple(float(t) for t in taps[::-1] * np.sqrt(gain))
  padding = tuple(padding)
  x = _fir_axis(x, kernel, 1, up, down, padding, x.shape[1])
  return _fir_axis(x, kernel, 2, up, down, padding, x.shape[2])


def upsample2d(x, taps: np.ndarray):
  """2x FIR up-sampling `[B, H, W, C] -> [B, 2H, 2W, C]` (NVlabs `upsample2d`)."""
  n = taps.size
  return upfirdn2d(x, taps, up=2, padding=((n + 1) // 2, (n - 2) // 2), gain=4.0)


def downsample2d(x, taps: np.ndarray):
  """2x FIR down-sampling `[B, H, W, C] -> [B, H/2, W/2, C]` (NVlabs `downsample2d`)."""
  n = taps.size
  return upfirdn2d(x, taps, down=2, padding=((n - 1) // 2, (n - 2) // 2))


def conv2d(x, kernel, *, stride: int = 1, padding: int | tuple[int, int] = 0):
  """Cross-correlation (as `torch.nn.functional.conv2d`) of `[B, H, W, I]` with `[kh, kw, I, O]`."""
  pad = (padding, padding) if isinstance(padding, int) else padding
  return conv_general_dilated(x, kernel, (stride, stride), (pad, pad), dimension_numbers=_DIMS)


def conv2d_resample(x, kernel, taps: np.ndarray | None = None, *, up: int = 1, down: int = 1):
  """NVlabs `conv2d_resample` with 'same' padding: a conv preceded (down=2) or followed (up=2) by FIR filtering.

  `[B, H, W, I]` -> `[B, H*up/down, W*up/down, O]`; `kernel` `[k, k, I, O]` with odd k, applied as a
  correlation (`up=1`) or as a transposed convolution (`up=2`), as in NVlabs.
  """
  k = kernel.shape[0]
  p = k // 2
  if up == 1 and down == 1:
    return conv2d(x, kernel, padding=p)
  n = taps.size
  if up == 2 and down == 1:
    pad0, pad1 = p + (n + 1) // 2, p + (n - 2) // 2
    if k == 1:
      return upfirdn2d(conv2d(x, kernel), taps, up=2, padding=(pad0, pad1), gain=4.0)
    # NVlabs flips nothing here: conv_transpose2d with the stored kernel, then the FIR filter.
    y = conv_transpose2x(x, kernel)
    return upfirdn2d(y, taps, padding=(pad0 - (k - 1), pad1 - (k - 2)), gain=4.0)
  if down == 2 and up == 1:
    pad0, pad1 = p + (n - 1) // 2, p + (n - 2) // 2
    if k == 1:
      return conv2d(upfirdn2d(x, taps, down=2, padding=(pad0, pad1)), kernel)
    return conv2d(upfirdn2d(x, taps, padding=(pad0, pad1)), kernel, stride=2)
  raise ValueError(f"unsupported resampling up={up}, down={down} (StyleGAN2 uses 1 or 2).")


def modulated_conv2d(x, kernel, styles, taps: np.ndarray | None = None, *, demodulate: bool = True,
                     up: int = 1):
  """Style-modulated convolution, computed by scaling activations around one conv with a shared kernel.

  Args:
    x: `[B, H, W, I]` activations (compute dtype).
    kernel: `[k, k, I, O]` raw (unscaled) weights, shared by the batch.
    styles: `[B, I]` float32 per-sample input scales.
    taps: FIR taps for `up=2`.
    demodulate: rescale each output channel to unit expected variance, `rsqrt(sum_{kh,kw,i} (w*s)^2 + 1e-8)`.
    up: 1 or 2.

  Returns `[B, H*up, W*up, O]`; equal to NVlabs' grouped "fused" formulation up to float rounding.
  """
  styles = styles.astype(jnp.float32)
  y = conv2d_resample(x * styles[:, None, None, :].astype(x.dtype), kernel.astype(x.dtype), taps, up=up)
  if demodulate:
    sq_norms = jnp.sum(jnp.square(kernel.astype(jnp.float32)), axis=(0, 1))  # [I, O]
    dcoefs = lax.rsqrt(jnp.dot(jnp.square(styles), sq_norms, precision=lax.Precision.HIGHEST) + 1e-8)
    y = y * dcoefs[:, None, None, :].astype(y.dtype)
  return y


def minibatch_std(x, group_size: int | None, num_channels: int = 1):
  """Appends `num_channels` feature maps holding the mean within-group std (NVlabs `MinibatchStdLayer`).

  `[N, H, W, C] -> [N, H, W, C + num_channels]`. Groups are strided over the batch as in NVlabs: with group
  size G, sample `i` is in group `i % (N // G)`. G = min(group_size, N); N must divide by G.
  """
  n, h, w, c = x.shape
  g = n if group_size is None else min(group_size, n)
  if n % g:
    raise ValueError(f"minibatch std: batch size {n} is not a multiple of the group size {g}.")
  f = num_channels
  y = x.astype(jnp.float32).reshape(g, n // g, h, w, f, c // f)
  y = y - jnp.mean(y, axis=0)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n/G, H, W, F, c]
  y = jnp.mean(y, axis=(1, 2, 4))  # [n/G, F]
  y = jnp.tile(y, (g, 1))[:, None, None, :]  # sample i -> group i % (n/G)
  y = jnp.broadcast_to(y, (n, h, w, f)).astype(x.dtype)
  return jnp.concatenate([x, y], axis=-1)
