"""MID (Wang et al., AAAI 2021): a variational information bottleneck between the features and the classifier.

The pooled backbone features `f [B, D]` are encoded into a diagonal Gaussian `N(mu, std^2)` of size
`bottleneck_dim` (`std = softplus(s - 5)`, which starts the bottleneck almost deterministic). Training uses
one reparameterised sample `z = mu + std * eps`; evaluation uses `z = mu`. The head `fc` maps `z` to logits.
The training loss is `CE + beta * KL(N(mu, std^2) || N(0, I))`; the per-example KL is sown as
`('intermediates', 'bottleneck_kl')` in training mode.

`create_mid_classifier(arch, num_classes, bottleneck_dim, dtype)` is what `model_store.load_model` calls for
the `mid_classifier` kind, so a trained MID target loads like any classifier.
"""
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia import models

# Name of the PRNG stream that draws the bottleneck noise in training mode.
RNG_STREAM = "bottleneck"


def gaussian_kl(mu: jax.Array, std: jax.Array) -> jax.Array:
  """`KL(N(mu, diag(std^2)) || N(0, I))` per example: `mu, std [B, K]` -> `[B]`."""
  var = jnp.square(std)
  return 0.5 * jnp.sum(jnp.square(mu) + var - jnp.log(var) - 1.0, axis=-1)


class MIDClassifier(nn.Module):
  """A classifier backbone (no head) followed by a variational bottleneck and a linear head `fc`.

  Same calling convention as `models.create_classifier` modules: `x [B, H, W, 3]` in [-1, 1] ->
  logits `[B, num_classes]`, or `(logits, z [B, bottleneck_dim])` with `return_features=True`.
  Training mode needs a `'bottleneck'` PRNG stream. `backbone_kwargs` go to the architecture's builder.
  """
  arch: str
  num_classes: int
  bottleneck_dim: int = 1024
  dtype: Any = jnp.float32
  backbone_kwargs: Mapping[str, Any] = flax.core.FrozenDict()

  def setup(self):
    self.backbone = models.create_classifier(self.arch, None, dtype=self.dtype, **self.backbone_kwargs)
    self.encoder = nn.Dense(2 * self.bottleneck_dim, dtype=self.dtype)
    self.fc = nn.Dense(self.num_classes, dtype=self.dtype)

  def __call__(self, x, train: bool = False, return_features: bool = False):
    features = self.backbone(x, train=train)
    stats = self.encoder(features).astype(jnp.float32)
    mu, std = stats[:, :self.bottleneck_dim], jax.nn.softplus(stats[:, self.bottleneck_dim:] - 5.0)
    if train:
      z = mu + std * jax.random.normal(self.make_rng(RNG_STREAM), mu.shape, mu.dtype)
      self.sow("intermediates", "bottleneck_kl", gaussian_kl(mu, std))
    else:
      z = mu
    logits = self.fc(z)
    return (logits, z) if return_features else logits


def create_mid_classifier(arch: str, num_classes: int, bottleneck_dim: int = 1024, dtype=jnp.float32,
                          **backbone_kwargs) -> MIDClassifier:
  """A `MIDClassifier` on the `arch` backbone (any `models.ARCHITECTURES` entry; `backbone_kwargs`, e.g.
  `base_channels=8` for a slim ResNet, go to its builder)."""
  if arch not in models.ARCHITECTURES:
    raise ValueError(f"Unknown architecture {arch!r}; choose one of: {', '.join(models.ARCHITECTURES)}.")
  return MIDClassifier(arch=arch, num_classes=num_classes, bottleneck_dim=bottleneck_dim, dtype=dtype,
                       backbone_kwargs=flax.core.FrozenDict(backbone_kwargs))
