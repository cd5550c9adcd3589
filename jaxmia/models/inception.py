"""Inception-v3 as in torchvision (PPA's evaluation model) and the pytorch-fid FID Inception network.

Both networks share every block; they differ only in the pool branch of the Inception A/C/E blocks
(`fid_pooling`) and in their heads. Submodule names mirror torchvision's (`Conv2d_1a_3x3`, `Mixed_5b`,
`branch1x1`, `conv`/`bn`, `AuxLogits`, `fc`), so PyTorch keys map onto Flax paths one to one.

Layouts: images `[B, H, W, 3]` (at least 75x75; 299x299 when the auxiliary head runs), conv kernels HWIO.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia.models.conv import conv_general_dilated
from jaxmia.models.pooling import max_pool
from jaxmia.models.batch_norm import BatchNorm
from jaxmia.models.resnet import linear_bias_init, linear_kernel_init

# Spatial size the FID network sees after its resize step.
FID_RESOLUTION = 299

# torchvision's `transform_input`: ImageNet channel statistics.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# Initialisers of PPA's Inception-v3 (torchvision `init_weights=True`): convs N(0, 0.1^2), the aux head's conv1
# N(0, 0.01^2) and fc N(0, 0.001^2); torchvision truncates at +-2 absolute, 20 std away, so plainly normal.
inception_kernel_init = nn.initializers.normal(0.1)


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """Conv2d without bias -> BatchNorm (PyTorch semantics, eps 1e-3) -> ReLU; `[B, H, W, C]`."""
  features: int
  kernel_size: int | tuple[int, int]
  strides: int = 1
  padding: int | tuple[int, int] = 0
  kernel_init: Callable = inception_kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, kernel_init=self.kernel_init, dtype=self.dtype,
                conv_general_dilated=conv_general_dilated, name="conv")(x)
    return nn.relu(BatchNorm(epsilon=1e-3, dtype=self.dtype, name="bn")(x, train))


def _pool_branch_input(x, pool: str):
  """The 3x3, stride-1, pad-1 pooling in front of a block's `branch_pool` conv.

  `pool`: "avg" (torchvision; zero padding counts in the mean), "avg_exclude_pad" (FID network's average,
  which divides by the number of real pixels only) or "max" (FID network's last block).
  """
  pad = ((1, 1), (1, 1))
  if pool == "avg":
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=pad, count_include_pad=True)
  if pool == "avg_exclude_pad":
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=pad, count_include_pad=False)
  if pool == "max":
    return max_pool(x, 3, 1, padding=1)
  raise ValueError(f"Unknown pool branch {pool!r}; use 'avg', 'avg_exclude_pad' or 'max'.")


class InceptionA(nn.Module):
  """35x35 block: 1x1, 5x5, double 3x3 and pool branches; outputs 224 + pool_features channels."""
  pool_features: int
  pool: str = "avg"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(64, 1, name="branch1x1")(x, train)
    b5 = conv(48, 1, name="branch5x5_1")(x, train)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5, train)
    b3 = conv(64, 1, name="branch3x3dbl_1")(x, train)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3, train)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3, train)
    bp = conv(self.pool_features, 1, name="branch_pool")(_pool_branch_input(x, self.pool), train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35x35 -> 17x17 (`Mixed_6a`)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(384, 3, strides=2, name="branch3x3")(x, train)
    bd = conv(64, 1, name="branch3x3dbl_1")(x, train)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd, train)
    bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd, train)
    return jnp.concatenate([b3, bd, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions; outputs 768 channels."""
  channels_7x7: int
  pool: str = "avg"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    c7 = self.channels_7x7
    b1 = conv(192, 1, name="branch1x1")(x, train)
    b7 = conv(c7, 1, name="branch7x7_1")(x, train)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7, train)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7, train)
    bd = conv(c7, 1, name="branch7x7dbl_1")(x, train)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd, train)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd, train)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd, train)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd, train)
    bp = conv(192, 1, name="branch_pool")(_pool_branch_input(x, self.pool), train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17x17 -> 8x8 (`Mixed_7a`)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(192, 1, name="branch3x3_1")(x, train)
    b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3, train)
    b7 = conv(192, 1, name="branch7x7x3_1")(x, train)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7, train)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7, train)
    b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7, train)
    return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3 / 3x1 convolutions; outputs 2048 channels."""
  pool: str = "avg"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(320, 1, name="branch1x1")(x, train)
    b3 = conv(384, 1, name="branch3x3_1")(x, train)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3, train),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3, train)], axis=-1)
    bd = conv(448, 1, name="branch3x3dbl_1")(x, train)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd, train)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd, train),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd, train)], axis=-1)
    bp = conv(192, 1, name="branch_pool")(_pool_branch_input(x, self.pool), train)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
  """Auxiliary classifier on the 17x17x768 `Mixed_6e` output (needs 299x299 inputs): `[B, num_classes]` float32."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    x = nn.avg_pool(x, (5, 5), strides=(3, 3))
    x = conv(128, 1, name="conv0")(x, train)
    x = conv(768, 5, kernel_init=nn.initializers.normal(0.01), name="conv1")(x, train)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.normal(0.001),
                    bias_init=linear_bias_init(768), name="fc")(x)


