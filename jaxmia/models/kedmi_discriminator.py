"""KED-MI's inversion-specific discriminator (Chen et al., ICCV 2021): `MinibatchDiscriminator`.

The discriminator of the "improved" (K+1)-class GAN of KED-MI's official code (`discri.MinibatchDiscriminator`
of SCccc21/Knowledge-Enriched-DMI). Architecture at 64x64 with `dim=64`:

    x [B, 64, 64, 3] -> 5x5/2 conv 64  -> InstanceNorm (affine) -> LeakyReLU(0.2)    32x32
                     -> 5x5/2 conv 128 -> InstanceNorm -> LeakyReLU                 16x16
                     -> 5x5/2 conv 256 -> InstanceNorm -> LeakyReLU                  8x8
                     -> 3x3/2 conv 256 -> InstanceNorm -> LeakyReLU                  4x4
                     -> flatten (NCHW order, 4096 values)                       = features
                     -> minibatch discrimination (64 kernels of dimension 50)   -> [B, 4096 + 64]
                     -> Linear -> logits [B, num_classes]

The K+1 classes: the logits are over the target's K classes only; the extra "fake" class has its logit fixed
at 0 (Salimans et al.'s parametrisation of the semi-supervised GAN, which the official losses use), so
`D(x) = lse / (lse + 1)` with `lse = sum_k exp(logit_k)` is the probability that `x` is real and
`log_sum_exp(logits)` its logit. The features (before minibatch discrimination) are what the generator's
feature-matching loss compares.

Minibatch discrimination (Salimans et al., 2016): the features `f [B, A]` times a tensor `T [A, K * C]` give
`M [B, K, C]`; kernel `k` of sample `i` is `sum_{j != i} exp(-|M_ik - M_jk|_1)`, its similarity to the other
samples of the batch, appended to the features. A sample's output therefore depends on the batch it is
scored with: training scores the whole global batch together (sharded over devices, the reduction is over
all of it), and the KED-MI attack scores each class's samples as their own batch (`jaxmia.attack.kedmi`).

Conventions: images `[B, H, W, 3]` in [-1, 1], mapped to the official [0, 1] inside (`(x + 1) / 2`, as the
low-resolution VGG head does), so converted official weights see the values they were trained on. H and W
must be multiples of 16 (four stride-2 layers); the flattened size follows them. `end_size=4` stops the
halving at a 4x4 map instead (at 32x32: two 5x5 layers and the 3x3, the official code's 32x32 pattern, where
the four layers would end on 2x2 maps that InstanceNorm reduces to a few values). Initialisers are PyTorch's
defaults (conv and Linear U(+-1/sqrt(fan_in)), InstanceNorm scale 1 and bias 0, `T ~ N(0, 1)`), as the
official code leaves them. `dtype` is the compute dtype of the convolutions; parameters and the head are
float32.
"""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmia.models.dcgan import conv_general_dilated
from jaxmia.models.resnet import linear_bias_init, linear_kernel_init
from jaxmia.models.vgg import flatten_nchw

# (kernel, stride, padding, channel multiplier of `dim`) of the official four convolutions.
LAYERS = ((5, 2, 2, 1), (5, 2, 2, 2), (5, 2, 2, 4), (3, 2, 1, 4))


def layers(image_size: int, end_size: int = 0) -> tuple:
  """The convolutions from `image_size` down to an `end_size` square: the official four (end_size 0 or
  image_size / 16), or fewer 5x5 ones before the 3x3, whose `4 * dim` channels end every variant."""
  if not end_size:
    return LAYERS
  count = int(round(np.log2(image_size / end_size)))
  if count < 2 or count > len(LAYERS) or end_size << count != image_size:
    raise ValueError(f"MinibatchDiscriminator: image side {image_size} is not end_size={end_size} halved 2 to "
                     f"{len(LAYERS)} times.")
  return LAYERS[:count - 1] + LAYERS[-1:]


@jax.custom_vjp
def minibatch_similarity(projected):
  """Minibatch-discrimination outputs `[B, K]` of `projected` `[B, K, C]`: for each sample and kernel, the sum
  over the other samples of `exp(-L1 distance)` (the sample itself, at distance 0, contributes exp(0) = 1, which
  is subtracted).

  The gradient is written out (`_similarity_bwd`): autodiff of the broadcast differences reduces a `[B, B, K, C]`
  tensor over its leading axis, which XLA:CPU runs several times slower than the explicit contraction, and this
  layer's backward pass was the largest part of a KED-MI GAN step."""
  return _similarity_fwd(projected)[0]


def _similarity_fwd(projected):
  differences = projected[:, None] - projected[None, :]  # [B, B, K, C]
  kernel = jnp.exp(-jnp.sum(jnp.abs(differences), axis=-1))  # [B, B, K], symmetric in its two sample axes
  return jnp.sum(kernel, axis=0) - 1.0, (differences, kernel)


