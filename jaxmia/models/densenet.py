"""torchvision-compatible DenseNet classifiers (DenseNet-121 and its relatives).

Submodules are named after torchvision's with `.` replaced by `_` (`features.denseblock1.denselayer1` ->
`features_denseblock1_denselayer1`, `features.transition1`, `features.norm5`, `classifier`), so torchvision and
PPA state dicts convert mechanically. Inputs are `[B, H, W, 3]` in [-1, 1]; `dtype` is the compute dtype, while
parameters, BatchNorm statistics, pooled features and the head stay float32. BatchNorm in train mode uses the
statistics of the whole (global, under `jax.jit` with a sharded batch) batch; see `jaxmia.models.resnet`.
"""
from typing import Any, Sequence

import jax.numpy as jnp
from flax import linen as nn

from jaxmia.models.batch_norm import BatchNorm
from jaxmia.models.resnet import conv, linear_kernel_init, max_pool_3x3_s2

# torchvision's DenseNet initialises convs with kaiming_normal_ (fan_in, ReLU gain) and the head bias with 0.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bn_size * growth_rate) -> BN-ReLU-3x3 conv (growth_rate); returns `[x, new]` concatenated."""
  growth_rate: int
  bn_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.relu(BatchNorm(dtype=self.dtype, name="norm1")(x, train))
    y = conv(self.bn_size * self.growth_rate, 1, dtype=self.dtype, kernel_init=conv_kernel_init, name="conv1")(y)
    y = nn.relu(BatchNorm(dtype=self.dtype, name="norm2")(y, train))
    y = conv(self.growth_rate, 3, dtype=self.dtype, kernel_init=conv_kernel_init, name="conv2")(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-1x1 conv to `features` channels, then 2x2 average pooling with stride 2 (odd sizes round down)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(BatchNorm(dtype=self.dtype, name="norm")(x, train))
    x = conv(self.features, 1, dtype=self.dtype, kernel_init=conv_kernel_init, name="conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """torchvision's DenseNet (no dropout, torchvision's default `drop_rate=0`).

  Attributes:
    num_classes: size of the `classifier` head; None builds no head and the module returns the pooled features.
    growth_rate, block_config, num_init_features, bn_size: as in torchvision (DenseNet-121: 32, (6, 12, 24, 16),
      64, 4).
    dtype: compute dtype.
  """
  num_classes: int | None
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    """`x` `[B, H, W, 3]` in [-1, 1] -> logits `[B, num_classes]` (float32), or `(logits, features [B, D])`."""
    x = jnp.asarray(x, self.dtype)
    x = conv(self.num_init_features, 7, stride=2, dtype=self.dtype, kernel_init=conv_kernel_init,
             name="features_conv0")(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="features_norm0")(x, train))
    x = max_pool_3x3_s2(x)
    for block, num_layers in enumerate(self.block_config, start=1):
      for layer in range(1, num_layers + 1):
        x = DenseLayer(self.growth_rate, self.bn_size, dtype=self.dtype,
                       name=f"features_denseblock{block}_denselayer{layer}")(x, train)
      if block < len(self.block_config):
        x = Transition(x.shape[-1] // 2, dtype=self.dtype, name=f"features_transition{block}")(x, train)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="features_norm5")(x, train))
    features = x.astype(jnp.float32).mean(axis=(1, 2))
    if self.num_classes is None:
      return features
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=linear_kernel_init, bias_init=nn.initializers.zeros,
                      name="classifier")(features)
    return (logits, features) if return_features else logits


def densenet121(num_classes: int | None, dtype=jnp.float32, **kwargs) -> DenseNet:
  return DenseNet(num_classes, dtype=dtype, **kwargs)


def densenet161(num_classes: int | None, dtype=jnp.float32, **kwargs) -> DenseNet:
  return DenseNet(num_classes, growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96, dtype=dtype,
                  **kwargs)


def densenet169(num_classes: int | None, dtype=jnp.float32, **kwargs) -> DenseNet:
  return DenseNet(num_classes, block_config=(6, 12, 32, 32), dtype=dtype, **kwargs)


def densenet201(num_classes: int | None, dtype=jnp.float32, **kwargs) -> DenseNet:
  return DenseNet(num_classes, block_config=(6, 12, 48, 32), dtype=dtype, **kwargs)
