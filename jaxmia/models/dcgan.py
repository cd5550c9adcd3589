"""GMI's 64x64 DCGAN-style generator and its WGAN-GP critic (`DGWGAN`), the image prior of GMI and KED-MI.

The architecture of "The Secret Revealer" (Zhang et al., CVPR 2020; `Celeba/generator.py` and `discri.py` of
the official code, reused by KED-MI and the MIA toolboxes):

* `Generator`: z `[B, 100]` -> Linear (no bias) -> BatchNorm1d -> ReLU -> NCHW view `[B, 8 dim, 4, 4]` -> three
  (ConvTranspose 5x5 stride 2, no bias -> BatchNorm2d -> ReLU) halving the channels -> ConvTranspose 5x5 stride 2
  to 3 channels -> sigmoid. Every transposed conv has PyTorch's padding 2 and output_padding 1, so it doubles
  the side exactly: 4 -> 8 -> 16 -> 32 -> 64.
* `Discriminator` (their `DGWGAN`): Conv 5x5 stride 2 padding 2 -> LeakyReLU(0.2), then three (Conv 5x5 stride
  2 -> InstanceNorm (affine; their stand-in for LayerNorm, which WGAN-GP asks of a critic because BatchNorm
  couples the samples of a batch) -> LeakyReLU(0.2)), then a valid conv to one channel: one score per image.

Image size: the official networks are 64x64 only. Here `image_size` may be any multiple of 16: the generator
starts from an `image_size / 16` square (4 at 64) and the critic's last conv has an `image_size / 16` kernel (4
at 64), so both are the official networks at 64 and keep their shape (four doublings / halvings, one score
per image) at other sizes (32 for the embedded data sets, 128). The critic needs at least 32: at 16 its last
InstanceNorm would see a 1x1 map and output a constant. `Generator(start_size=4)` instead doubles from 4x4 up to
the image side: at 32 the official code's own 32x32 layout (KED-MI's `GeneratorMNIST`, three doublings).

Pixel range: the official networks work in [0, 1] (the generator ends in a sigmoid, the critic is trained on
`ToTensor()` images). jaxmia's images are `[B, H, W, C]` in [-1, 1], so the generator returns
`2 * sigmoid(x) - 1` and the critic maps its input with `(x + 1) / 2` first: both networks compute exactly the
official functions in the official pixel space, so the same weights behave as in PyTorch, and a low-resolution
VGG target (which maps [-1, 1] to [0, 1] itself) sees what the official attack feeds it. Gradient penalties on
the critic are taken in that [0, 1] space (`jaxmia.gan_gmi.gradient_penalty`).

Submodules are named after the PyTorch module paths (`l2_5.0.0` -> `l2_5_0_0`) and transposed-conv kernels are
PyTorch's `[in, out, kh, kw]` weights transposed to `[kh, kw, in, out]`, so state dicts convert mechanically.
Initialisers are PyTorch's defaults (the official code sets none).
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
import numpy as np

from jaxmia.models import conv as conv_ops
from jaxmia.models.batch_norm import BatchNorm

LATENT_DIM = 100
# jaxmia's convolution as patches times a matrix (`models.conv`: XLA:CPU is slow on these networks' small maps).
conv_general_dilated = functools.partial(conv_ops.conv_general_dilated, as_patches=True)


def torch_uniform_init(fan_in: int):
  """PyTorch's default weight and bias initialiser for Linear / Conv: U(+-1 / sqrt(fan_in))."""
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def check_image_size(image_size: int) -> int:
  if image_size < 16 or image_size % 16:
    raise ValueError(f"image_size={image_size}: the GMI generator and critic need a multiple of 16 "
                     "(four stride-2 layers; the official networks are 64x64).")
  return image_size // 16


