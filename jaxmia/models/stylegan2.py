"""StyleGAN2 (NVlabs stylegan2-ada-pytorch `training/networks.py`) in Flax linen: Generator and Discriminator.

Usage (the constructor takes the NVlabs `init_kwargs`; `convert.stylegan2_from_torch` builds both pieces)::

    ws = G.apply(variables, z, c, truncation_psi=0.7, truncation_cutoff=8, method="mapping")  # [B, num_ws, w_dim]
    img = G.apply(variables, ws, noise_mode="const", method="synthesis")                     # [B, R, R, C]
    logits = D.apply(d_variables, img, c)                                                    # [B, 1]

Outputs equal NVlabs' `force_fp32=True` outputs to float32 rounding for every architecture (orig, skip,
resnet), resolution, `conv_clamp` and conditional setting. `num_fp16_res` and the channels-last options only
choose PyTorch's fp16 kernels, so they are accepted and ignored; `dtype` picks the compute dtype here.

Variables: `{'params': ..., 'buffers': ...}`. 'params' mirror the trainable PyTorch parameters (names as in
NVlabs: `mapping/fc0`, `synthesis/b64/conv0/affine`, ...; dense kernels `[in, out]`, conv kernels
`[kh, kw, in, out]`, `const` `[R, R, C]`); 'buffers' hold `w_avg` and the `noise_const` maps. `w_avg` is not
updated here (inference only). Noise mode 'random' draws from the 'noise' RNG stream
(`rngs={'noise': key}`).

Modulated convolutions scale the activations (`x * style`, one conv with the shared kernel, then
`* demod`) instead of building per-sample kernels for a grouped conv as NVlabs' fused path does. With the
generator frozen, as in model inversion attacks, the backward pass then needs only input-gradient
convolutions, and XLA:CPU runs grouped convolutions, their gradients above all, far off its fast path (an
order of magnitude slower forward + gradient w.r.t. ws; `scripts/bench_generator.py --compare_modconv` times
both formulations). Activation scaling is used throughout.
"""
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from jaxmia.models import stylegan2_ops as ops

# Defaults of the NVlabs constructors; keys not listed here are rejected with an error naming the valid ones.
MAPPING_DEFAULTS = dict(num_layers=8, embed_features=None, layer_features=None, activation="lrelu",
                        lr_multiplier=0.01, w_avg_beta=0.995)
SYNTHESIS_DEFAULTS = dict(channel_base=32768, channel_max=512, num_fp16_res=0, architecture="skip",
                          resample_filter=(1, 3, 3, 1), conv_clamp=None, fp16_channels_last=False,
                          kernel_size=3, use_noise=True, activation="lrelu", channels_last=False)
D_BLOCK_DEFAULTS = dict(activation="lrelu", resample_filter=(1, 3, 3, 1), fp16_channels_last=False,
                        freeze_layers=0)
D_EPILOGUE_DEFAULTS = dict(mbstd_group_size=4, mbstd_num_channels=1, activation="lrelu")
NOISE_MODES = ("random", "const", "none")


def _freeze(value):
  """Hashable copy of a kwargs tree (dicts -> FrozenDict, lists -> tuples), so modules can be static args."""
  if isinstance(value, Mapping):
    return FrozenDict({k: _freeze(v) for k, v in value.items()})
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def _with_defaults(kwargs: Mapping[str, Any] | None, defaults: dict, what: str) -> dict:
  kwargs = dict(kwargs or {})
  unknown = sorted(set(kwargs) - set(defaults))
  if unknown:
    raise ValueError(f"Unknown {what} {unknown}; valid keys are {sorted(defaults)}.")
  return {**defaults, **kwargs}


def _check_resolution(resolution: int):
  if resolution < 4 or resolution & (resolution - 1):
    raise ValueError(f"img_resolution must be a power of two >= 4, got {resolution}.")


def num_ws_for(img_resolution: int) -> int:
  """ws per image: one per conv (1 at 4x4, 2 per higher block) plus the last ToRGB: `2 * log2(R) - 2`."""
  return 2 * int(math.log2(img_resolution)) - 2


