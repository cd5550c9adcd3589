"""FaceNet: facenet-pytorch's InceptionResnetV1 in Flax (PPA's face-distance model and a target architecture).

Submodule names mirror facenet-pytorch (`conv2d_1a`, `repeat_1`, `mixed_6a`, `block8`, `last_linear`,
`last_bn`, `logits`); a child of an `nn.Sequential` is named `<parent>_<index>` (`repeat_1_0`, `branch1_0`).
Images `[B, H, W, 3]` (160x160 for the released weights), conv kernels HWIO. Parameters start from PyTorch's
default initialisers, as facenet-pytorch's do.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxmia.models.conv import conv_general_dilated
from jaxmia.models.materialize import materialize
from jaxmia.models.pooling import max_pool
from jaxmia.models.inception import BasicConv2d
from jaxmia.models.batch_norm import BatchNorm
from jaxmia.models.resnet import linear_bias_init, linear_kernel_init

EMBEDDING_DIM = 512


def _basic_conv(dtype):
  """BasicConv2d factory with facenet-pytorch's (PyTorch default) initialisation."""
  return functools.partial(BasicConv2d, kernel_init=linear_kernel_init, dtype=dtype)


def _residual_merge(x, branches, scale: float, activate: bool, dtype):
  """Concatenates the branches, projects them back to x's width with a biased 1x1 `conv2d`, adds
  `scale` times that to x and (optionally) applies ReLU. The result is materialised: the blocks form a residual
  chain (`jaxmia.models.materialize`)."""
  h = jnp.concatenate(branches, axis=-1)
  up = nn.Conv(x.shape[-1], (1, 1), kernel_init=linear_kernel_init,
               bias_init=linear_bias_init(h.shape[-1]), dtype=dtype, conv_general_dilated=conv_general_dilated,
               name="conv2d")(h)
  out = up * scale + x
  return materialize(nn.relu(out) if activate else out)


class Block35(nn.Module):
  """Inception-ResNet-A on the 35x35x256 grid (in `repeat_1`)."""
  scale: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = _basic_conv(self.dtype)
    b0 = conv(32, 1, name="branch0")(x, train)
    b1 = conv(32, 1, name="branch1_0")(x, train)
    b1 = conv(32, 3, padding=1, name="branch1_1")(b1, train)
    b2 = conv(32, 1, name="branch2_0")(x, train)
    b2 = conv(32, 3, padding=1, name="branch2_1")(b2, train)
    b2 = conv(32, 3, padding=1, name="branch2_2")(b2, train)
    return _residual_merge(x, [b0, b1, b2], self.scale, True, self.dtype)


class Block17(nn.Module):
  """Inception-ResNet-B on the 17x17x896 grid (in `repeat_2`)."""
  scale: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = _basic_conv(self.dtype)
    b0 = conv(128, 1, name="branch0")(x, train)
    b1 = conv(128, 1, name="branch1_0")(x, train)
    b1 = conv(128, (1, 7), padding=(0, 3), name="branch1_1")(b1, train)
    b1 = conv(128, (7, 1), padding=(3, 0), name="branch1_2")(b1, train)
    return _residual_merge(x, [b0, b1], self.scale, True, self.dtype)


class Block8(nn.Module):
  """Inception-ResNet-C on the 8x8x1792 grid (`repeat_3` and the final `block8`, which has no ReLU)."""
  scale: float
  activate: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = _basic_conv(self.dtype)
    b0 = conv(192, 1, name="branch0")(x, train)
    b1 = conv(192, 1, name="branch1_0")(x, train)
    b1 = conv(192, (1, 3), padding=(0, 1), name="branch1_1")(b1, train)
    b1 = conv(192, (3, 1), padding=(1, 0), name="branch1_2")(b1, train)
    return _residual_merge(x, [b0, b1], self.scale, self.activate, self.dtype)