class ConvTranspose(nn.Module):
  """PyTorch's `ConvTranspose2d(in, features, kernel, stride, padding, output_padding)` on `[B, H, W, C]`.

  Output side `(H - 1) * stride - 2 * padding + kernel + output_padding`. Stride 2 (GMI's) is the polyphase
  `conv_transpose2x` cropped as PyTorch crops; other strides the equivalent convolution of the stride-dilated
  input with the spatially flipped kernel. The kernel is stored `[kh, kw, in, out]` (PyTorch's weight,
  transposed).
  """
  features: int
  kernel_size: int = 5
  stride: int = 2
  padding: int = 2
  output_padding: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, in_features = self.kernel_size, x.shape[-1]
    # PyTorch computes the default bound from weight.size(1) * k * k, i.e. the *output* channels here.
    init = torch_uniform_init(self.features * k * k)
    kernel = self.param("kernel", init, (k, k, in_features, self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.stride == 2:
      height, width = ((n - 1) * 2 - 2 * self.padding + k + self.output_padding for n in x.shape[1:3])
      extra = max(0, self.output_padding - self.padding)  # output_padding beyond the full result: zeros
      full = conv_ops.conv_transpose2x(x, kernel, as_patches=True)
      full = jnp.pad(full, ((0, 0), (0, extra), (0, extra), (0, 0)))
      y = full[:, self.padding:self.padding + height, self.padding:self.padding + width]
    else:
      low = k - 1 - self.padding
      y = conv_general_dilated(x, jnp.flip(kernel, (0, 1)), (1, 1), ((low, low + self.output_padding),) * 2,
                               lhs_dilation=(self.stride,) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", init, (self.features,), jnp.float32).astype(self.dtype)
    return y


class InstanceNorm(nn.Module):
  """`nn.InstanceNorm2d(C, affine=True)`: each image's channels normalised over H, W (biased var, eps 1e-5)."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = x32.mean((1, 2), keepdims=True)
    var = jnp.square(x32 - mean).mean((1, 2), keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(x.dtype)


def doublings(image_size: int, start_size: int) -> int:
  """Stride-2 layers between a `start_size` square and `image_size` (0: image_size / 16, i.e. four)."""
  if not start_size:
    check_image_size(image_size)
    return 4
  count = int(round(np.log2(image_size / start_size)))
  if count < 2 or start_size << count != image_size:
    raise ValueError(f"image_size={image_size} is not start_size={start_size} doubled two or more times.")
  return count


class Generator(nn.Module):
  """GMI's generator: z `[B, latent_dim]` -> images `[B, image_size, image_size, channels]` in [-1, 1].

  Attributes:
    latent_dim: size of z (official: 100).
    dim: channels of the last hidden layer; the first has `dim * 2^(n - 1)` for n doublings (official: 64, 8 * 64).
    image_size: output side (official: 64).
    channels: image channels (3).
    start_size: side of the first map. 0 (default): `image_size / 16`, four doublings at every size (the official
      64x64 network at 64). 4: doublings from 4x4 up to `image_size`, the official code's own 32x32 pattern
      (KED-MI's `GeneratorMNIST`: `4 * dim` channels at 4x4, three doublings) at 32.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
  """
  latent_dim: int = LATENT_DIM
  dim: int = 64
  image_size: int = 64
  channels: int = 3
  start_size: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = False):
    """`train=True` normalises with batch statistics and updates `batch_stats` (pass `mutable=['batch_stats']`)."""
    n = doublings(self.image_size, self.start_size)
    start = self.image_size >> n
    channels = self.dim << (n - 1)
    x = nn.Dense(channels * start * start, use_bias=False, dtype=self.dtype,
                 kernel_init=torch_uniform_init(self.latent_dim), name="l1_0")(jnp.asarray(z, jnp.float32))
    x = nn.relu(BatchNorm(dtype=self.dtype, name="l1_1")(x, train))
    # PyTorch's y.view(B, -1, s, s) of the NCHW tensor, then NHWC.
    x = jnp.transpose(x.reshape(x.shape[0], channels, start, start), (0, 2, 3, 1))
    for i in range(n - 1):
      x = ConvTranspose(channels >> (i + 1), use_bias=False, dtype=self.dtype, name=f"l2_5_{i}_0")(x)
      x = nn.relu(BatchNorm(dtype=self.dtype, name=f"l2_5_{i}_1")(x, train))
    x = ConvTranspose(self.channels, dtype=self.dtype, name=f"l2_5_{n - 1}")(x)
    return 2.0 * jax.nn.sigmoid(x.astype(jnp.float32)) - 1.0

  # The rendering interface of jaxmia's StyleGAN2 generator (`jaxmia.attack.render.synthesize`, the attack
  # grids and `jaxmia.evaluate`): an attack's latents are stored as `[N, 1, latent_dim]` "single w" rows, so
  # runs of GMI-style attacks are evaluated, reported and drawn like any other run.
  @property
  def img_resolution(self) -> int:
    return self.image_size

  @property
  def img_channels(self) -> int:
    return self.channels

  @property
  def z_dim(self) -> int:
    return self.latent_dim

  @property
  def num_ws(self) -> int:
    return 1

  c_dim = 0

  def synthesis(self, ws, noise_mode: str = "const"):
    """Images `[B, R, R, C]` in [-1, 1] from latents `ws` `[B, k, latent_dim]` (the first row of each; k = 1 in
    attack runs), BatchNorm with its running statistics. `noise_mode` is accepted for the StyleGAN2 interface
    (this generator has no noise inputs)."""
    del noise_mode
    return self(ws[:, 0])


class Discriminator(nn.Module):
  """GMI's WGAN-GP critic `DGWGAN`: images `[B, H, W, C]` in [-1, 1] -> scores `[B]` (float32).

  Per-image (no batch statistics), so scores and input gradients of one image never depend on the batch.

  Attributes:
    dim: channels of the first conv; doubled at each of the next three (official: 64).
    image_size: input side, a multiple of 16 (official: 64); sets the last conv's kernel.
    dtype: compute dtype; parameters stay float32.
  """
  dim: int = 64
  image_size: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    last_kernel = check_image_size(self.image_size)
    if self.image_size < 32:
      raise ValueError(f"Discriminator(image_size={self.image_size}): at least 32, so that the last InstanceNorm "
                       "normalises a 2x2 map or larger (on 1x1 it outputs its bias whatever the image).")
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"Discriminator(image_size={self.image_size}) got images of shape {x.shape}.")
    x = (jnp.asarray(x, self.dtype) + 1) / 2

    def conv(features, kernel, stride, padding, name):
      fan_in = x.shape[-1] * kernel * kernel
      return nn.Conv(features, (kernel, kernel), strides=stride, padding=((padding, padding),) * 2,
                     dtype=self.dtype, param_dtype=jnp.float32, kernel_init=torch_uniform_init(fan_in),
                     bias_init=torch_uniform_init(fan_in), conv_general_dilated=conv_general_dilated, name=name)

    x = nn.leaky_relu(conv(self.dim, 5, 2, 2, "ls_0")(x), 0.2)
    for i, features in enumerate((self.dim * 2, self.dim * 4, self.dim * 8)):
      x = conv(features, 5, 2, 2, f"ls_{i + 2}_0")(x)
      x = nn.leaky_relu(InstanceNorm(name=f"ls_{i + 2}_1")(x), 0.2)
    x = conv(1, last_kernel, 1, 0, "ls_5")(x)
    return x.astype(jnp.float32).reshape(x.shape[0])