def _normal_init(scale: float = 1.0):
  return lambda key, shape: jax.random.normal(key, shape, jnp.float32) * scale


def _const_init(value: float):
  return lambda key, shape: jnp.full(shape, value, jnp.float32)


class FullyConnected(nn.Module):
  """NVlabs `FullyConnectedLayer`: equalised-learning-rate dense layer, `[..., in] -> [..., features]`."""
  features: int
  activation: str = "linear"
  lr_multiplier: float = 1.0
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    in_features = x.shape[-1]
    kernel = self.param("kernel", _normal_init(1.0 / self.lr_multiplier), (in_features, self.features))
    y = jnp.dot(x, kernel * (self.lr_multiplier / math.sqrt(in_features)), precision=jax.lax.Precision.HIGHEST)
    bias = self.param("bias", _const_init(self.bias_init), (self.features,)) * self.lr_multiplier
    return ops.bias_act(y, bias, self.activation)


class MappingNetwork(nn.Module):
  """NVlabs `MappingNetwork`: z (and embedded c) -> w, optionally broadcast to `num_ws` and truncated."""
  z_dim: int
  c_dim: int
  w_dim: int
  num_ws: int | None
  num_layers: int = 8
  embed_features: int | None = None
  layer_features: int | None = None
  activation: str = "lrelu"
  lr_multiplier: float = 0.01
  w_avg_beta: float | None = 0.995

  @nn.compact
  def __call__(self, z, c, truncation_psi=1.0, truncation_cutoff=None):
    """`z [B, z_dim]`, `c [B, c_dim]` -> `[B, num_ws, w_dim]` (or `[B, w_dim]` when num_ws is None)."""
    embed_features = self.w_dim if self.embed_features is None else self.embed_features
    layer_features = self.w_dim if self.layer_features is None else self.layer_features
    parts = []
    if self.z_dim > 0:
      if z is None or z.shape[-1] != self.z_dim:
        raise ValueError(f"z must have shape [B, {self.z_dim}], got {None if z is None else z.shape}.")
      parts.append(ops.normalize_2nd_moment(jnp.asarray(z, jnp.float32)))
    if self.c_dim > 0:
      if c is None or c.shape[-1] != self.c_dim:
        raise ValueError(f"This network is conditional: c must have shape [B, {self.c_dim}] (e.g. one-hot "
                         f"labels), got {None if c is None else c.shape}.")
      embedded = FullyConnected(embed_features, name="embed")(jnp.asarray(c, jnp.float32))
      parts.append(ops.normalize_2nd_moment(embedded))
    x = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    for idx in range(self.num_layers):
      features = self.w_dim if idx == self.num_layers - 1 else layer_features
      x = FullyConnected(features, activation=self.activation, lr_multiplier=self.lr_multiplier,
                         name=f"fc{idx}")(x)

    track_w_avg = self.num_ws is not None and self.w_avg_beta is not None
    if track_w_avg:
      w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,), jnp.float32).value
      x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
    if isinstance(truncation_psi, (int, float)) and truncation_psi == 1:
      return x
    if not track_w_avg:
      raise ValueError("Truncation needs w_avg, which this mapping network does not track (num_ws or "
                       "w_avg_beta is None).")
    truncated = w_avg + truncation_psi * (x - w_avg)
    if truncation_cutoff is None:
      return truncated
    keep = (jnp.arange(self.num_ws) < truncation_cutoff)[None, :, None]
    return jnp.where(keep, truncated, x)