class ReductionA(nn.Module):
  """`mixed_6a`: 35x35x256 -> 17x17x896."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = _basic_conv(self.dtype)
    b0 = conv(384, 3, strides=2, name="branch0")(x, train)
    b1 = conv(192, 1, name="branch1_0")(x, train)
    b1 = conv(192, 3, padding=1, name="branch1_1")(b1, train)
    b1 = conv(256, 3, strides=2, name="branch1_2")(b1, train)
    return jnp.concatenate([b0, b1, max_pool(x, 3, 2)], axis=-1)


class ReductionB(nn.Module):
  """`mixed_7a`: 17x17x896 -> 8x8x1792."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = _basic_conv(self.dtype)
    b0 = conv(256, 1, name="branch0_0")(x, train)
    b0 = conv(384, 3, strides=2, name="branch0_1")(b0, train)
    b1 = conv(256, 1, name="branch1_0")(x, train)
    b1 = conv(256, 3, strides=2, name="branch1_1")(b1, train)
    b2 = conv(256, 1, name="branch2_0")(x, train)
    b2 = conv(256, 3, padding=1, name="branch2_1")(b2, train)
    b2 = conv(256, 3, strides=2, name="branch2_2")(b2, train)
    return jnp.concatenate([b0, b1, b2, max_pool(x, 3, 2)], axis=-1)


class InceptionResnetV1(nn.Module):
  """facenet-pytorch `InceptionResnetV1`.

  Attributes:
    num_classes: size of the `logits` head, which reads the un-normalised `last_bn` output (facenet-pytorch
      `classify=True`). None: no head; the module returns the L2-normalised 512-d embedding.
    dropout_rate: dropout before `last_linear` in train mode (needs a `'dropout'` PRNG stream then).
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int | None = None
  dropout_rate: float = 0.6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    """`x` `[B, H, W, 3]` -> logits `[B, num_classes]`, or `(logits, embedding [B, 512])` with
    `return_features`; with `num_classes=None`, the embedding alone. Outputs are float32."""
    conv = _basic_conv(self.dtype)
    x = jnp.asarray(x, self.dtype)
    x = conv(32, 3, strides=2, name="conv2d_1a")(x, train)
    x = conv(32, 3, name="conv2d_2a")(x, train)
    x = conv(64, 3, padding=1, name="conv2d_2b")(x, train)
    x = max_pool(x, 3, 2)
    x = conv(80, 1, name="conv2d_3b")(x, train)
    x = conv(192, 3, name="conv2d_4a")(x, train)
    x = conv(256, 3, strides=2, name="conv2d_4b")(x, train)
    for i in range(5):
      x = Block35(0.17, dtype=self.dtype, name=f"repeat_1_{i}")(x, train)
    x = ReductionA(dtype=self.dtype, name="mixed_6a")(x, train)
    for i in range(10):
      x = Block17(0.10, dtype=self.dtype, name=f"repeat_2_{i}")(x, train)
    x = ReductionB(dtype=self.dtype, name="mixed_7a")(x, train)
    for i in range(5):
      x = Block8(0.20, dtype=self.dtype, name=f"repeat_3_{i}")(x, train)
    x = Block8(1.0, activate=False, dtype=self.dtype, name="block8")(x, train)
    # The head (pooling onwards) runs in float32 whatever the compute dtype.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(EMBEDDING_DIM, use_bias=False, kernel_init=linear_kernel_init, name="last_linear")(x)
    x = BatchNorm(epsilon=1e-3, name="last_bn")(x, train)
    # F.normalize: x / max(||x||, 1e-12).
    embedding = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    if self.num_classes is None:
      return embedding
    logits = nn.Dense(self.num_classes, kernel_init=linear_kernel_init,
                      bias_init=linear_bias_init(EMBEDDING_DIM), name="logits")(x)
    return (logits, embedding) if return_features else logits


def inception_resnet_v1(num_classes: int | None = None, dtype=jnp.float32) -> InceptionResnetV1:
  """facenet-pytorch InceptionResnetV1 (registry builder; see `InceptionResnetV1`)."""
  return InceptionResnetV1(num_classes=num_classes, dtype=dtype)
