"""torchvision-compatible VGG-16 and VGG-16-BN classifiers, with the low-resolution MIA protocol's head.

The convolutional stack is torchvision's `VGG.features` (3x3 convs with bias, BatchNorm after each conv in the
`_bn` variant, ReLU, 2x2 max pools), its submodules named after torchvision's indices with `.` replaced by `_`
(`features.24` -> `features_24`), so state dicts convert mechanically (`jaxmia.convert.classifier_from_torch`).

Two heads (`head=`), both in PyTorch's flattening order (NCHW, so converted head weights apply unchanged):

* `"lowres"` (the default): the head of the low-resolution MIA code (GMI, KED-MI and the attacks built on them,
  class `VGG16`): the flattened feature map (512 x 2 x 2 = 2048 values at 64x64 input) -> `bn`
  (BatchNorm1d) -> `fc_layer` (Linear to num_classes). Its features are the normalised 2048 values (what
  their `forward` returns as `feature`). Their "VGG16" is torchvision's `vgg16_bn().features`, i.e. jaxmia's
  `vgg16_bn`, and their state dicts name the stack `feature.N` (`jaxmia.convert` renames it).
* `"torchvision"`: torchvision's `avgpool` (adaptive average pool to 7x7) and `classifier` MLP (Linear 25088 ->
  4096, ReLU, Dropout, Linear 4096 -> 4096, ReLU, Dropout, Linear -> num_classes, submodules `classifier_0`,
  `classifier_3`, `classifier_6`); its features are the 4096 values entering `classifier_6`.

Why `"lowres"` is the default: the zoo's VGG targets are there for the paper's low-resolution experiments
(Appendix C.5: GMI / KED-MI against VGG-16 on 64x64 CelebA), which train and release their targets with that
head; at 64x64 torchvision's head only replicates each of the 2x2 feature positions into the 7x7 grid and adds
~120M parameters to the 15M of the stack. The low-resolution head's flattened size is 512 * (H/32) * (W/32),
so a `"lowres"` model is tied to the input size it was built for, as in PyTorch; the torchvision head takes any
input of at least 32x32.

Inputs are `[B, H, W, 3]` in [-1, 1]. The low-resolution code feeds its classifiers [0, 1] images
(`ToTensor()` without `Normalize`), so with that head the module maps its input with `(x + 1) / 2` first
(`zero_one_input`, default: True for `"lowres"`, False for `"torchvision"`): their checkpoints see the values
they were trained on, and a jaxmia-trained model exported with `classifier_to_torch` works in their code.
`dtype` is the compute dtype of the stack; parameters, BatchNorm statistics, features and the head stay
float32. BatchNorm in train mode uses the statistics of the whole (global) batch; see `jaxmia.models.resnet`.

Not reproduced: the low-resolution code freezes `bn.bias` at 0 during training (`requires_grad_(False)`); here
it is an ordinary parameter (0 at initialisation).
"""
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmia.models.conv import conv_general_dilated
from jaxmia.models.pooling import max_pool
from jaxmia.models.batch_norm import BatchNorm
from jaxmia.models.resnet import linear_bias_init, linear_kernel_init

# torchvision's configuration "D": output channels of each 3x3 conv, "M" for a 2x2 max pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
HEADS = ("lowres", "torchvision")

# torchvision's VGG initialisers: convs kaiming_normal_(mode="fan_out", nonlinearity="relu") with zero bias,
# linears N(0, 0.01) with zero bias. The low-resolution head's `fc_layer` keeps nn.Linear's default.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
classifier_kernel_init = nn.initializers.normal(0.01)


@functools.cache
def _adaptive_weights(size_in: int, size_out: int) -> np.ndarray:
  """`[size_out, size_in]` averaging matrix of `nn.AdaptiveAvgPool` along one axis: output i averages inputs
  floor(i * size_in / size_out) .. ceil((i + 1) * size_in / size_out) - 1."""
  weights = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x, size: int):
  """`nn.AdaptiveAvgPool2d((size, size))` on `[B, H, W, C]` -> `[B, size, size, C]` (any H, W)."""
  height, width = x.shape[1:3]
  if (height, width) == (size, size):
    return x
  return jnp.einsum("oh,bhwc,pw->bopc", _adaptive_weights(height, size), x, _adaptive_weights(width, size),
                    precision=jax.lax.Precision.HIGHEST)