class InceptionV3(nn.Module):
  """torchvision `Inception3`; with `fid_pooling=True` the pytorch-fid / TF FID variant of the same graph.

  Attributes:
    num_classes: size of the `fc` head; None drops it and the module returns the pooled 2048-d features.
    aux_logits: build the `AuxLogits` head. It runs only in train mode (and at init), where its output is
      sown as `('intermediates', 'aux_logits')`, `[B, aux classes]`.
    aux_num_classes: outputs of `AuxLogits.fc`; None means `num_classes`. PPA replaces only `fc`, so its
      checkpoints keep 1000 here. Without either count there is no aux head.
    transform_input: apply torchvision's `transform_input` re-normalisation (ImageNet mean/std -> [-1, 1])
      to the input, as torchvision does for its pretrained weights. PPA's evaluation model runs without it.
    fid_pooling: pool branches of the FID network: average pools ignore padding and `Mixed_7c` max-pools.
    dropout_rate: dropout before `fc` in train mode (needs a `'dropout'` PRNG stream then).
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int | None = 1000
  aux_logits: bool = True
  aux_num_classes: int | None = None
  transform_input: bool = False
  fid_pooling: bool = False
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    """`x` `[B, H, W, 3]` in [-1, 1] -> logits `[B, num_classes]`, or `(logits, features [B, 2048])`; float32.

    With `num_classes=None` the result is the features alone. Parameters are initialised as in PPA's
    construction (torchvision `init_weights=True`, then a fresh PyTorch `nn.Linear` as `fc`).
    """
    x = jnp.asarray(x, self.dtype)
    if self.transform_input:
      x = x * (jnp.array(_IMAGENET_STD) / 0.5) + (jnp.array(_IMAGENET_MEAN) - 0.5) / 0.5
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    pool = "avg_exclude_pad" if self.fid_pooling else "avg"
    x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x, train)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x, train)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x, train)
    x = max_pool(x, 3, 2)
    x = conv(80, 1, name="Conv2d_3b_1x1")(x, train)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x, train)
    x = max_pool(x, 3, 2)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, pool=pool, dtype=self.dtype, name=name)(x, train)
    x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x, train)
    for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(channels_7x7, pool=pool, dtype=self.dtype, name=name)(x, train)
    aux_classes = self.aux_num_classes or self.num_classes
    if self.aux_logits and aux_classes is not None and (train or self.is_initializing()):
      aux = InceptionAux(aux_classes, dtype=self.dtype, name="AuxLogits")(x, train)
      if train:
        self.sow("intermediates", "aux_logits", aux)
    x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x, train)
    x = InceptionE(pool=pool, dtype=self.dtype, name="Mixed_7b")(x, train)
    x = InceptionE(pool="max" if self.fid_pooling else "avg", dtype=self.dtype, name="Mixed_7c")(x, train)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.num_classes is None:
      return features
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    # PPA swaps in a fresh nn.Linear for `fc`, so it starts from PyTorch's default initialisation.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=linear_kernel_init,
                      bias_init=linear_bias_init(2048), name="fc")(h)
    return (logits, features) if return_features else logits


class FIDInceptionV3(InceptionV3):
  """The pytorch-fid network (`fid_inception_v3()`): 1008-way `fc`, no aux head, FID pool branches.

  Use `fid_features` for what FID / precision-recall metrics consume.
  """
  num_classes: int | None = 1008
  aux_logits: bool = False
  fid_pooling: bool = True

  def fid_features(self, images01):
    """pytorch-fid's `InceptionV3([3], resize_input=True, normalize_input=True)` forward.

    `images01` `[B, H, W, 3]` in **[0, 1]** (jaxmia images in [-1, 1] must be mapped with `(x + 1) / 2`
    first) -> pool3 features `[B, 2048]` float32.
    """
    _, features = self(fid_preprocess(images01), return_features=True)
    return features


def fid_preprocess(images01):
  """pytorch-fid's input step: `[B, H, W, 3]` in [0, 1] -> `[B, 299, 299, 3]` in [-1, 1].

  Bilinear resize with half-pixel centres (PyTorch `align_corners=False`) and WITHOUT antialiasing, as
  `F.interpolate` does (this differs from torchvision's `resize` when shrinking), then `2x - 1`.
  """
  b, _, _, c = images01.shape
  x = jax.image.resize(jnp.asarray(images01, jnp.float32), (b, FID_RESOLUTION, FID_RESOLUTION, c),
                       method="linear", antialias=False)
  return 2 * x - 1


def inception_v3(num_classes: int | None, dtype=jnp.float32, *, aux_logits: bool = True,
                 aux_num_classes: int | None = None, transform_input: bool = False) -> InceptionV3:
  """torchvision `inception_v3` with a `num_classes`-way `fc` (registry builder; see `InceptionV3`)."""
  return InceptionV3(num_classes=num_classes, aux_logits=aux_logits, aux_num_classes=aux_num_classes,
                     transform_input=transform_input, dtype=dtype)