class SynthesisLayer(nn.Module):
  """NVlabs `SynthesisLayer`: modulated conv (optionally 2x up-sampling), noise, bias, activation, clamp."""
  out_channels: int
  resolution: int
  kernel_size: int = 3
  up: int = 1
  use_noise: bool = True
  activation: str = "lrelu"
  resample_filter: Sequence[float] = (1, 3, 3, 1)
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x, w, noise_mode: str = "random", gain: float = 1.0):
    """`x [B, R/up, R/up, I]`, `w [B, w_dim]` -> `[B, R, R, out_channels]`."""
    in_channels = x.shape[-1]
    styles = FullyConnected(in_channels, bias_init=1.0, name="affine")(w)
    kernel = self.param("kernel", _normal_init(), (self.kernel_size, self.kernel_size, in_channels,
                                                   self.out_channels))
    x = ops.modulated_conv2d(x, kernel, styles, ops.fir_taps(self.resample_filter), up=self.up)
    if self.use_noise:
      strength = self.param("noise_strength", _const_init(0.0), ())
      noise_const = self.variable("buffers", "noise_const",
                                  lambda: jax.random.normal(self.make_rng("params"),
                                                            (self.resolution, self.resolution)))
      if noise_mode == "random":
        noise = jax.random.normal(self.make_rng("noise"), (x.shape[0], self.resolution, self.resolution, 1))
        x = x + (noise * strength).astype(x.dtype)
      elif noise_mode == "const":
        x = x + (noise_const.value * strength)[None, :, :, None].astype(x.dtype)
    bias = self.param("bias", _const_init(0.0), (self.out_channels,))
    return ops.bias_act(x, bias, self.activation, gain=gain, clamp=self.conv_clamp)


class ToRGB(nn.Module):
  """NVlabs `ToRGBLayer`: modulated 1x1 conv without demodulation, bias, clamp."""
  out_channels: int
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x, w):
    in_channels = x.shape[-1]
    styles = FullyConnected(in_channels, bias_init=1.0, name="affine")(w) / math.sqrt(in_channels)
    kernel = self.param("kernel", _normal_init(), (1, 1, in_channels, self.out_channels))
    x = ops.modulated_conv2d(x, kernel, styles, demodulate=False)
    bias = self.param("bias", _const_init(0.0), (self.out_channels,))
    return ops.bias_act(x, bias, "linear", clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
  """NVlabs `Conv2dLayer`: equalised-learning-rate conv with optional 2x FIR up/down-sampling."""
  out_channels: int
  kernel_size: int
  use_bias: bool = True
  activation: str = "linear"
  up: int = 1
  down: int = 1
  resample_filter: Sequence[float] = (1, 3, 3, 1)
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x, gain: float = 1.0):
    in_channels = x.shape[-1]
    kernel = self.param("kernel", _normal_init(), (self.kernel_size, self.kernel_size, in_channels,
                                                   self.out_channels))
    kernel = (kernel / math.sqrt(in_channels * self.kernel_size ** 2)).astype(x.dtype)
    x = ops.conv2d_resample(x, kernel, ops.fir_taps(self.resample_filter), up=self.up, down=self.down)
    bias = self.param("bias", _const_init(0.0), (self.out_channels,)) if self.use_bias else None
    return ops.bias_act(x, bias, self.activation, gain=gain, clamp=self.conv_clamp)