def flatten_nchw(x):
  """`[B, H, W, C]` -> `[B, C * H * W]` in PyTorch's `x.view(B, -1)` order of an NCHW tensor."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class VGG(nn.Module):
  """torchvision's VGG stack with the low-resolution (`"lowres"`) or torchvision (`"torchvision"`) head.

  Attributes:
    num_classes: outputs of the last linear layer (`fc_layer` / `classifier_6`); None builds no last layer and
      the module returns the features.
    batch_norm: BatchNorm after every conv (`vgg16_bn`).
    head: `"lowres"` or `"torchvision"` (module docstring).
    zero_one_input: map `[-1, 1]` inputs to [0, 1] first (networks trained on `ToTensor()` images); None:
      only with the `"lowres"` head.
    layers: torchvision's layer configuration (channels, or "M" for a max pool).
    dropout_rate: dropout of the torchvision head in train mode (needs a `'dropout'` PRNG stream then).
    dtype: compute dtype of the convolutional stack.
  """
  num_classes: int | None
  batch_norm: bool = False
  head: str = "lowres"
  zero_one_input: bool | None = None
  layers: Sequence[Any] = VGG16_LAYERS
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    """`x` `[B, H, W, 3]` in [-1, 1] -> logits `[B, num_classes]` (float32), or `(logits, features [B, D])`."""
    if self.head not in HEADS:
      raise ValueError(f"head={self.head!r}; choose one of {HEADS}.")
    x = jnp.asarray(x, self.dtype)
    if self.head == "lowres" if self.zero_one_input is None else self.zero_one_input:
      x = (x + 1) / 2
    index = 0
    for layer in self.layers:
      if layer == "M":
        x = max_pool(x, 2, 2)
        index += 1
        continue
      x = nn.Conv(int(layer), (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=conv_kernel_init, bias_init=nn.initializers.zeros,
                  conv_general_dilated=conv_general_dilated, name=f"features_{index}")(x)
      index += 1
      if self.batch_norm:
        x = BatchNorm(dtype=self.dtype, name=f"features_{index}")(x, train)
        index += 1
      x = nn.relu(x)
      index += 1
    x = x.astype(jnp.float32)
    if self.head == "lowres":
      features = BatchNorm(name="bn")(flatten_nchw(x), train)
      last_name, kernel_init, bias_init = "fc_layer", linear_kernel_init, linear_bias_init(features.shape[-1])
    else:
      x = flatten_nchw(adaptive_avg_pool(x, 7))
      for name in ("classifier_0", "classifier_3"):
        x = nn.Dense(4096, kernel_init=classifier_kernel_init, bias_init=nn.initializers.zeros, name=name)(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
      features = x
      last_name, kernel_init, bias_init = "classifier_6", classifier_kernel_init, nn.initializers.zeros
    if self.num_classes is None:
      return features
    logits = nn.Dense(self.num_classes, kernel_init=kernel_init, bias_init=bias_init, name=last_name)(features)
    return (logits, features) if return_features else logits


def _hashable(kwargs: dict) -> dict:
  """`layers` as a tuple: a saved model's JSON `module_kwargs` give a list, and a module must hash (jit caches)."""
  return {**kwargs, "layers": tuple(kwargs["layers"])} if "layers" in kwargs else kwargs


def vgg16(num_classes: int | None, dtype=jnp.float32, **kwargs) -> VGG:
  return VGG(num_classes, dtype=dtype, **_hashable(kwargs))


def vgg16_bn(num_classes: int | None, dtype=jnp.float32, **kwargs) -> VGG:
  return VGG(num_classes, batch_norm=True, dtype=dtype, **_hashable(kwargs))