def _similarity_bwd(residuals, cotangent):
  """d/dp_ikc of `sum_jk g_jk o_jk` = `-sum_j (g_ik + g_jk) exp(-d_ijk) sign(p_ikc - p_jkc)`: sample i's
  projection enters the distances d_ij and d_ji (equal), so both outputs' cotangents weigh the pair."""
  differences, kernel = residuals
  weights = (cotangent[:, None, :] + cotangent[None, :, :]) * kernel  # [B, B, K]
  return (-jnp.einsum("ijk,ijkc->ikc", weights, jnp.sign(differences)),)


minibatch_similarity.defvjp(_similarity_fwd, _similarity_bwd)


class MinibatchDiscrimination(nn.Module):
  """Appends `num_kernels` minibatch-similarity values to features `[B, A]` -> `[B, A + num_kernels]`."""
  num_kernels: int = 64
  kernel_dim: int = 50
  mean: bool = False  # divide by B - 1 (the official layer's option, off in the KED-MI discriminator)

  @nn.compact
  def __call__(self, features):
    features = features.astype(jnp.float32)
    tensor = self.param("T", nn.initializers.normal(1.0), (features.shape[-1], self.num_kernels * self.kernel_dim))
    projected = (features @ tensor).reshape(features.shape[0], self.num_kernels, self.kernel_dim)
    similarity = minibatch_similarity(projected)
    if self.mean:
      similarity = similarity / max(features.shape[0] - 1, 1)
    return jnp.concatenate([features, similarity], axis=-1)


def _conv_bias_init(fan_in: int):
  return linear_bias_init(fan_in)


class MinibatchDiscriminator(nn.Module):
  """KED-MI's discriminator: `(features [B, 16 * dim * (H/16) * (W/16)], logits [B, num_classes])`."""
  num_classes: int = 1000        # the target's classes (the fake class's logit is the implicit 0)
  dim: int = 64                  # channels of the first convolution (official 64)
  minibatch_kernels: int = 64    # official 64
  minibatch_kernel_dim: int = 50  # official 50
  end_size: int = 0              # side of the last map: 0 = image side / 16 (official); 4 at 32: three layers
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    if images.shape[1] % 16 or images.shape[2] % 16:
      raise ValueError(f"MinibatchDiscriminator needs image sides divisible by 16, got {images.shape[1:3]}.")
    x = ((images.astype(jnp.float32) + 1.0) / 2.0).astype(self.dtype)
    for index, (kernel, stride, padding, multiplier) in enumerate(layers(images.shape[1], self.end_size)):
      fan_in = x.shape[-1] * kernel * kernel
      x = nn.Conv(self.dim * multiplier, (kernel, kernel), strides=(stride, stride),
                  padding=((padding, padding), (padding, padding)), dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=linear_kernel_init, bias_init=_conv_bias_init(fan_in),
                  conv_general_dilated=conv_general_dilated, name=f"layer{index + 1}_conv")(x)
      x = nn.InstanceNorm(epsilon=1e-5, dtype=jnp.float32, name=f"layer{index + 1}_norm")(x.astype(jnp.float32))
      x = nn.leaky_relu(x, 0.2).astype(self.dtype)
    features = flatten_nchw(x.astype(jnp.float32))
    expanded = MinibatchDiscrimination(self.minibatch_kernels, self.minibatch_kernel_dim, name="mbd1")(features)
    logits = nn.Dense(self.num_classes, kernel_init=linear_kernel_init,
                      bias_init=linear_bias_init(expanded.shape[-1]), name="fc_layer")(expanded)
    return features, logits


def realness_logit(logits):
  """`log sum_k exp(logit_k)` `[B]`: the logit of "real" against the implicit fake class (logit 0)."""
  return jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)


def variables_from_torch(state_dict) -> dict:
  """Flax variables of a `MinibatchDiscriminator` from the official PyTorch state dict (numpy arrays by PyTorch
  names, e.g. `jaxmia.convert.torch_reader.load_torch_file` of `improved_celeba_D.tar`; a `{'state_dict': ...}`
  container and DataParallel's `module.` prefix are unwrapped): conv weights OIHW -> HWIO, InstanceNorm
  weight/bias -> scale/bias, `T [A, K, C]` -> `[A, K * C]`, the Linear's weight transposed. Build the module with
  `num_classes`, `dim`, `minibatch_kernels` and `minibatch_kernel_dim` read off the shapes (`fc_layer.weight`
  rows, `layer1.0.weight` rows, `mbd1.T`'s last two axes)."""
  if "state_dict" in state_dict and not hasattr(state_dict["state_dict"], "shape"):
    state_dict = state_dict["state_dict"]
  state = {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in state_dict.items()}
  params = {}
  for index in range(1, len(LAYERS) + 1):
    params[f"layer{index}_conv"] = {"kernel": np.transpose(state[f"layer{index}.0.weight"], (2, 3, 1, 0)),
                                    "bias": state[f"layer{index}.0.bias"]}
    params[f"layer{index}_norm"] = {"scale": state[f"layer{index}.1.weight"], "bias": state[f"layer{index}.1.bias"]}
  tensor = state["mbd1.T"]
  params["mbd1"] = {"T": tensor.reshape(tensor.shape[0], -1)}
  params["fc_layer"] = {"kernel": state["fc_layer.weight"].T, "bias": state["fc_layer.bias"]}
  return {"params": params}