def _channels(resolution: int, channel_base: int, channel_max: int) -> int:
  return min(channel_base // resolution, channel_max)


class SynthesisBlock(nn.Module):
  """NVlabs `SynthesisBlock` at one resolution: [const | conv0 (up)] + conv1, ToRGB, skip/resnet wiring."""
  in_channels: int  # 0 for the first (4x4) block
  out_channels: int
  resolution: int
  img_channels: int
  is_last: bool
  architecture: str = "skip"
  resample_filter: Sequence[float] = (1, 3, 3, 1)
  conv_clamp: float | None = None
  kernel_size: int = 3
  use_noise: bool = True
  activation: str = "lrelu"
  dtype: Any = jnp.float32

  @property
  def num_conv(self) -> int:
    return 1 if self.in_channels == 0 else 2

  @property
  def num_torgb(self) -> int:
    return 1 if self.is_last or self.architecture == "skip" else 0

  @nn.compact
  def __call__(self, x, img, ws, noise_mode: str = "random"):
    """`x [B, R/2, R/2, in]` (None for the first block), `img` float32 or None, `ws [B, num_conv+num_torgb, w_dim]`."""
    layer = dict(resolution=self.resolution, kernel_size=self.kernel_size, use_noise=self.use_noise,
                 activation=self.activation, conv_clamp=self.conv_clamp)
    taps = ops.fir_taps(self.resample_filter)
    if self.in_channels == 0:
      const = self.param("const", _normal_init(), (self.resolution, self.resolution, self.out_channels))
      x = jnp.broadcast_to(const.astype(self.dtype), (ws.shape[0],) + const.shape)
      x = SynthesisLayer(self.out_channels, name="conv1", **layer)(x, ws[:, 0], noise_mode)
    else:
      x = x.astype(self.dtype)
      conv0 = SynthesisLayer(self.out_channels, up=2, resample_filter=self.resample_filter, name="conv0", **layer)
      conv1 = SynthesisLayer(self.out_channels, name="conv1", **layer)
      if self.architecture == "resnet":
        y = Conv2dLayer(self.out_channels, kernel_size=1, use_bias=False, up=2,
                        resample_filter=self.resample_filter, name="skip")(x, gain=math.sqrt(0.5))
        x = conv0(x, ws[:, 0], noise_mode)
        x = y + conv1(x, ws[:, 1], noise_mode, gain=math.sqrt(0.5))
      else:
        x = conv1(conv0(x, ws[:, 0], noise_mode), ws[:, 1], noise_mode)
    if img is not None:
      img = ops.upsample2d(img, taps)
    if self.num_torgb:
      y = ToRGB(self.img_channels, conv_clamp=self.conv_clamp, name="torgb")(x, ws[:, self.num_conv])
      y = y.astype(jnp.float32)
      img = y if img is None else img + y
    return x, img


class SynthesisNetwork(nn.Module):
  """NVlabs `SynthesisNetwork`: `ws [B, num_ws, w_dim]` -> image `[B, R, R, img_channels]` (float32)."""
  w_dim: int
  img_resolution: int
  img_channels: int
  block_kwargs: Mapping[str, Any] = FrozenDict()  # SYNTHESIS_DEFAULTS filled in
  dtype: Any = jnp.float32

  def blocks(self) -> list[tuple[int, dict]]:
    """(resolution, SynthesisBlock kwargs) for every block, low to high resolution."""
    kw = self.block_kwargs
    resolutions = [2 ** i for i in range(2, int(math.log2(self.img_resolution)) + 1)]
    out = []
    for res in resolutions:
      out.append((res, dict(
          in_channels=_channels(res // 2, kw["channel_base"], kw["channel_max"]) if res > 4 else 0,
          out_channels=_channels(res, kw["channel_base"], kw["channel_max"]), resolution=res,
          img_channels=self.img_channels, is_last=res == self.img_resolution, architecture=kw["architecture"],
          resample_filter=tuple(kw["resample_filter"]), conv_clamp=kw["conv_clamp"],
          kernel_size=kw["kernel_size"], use_noise=kw["use_noise"], activation=kw["activation"])))
    return out

  @property
  def num_ws(self) -> int:
    return num_ws_for(self.img_resolution)

  @nn.compact
  def __call__(self, ws, noise_mode: str = "random"):
    if noise_mode not in NOISE_MODES:
      raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.")
    if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
      raise ValueError(f"ws must have shape [B, {self.num_ws}, {self.w_dim}], got {ws.shape}.")
    ws = ws.astype(jnp.float32)
    x = img = None
    w_idx = 0
    for res, kw in self.blocks():
      block = SynthesisBlock(**kw, dtype=self.dtype, name=f"b{res}")
      x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + block.num_torgb], noise_mode)
      w_idx += block.num_conv
    return img


