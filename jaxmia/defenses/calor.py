"""CALoR (Yu et al., 2024, "CALoR: Towards Comprehensive Model Inversion Defense"): confidence adaptation plus
low-rank compression of the classification head.

**Confidence adaptation.** The training loss of the true-class probability `p = softmax(logits)_y` is

    L_CA(p) = scale * p**gamma * log(p)          (<= 0; a "reversed" focal weighting of the log-likelihood)

It decreases in `p` only up to `p* = exp(-1/gamma)` and rises again after it, so training pulls the true class
towards the moderate confidence `p*` (0.78 for gamma = 4) instead of a one-hot output: a model inversion attack
that maximises the target confidence (cross-entropy, Poincaré or max-margin identity losses) optimises towards
outputs the model never produced for its training data. `scale` only rescales the gradient. With a
label-smoothing factor `alpha` (jaxmia's `label_smoothing`) the loss is `(1 - alpha) * L_CA + alpha * mean_c
(-log p_c)`, the same mixture as label-smoothed cross-entropy (`losses.label_smoothing_cross_entropy`), so
`alpha = 0` is the pure CALoR loss.

**Low-rank compression.** The linear head `fc: R^D -> R^C` is replaced by

    features -> BatchNorm -> Dense(rank) -> tanh -> Dense(num_classes)  (`norm`, `compress`, `fc`)

so the logits (less the bias of `fc`) always lie in a `rank`-dimensional subspace, and the gradient an attack
receives through the head is squeezed through `rank` saturating units.

**Training schedule.** The CA loss cannot train a randomly initialised many-class model: at the start
`p_y ~ 1/C`, where its gradient `scale * p^gamma * (gamma log p + 1)` (w.r.t. `log p`) is below 1e-7 for C = 100,
against 1 for cross-entropy, so the weights hardly move (under Adam, below its `eps`). The authors never ask it
to: in their experiment scripts around the MIBench toolbox (a FaceScrub ResNet-152 script that wraps an already
cross-entropy-trained classifier in the low-rank neck and trains it with plain cross-entropy for 100 epochs, and
a fine-tuning script that loads that model and trains it with `InverseFocalLoss` for 5 epochs at a small SGD
learning rate) confidence adaptation is a short fine-tuning phase after cross-entropy training, when `p_y` is
already near 1 and the loss pulls it back to `p*`. Here the same run does both: `jaxmia.train` uses
label-smoothed cross-entropy until the last `defense.calor.finetune_epochs` (5) epochs and the CA loss in them
(`classifier.make_train_step(calor_start_step=...)`), with the run's own optimiser at its decayed learning rate
rather than a second SGD optimiser.

Defaults (`configs/faces.py: defense.calor`): gamma = 4, scale = 0.25 and a tanh bottleneck, as in the
toolbox's `InverseFocalLoss` and `NeckWrapper` (the fine-tuning scripts also tried gamma = 8); rank 50 as
their low-rank-compression experiments on FaceScrub (530 classes). Neither the paper's text nor its code is
copied here; the formulas above are what both compute.

`create_calor_classifier(arch, num_classes, rank, activation, dtype)` is what `model_store.load_model` calls for
the `calor_classifier` kind, so a trained CALoR target loads like any classifier.
"""
import math
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia import models
from jaxmia.models.batch_norm import BatchNorm

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "none": lambda x: x}


def confidence_adaptation_loss(logits: jax.Array, labels: jax.Array, *, gamma: float = 4.0, scale: float = 0.25,
                               label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  """Per-example CALoR loss `[B]`: `(1 - alpha) * scale * p_y**gamma * log p_y + alpha * mean_c(-log p_c)`.

  `logits [B, C]` (computed in float32), `labels [B]` int, `gamma > 0`, `scale > 0`; `label_smoothing` (alpha)
  may be a traced scalar. Minimised (for alpha = 0) at `p_y = optimal_confidence(gamma) = exp(-1/gamma)`.
  """
  log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  log_p = jnp.take_along_axis(log_probs, jnp.asarray(labels, jnp.int32)[:, None], axis=-1)[:, 0]
  adaptation = scale * jnp.exp(gamma * log_p) * log_p
  uniform = -jnp.mean(log_probs, axis=-1)
  return (1.0 - label_smoothing) * adaptation + label_smoothing * uniform


def optimal_confidence(gamma: float) -> float:
  """The true-class probability that minimises the confidence adaptation loss: `exp(-1 / gamma)`."""
  return math.exp(-1.0 / gamma)


class CALoRClassifier(nn.Module):
  """A classifier backbone (no head) followed by CALoR's low-rank head.

  Same calling convention as `models.create_classifier` modules: `x [B, H, W, 3]` in [-1, 1] -> logits
  `[B, num_classes]`, or `(logits, z [B, rank])` with `return_features=True` (`z` the compressed code, so
  `logits = fc(z)`). `backbone_kwargs` go to the architecture's builder.
  """
  arch: str
  num_classes: int
  rank: int = 50
  activation: str = "tanh"
  dtype: Any = jnp.float32
  backbone_kwargs: Mapping[str, Any] = flax.core.FrozenDict()

  def setup(self):
    self.backbone = models.create_classifier(self.arch, None, dtype=self.dtype, **self.backbone_kwargs)
    self.norm = BatchNorm(dtype=jnp.float32)
    self.compress = nn.Dense(self.rank, dtype=jnp.float32)
    self.fc = nn.Dense(self.num_classes, dtype=jnp.float32)

  def __call__(self, x, train: bool = False, return_features: bool = False):
    features = self.backbone(x, train=train).astype(jnp.float32)
    z = ACTIVATIONS[self.activation](self.compress(self.norm(features, train=train)))
    logits = self.fc(z)
    return (logits, z) if return_features else logits


def create_calor_classifier(arch: str, num_classes: int, rank: int = 50, activation: str = "tanh",
                            dtype=jnp.float32, **backbone_kwargs) -> CALoRClassifier:
  """A `CALoRClassifier` on the `arch` backbone (any `models.ARCHITECTURES` entry; `backbone_kwargs`, e.g.
  `base_channels=8` for a slim ResNet, go to its builder) with a head of rank `rank`."""
  if arch not in models.ARCHITECTURES:
    raise ValueError(f"Unknown architecture {arch!r}; choose one of: {', '.join(models.ARCHITECTURES)}.")
  if activation not in ACTIVATIONS:
    raise ValueError(f"Unknown CALoR activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}.")
  if not isinstance(rank, int) or rank < 1:
    raise ValueError(f"The CALoR rank must be a positive integer, got {rank!r}.")
  return CALoRClassifier(arch=arch, num_classes=num_classes, rank=rank, activation=activation, dtype=dtype,
                         backbone_kwargs=flax.core.FrozenDict(backbone_kwargs))
