"""torchvision-compatible ResNet and ResNeXt classifiers (ResNet v1.5: the stride sits on the 3x3 conv).

The layer layout, initialisers and BatchNorm behaviour follow `torchvision.models.resnet`, and every submodule is
named after its PyTorch counterpart with `.` replaced by `_` (`layer1.0.downsample.1` -> `layer1_0/downsample_1`),
so a torchvision or PPA state dict converts mechanically (`jaxmia.convert.classifier_from_torch`).

Inputs are `[B, H, W, 3]` images in [-1, 1]; any spatial size that survives the five stride-2 stages works.
`dtype` is the compute dtype (e.g. `jnp.bfloat16`); parameters, BatchNorm statistics, the pooled features and the
classifier head stay float32.

Data parallelism: in train mode BatchNorm (`models.batch_norm`) normalises with the statistics of the global batch
under `jax.jit` with the batch sharded over the `('data',)` mesh, so no `axis_name` is needed.
"""
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmia.models.batch_norm import BatchNorm
from jaxmia.models.conv import conv_general_dilated
from jaxmia.models.materialize import materialize
from jaxmia.models.pooling import max_pool

# torchvision's initialisers: convs kaiming_normal_(mode="fan_out", nonlinearity="relu"); nn.Linear's default
# kaiming_uniform_(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)) for the weight and the bias.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear_bias_init(fan_in: int):
  """PyTorch nn.Linear's default bias initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def conv(features: int, kernel: int, *, stride: int = 1, groups: int = 1, dtype: Any, name: str,
         kernel_init=conv_kernel_init) -> nn.Conv:
  """A bias-free `kernel x kernel` conv with PyTorch's symmetric padding `kernel // 2`."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=kernel_init, conv_general_dilated=conv_general_dilated, name=name)


def max_pool_3x3_s2(x):
  """`nn.MaxPool2d(3, stride=2, padding=1)` on `[B, H, W, C]` (padding never wins the max)."""
  return max_pool(x, 3, 2, padding=1)


def _shortcut(x, out_channels: int, stride: int, train: bool, dtype):
  """Identity, or torchvision's `downsample` (1x1 strided conv + BN) when the shape changes."""
  if stride == 1 and x.shape[-1] == out_channels:
    return x
  x = conv(out_channels, 1, stride=stride, dtype=dtype, name="downsample_0")(x)
  return BatchNorm(dtype=dtype, name="downsample_1")(x, train)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34); output channels = `planes`."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(y, train))
    y = conv(self.planes, 3, dtype=self.dtype, name="conv2")(y)
    y = BatchNorm(dtype=self.dtype, name="bn2")(y, train)
    return materialize(nn.relu(y + _shortcut(x, self.planes, self.stride, train, self.dtype)))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, grouped) -> 1x1 block (ResNet-50+, ResNeXt); output channels = 4 * `planes`."""
  planes: int
  stride: int = 1
  groups: int = 1
  width_per_group: int = 64
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
    out_channels = self.planes * self.expansion
    y = conv(width, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(y, train))
    y = conv(width, 3, stride=self.stride, groups=self.groups, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(y, train))
    y = conv(out_channels, 1, dtype=self.dtype, name="conv3")(y)
    y = BatchNorm(dtype=self.dtype, name="bn3")(y, train)
    return materialize(nn.relu(y + _shortcut(x, out_channels, self.stride, train, self.dtype)))


class ResNet(nn.Module):
  """torchvision's ResNet / ResNeXt.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block_cls: `BasicBlock` or `Bottleneck`.
    num_classes: size of the `fc` head; None builds no head and the module returns the pooled features.
    base_channels: planes of the stem and the first stage (torchvision: 64); stage i has base * 2**i planes.
    groups, width_per_group: ResNeXt's cardinality and group width (Bottleneck only).
    dtype: compute dtype.
  """
  stage_sizes: Sequence[int]
  block_cls: Any
  num_classes: int | None
  base_channels: int = 64
  groups: int = 1
  width_per_group: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    """`x` `[B, H, W, 3]` in [-1, 1] -> logits `[B, num_classes]` (float32), or `(logits, features [B, D])`.

    Sows each stage's output `[B, h, w, c]` into `('intermediates', 'stage_outputs')` (layer1..layer4).
    """
    block = self.block_cls
    if block is Bottleneck:
      block = functools.partial(block, groups=self.groups, width_per_group=self.width_per_group)
    x = jnp.asarray(x, self.dtype)
    x = conv(self.base_channels, 7, stride=2, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
    x = max_pool_3x3_s2(x)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        x = block(self.base_channels * 2 ** stage, stride=stride, dtype=self.dtype,
                  name=f"layer{stage + 1}_{index}")(x, train)
      self.sow("intermediates", "stage_outputs", x)
    features = x.astype(jnp.float32).mean(axis=(1, 2))
    if self.num_classes is None:
      return features
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=linear_kernel_init, bias_init=linear_bias_init(features.shape[-1]),
                      name="fc")(features)
    return (logits, features) if return_features else logits


def resnet18(num_classes: int | None, dtype=jnp.float32, **kwargs) -> ResNet:
  return ResNet((2, 2, 2, 2), BasicBlock, num_classes, dtype=dtype, **kwargs)


def resnet34(num_classes: int | None, dtype=jnp.float32, **kwargs) -> ResNet:
  return ResNet((3, 4, 6, 3), BasicBlock, num_classes, dtype=dtype, **kwargs)


def resnet50(num_classes: int | None, dtype=jnp.float32, **kwargs) -> ResNet:
  return ResNet((3, 4, 6, 3), Bottleneck, num_classes, dtype=dtype, **kwargs)


def resnet101(num_classes: int | None, dtype=jnp.float32, **kwargs) -> ResNet:
  return ResNet((3, 4, 23, 3), Bottleneck, num_classes, dtype=dtype, **kwargs)


def resnet152(num_classes: int | None, dtype=jnp.float32, **kwargs) -> ResNet:
  return ResNet((3, 8, 36, 3), Bottleneck, num_classes, dtype=dtype, **kwargs)


def resnext50_32x4d(num_classes: int | None, dtype=jnp.float32, **kwargs) -> ResNet:
  return ResNet((3, 4, 6, 3), Bottleneck, num_classes, groups=32, width_per_group=4, dtype=dtype, **kwargs)


def resnext101_32x8d(num_classes: int | None, dtype=jnp.float32, **kwargs) -> ResNet:
  return ResNet((3, 4, 23, 3), Bottleneck, num_classes, groups=32, width_per_group=8, dtype=dtype, **kwargs)