class Generator(nn.Module):
  """NVlabs `Generator` (mapping + synthesis), constructed from the NVlabs `init_kwargs`.

  Attributes: z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs as in
  NVlabs; `dtype` is the synthesis compute dtype (params, styles, demodulation and the image stay float32).
  """
  z_dim: int
  c_dim: int
  w_dim: int
  img_resolution: int
  img_channels: int
  mapping_kwargs: Mapping[str, Any] = FrozenDict()
  synthesis_kwargs: Mapping[str, Any] = FrozenDict()
  dtype: Any = jnp.float32

  def __post_init__(self):
    object.__setattr__(self, "mapping_kwargs", _freeze(self.mapping_kwargs))
    object.__setattr__(self, "synthesis_kwargs", _freeze(self.synthesis_kwargs))
    _check_resolution(self.img_resolution)
    super().__post_init__()

  def _synthesis_config(self) -> dict:
    kw = _with_defaults(self.synthesis_kwargs, SYNTHESIS_DEFAULTS, "synthesis_kwargs")
    if kw["architecture"] not in ("orig", "skip", "resnet"):
      raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {kw['architecture']!r}.")
    ops.check_activation(kw["activation"])
    ops.fir_taps(kw["resample_filter"])
    return kw

  def setup(self):
    self.synthesis_network = SynthesisNetwork(self.w_dim, self.img_resolution, self.img_channels,
                                              FrozenDict(self._synthesis_config()), dtype=self.dtype,
                                              name="synthesis")
    mapping = _with_defaults(self.mapping_kwargs, MAPPING_DEFAULTS, "mapping_kwargs")
    ops.check_activation(mapping["activation"])
    self.mapping_network = MappingNetwork(self.z_dim, self.c_dim, self.w_dim, self.num_ws, **mapping,
                                          name="mapping")

  @property
  def num_ws(self) -> int:
    """Number of w vectors the synthesis network consumes."""
    return num_ws_for(self.img_resolution)

  def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
    """`z [B, z_dim]`, `c [B, c_dim]` or None -> `ws [B, num_ws, w_dim]`; cutoff None truncates all ws."""
    return self.mapping_network(z, c, truncation_psi, truncation_cutoff)

  def synthesis(self, ws, noise_mode: str = "random"):
    """`ws [B, num_ws, w_dim]` -> image `[B, R, R, img_channels]` float32, not clamped."""
    return self.synthesis_network(ws, noise_mode)

  def __call__(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, noise_mode: str = "random"):
    return self.synthesis(self.mapping(z, c, truncation_psi, truncation_cutoff), noise_mode)


class DiscriminatorBlock(nn.Module):
  """NVlabs `DiscriminatorBlock`: [fromrgb] + conv0 + conv1 (down 2), with orig/skip/resnet wiring."""
  in_channels: int  # 0 for the first (highest-resolution) block
  tmp_channels: int
  out_channels: int
  resolution: int
  img_channels: int
  architecture: str = "resnet"
  activation: str = "lrelu"
  resample_filter: Sequence[float] = (1, 3, 3, 1)
  conv_clamp: float | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, img):
    conv = dict(activation=self.activation, conv_clamp=self.conv_clamp)
    if self.in_channels == 0 or self.architecture == "skip":
      y = Conv2dLayer(self.tmp_channels, kernel_size=1, name="fromrgb", **conv)(img.astype(self.dtype))
      x = y if x is None else x + y
      img = ops.downsample2d(img, ops.fir_taps(self.resample_filter)) if self.architecture == "skip" else None
    x = x.astype(self.dtype)
    conv0 = Conv2dLayer(self.tmp_channels, kernel_size=3, name="conv0", **conv)
    conv1 = Conv2dLayer(self.out_channels, kernel_size=3, down=2, resample_filter=self.resample_filter,
                        name="conv1", **conv)
    if self.architecture == "resnet":
      y = Conv2dLayer(self.out_channels, kernel_size=1, use_bias=False, down=2,
                      resample_filter=self.resample_filter, name="skip")(x, gain=math.sqrt(0.5))
      x = y + conv1(conv0(x), gain=math.sqrt(0.5))
    else:
      x = conv1(conv0(x))
    return x, img


class DiscriminatorEpilogue(nn.Module):
  """NVlabs `DiscriminatorEpilogue` at 4x4 (always float32): mbstd, conv, fc, out, optional cmap projection."""
  in_channels: int
  cmap_dim: int
  resolution: int
  img_channels: int
  architecture: str = "resnet"
  mbstd_group_size: int | None = 4
  mbstd_num_channels: int = 1
  activation: str = "lrelu"
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x, img, cmap):
    x = x.astype(jnp.float32)
    if self.architecture == "skip":
      x = x + Conv2dLayer(self.in_channels, kernel_size=1, activation=self.activation,
                          name="fromrgb")(img.astype(jnp.float32))
    if self.mbstd_num_channels > 0:
      x = ops.minibatch_std(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = Conv2dLayer(self.in_channels, kernel_size=3, activation=self.activation, conv_clamp=self.conv_clamp,
                    name="conv")(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's NCHW flatten order for `fc`
    x = FullyConnected(self.in_channels, activation=self.activation, name="fc")(x)
    x = FullyConnected(1 if self.cmap_dim == 0 else self.cmap_dim, name="out")(x)
    if self.cmap_dim > 0:
      x = jnp.sum(x * cmap, axis=1, keepdims=True) / math.sqrt(self.cmap_dim)
    return x


class Discriminator(nn.Module):
  """NVlabs `Discriminator`: image `[B, R, R, C]` (and labels `c [B, c_dim]`) -> logits `[B, 1]`.

  The minibatch-std layer mixes samples: B must be a multiple of min(mbstd_group_size, B). The input of the
  epilogue is sown as `('intermediates', 'epilogue_in')`.
  """
  c_dim: int
  img_resolution: int
  img_channels: int
  architecture: str = "resnet"
  channel_base: int = 32768
  channel_max: int = 512
  num_fp16_res: int = 0
  conv_clamp: float | None = None
  cmap_dim: int | None = None
  block_kwargs: Mapping[str, Any] = FrozenDict()
  mapping_kwargs: Mapping[str, Any] = FrozenDict()
  epilogue_kwargs: Mapping[str, Any] = FrozenDict()
  dtype: Any = jnp.float32

  def __post_init__(self):
    for name in ("block_kwargs", "mapping_kwargs", "epilogue_kwargs"):
      object.__setattr__(self, name, _freeze(getattr(self, name)))
    _check_resolution(self.img_resolution)
    if self.img_resolution < 8:
      raise ValueError(f"The discriminator needs img_resolution >= 8 (as in NVlabs), got {self.img_resolution}.")
    if self.architecture not in ("orig", "skip", "resnet"):
      raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {self.architecture!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, img, c=None):
    block_kw = _with_defaults(self.block_kwargs, D_BLOCK_DEFAULTS, "block_kwargs")
    epilogue_kw = _with_defaults(self.epilogue_kwargs, D_EPILOGUE_DEFAULTS, "epilogue_kwargs")
    mapping_kw = _with_defaults(self.mapping_kwargs, MAPPING_DEFAULTS, "mapping_kwargs")
    for kw in (block_kw, epilogue_kw, mapping_kw):
      ops.check_activation(kw["activation"])
    if img.ndim != 4 or img.shape[1:] != (self.img_resolution, self.img_resolution, self.img_channels):
      raise ValueError(f"img must have shape [B, {self.img_resolution}, {self.img_resolution}, "
                       f"{self.img_channels}], got {img.shape}.")
    channels = lambda res: _channels(res, self.channel_base, self.channel_max)
    cmap_dim = 0 if self.c_dim == 0 else (channels(4) if self.cmap_dim is None else self.cmap_dim)
    img = jnp.asarray(img, jnp.float32)
    x = None
    for res in [2 ** i for i in range(int(math.log2(self.img_resolution)), 2, -1)]:
      x, img = DiscriminatorBlock(
          channels(res) if res < self.img_resolution else 0, channels(res), channels(res // 2), res,
          self.img_channels, self.architecture, block_kw["activation"], tuple(block_kw["resample_filter"]),
          self.conv_clamp, self.dtype, name=f"b{res}")(x, img)
    cmap = None
    if self.c_dim > 0:
      cmap = MappingNetwork(0, self.c_dim, cmap_dim, num_ws=None, **{**mapping_kw, "w_avg_beta": None},
                            name="mapping")(None, c)
    self.sow("intermediates", "epilogue_in", x)
    return DiscriminatorEpilogue(channels(4), cmap_dim, 4, self.img_channels, self.architecture,
                                 epilogue_kw["mbstd_group_size"], epilogue_kw["mbstd_num_channels"],
                                 epilogue_kw["activation"], self.conv_clamp, name="b4")(x, img, cmap)
