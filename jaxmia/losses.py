"""Training and attack losses; every loss returns per-example values of shape `[B]`.

Take `.mean()` for the batch loss. Logits are `[B, C]` (any float dtype; computed in float32),
labels are integer class indices `[B]`.
"""
import numbers
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _log_probs(logits: Array) -> Array:
  return jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)


def _take_label(values: Array, labels: Array) -> Array:
  """`values[b, labels[b]]` for `values` `[B, C]`."""
  labels = jnp.asarray(labels, jnp.int32)
  return jnp.take_along_axis(values, labels[:, None], axis=-1)[:, 0]


def label_smoothing_cross_entropy(logits: Array, labels: Array, alpha: float | Array) -> Array:
  """Cross-entropy against the smoothed target `(1 - alpha) * onehot + alpha / C`, shape `[B]`.

  Any `alpha <= 1` is allowed. `alpha > 0` is ordinary label smoothing, `alpha = 0` plain cross-entropy,
  and `alpha < 0` (negative label smoothing) gives the other classes a negative target, which rewards
  confidence in the true class beyond what the one-hot target asks for. `alpha` may be a traced scalar
  (e.g. from `ls_schedule` inside a jitted train step); a Python number `alpha > 1` raises.
  The batch mean equals PPA's `CrossEntropyLoss(label_smoothing=alpha)` and, for `alpha >= 0`,
  `torch.nn.CrossEntropyLoss(label_smoothing=alpha)`.
  """
  if isinstance(alpha, numbers.Real) and alpha > 1.0:
    raise ValueError(f"label smoothing factor must be <= 1, got {float(alpha)}; the target "
                     "(1 - alpha) * onehot + alpha / C would give the true class a negative weight.")
  log_probs = _log_probs(logits)
  nll = -_take_label(log_probs, labels)
  uniform = -jnp.mean(log_probs, axis=-1)
  return (1.0 - alpha) * nll + alpha * uniform


def cross_entropy_identity_loss(logits: Array, labels: Array) -> Array:
  """Plain cross-entropy `-log softmax(logits)[label]`, shape `[B]` (an alternative attack identity loss)."""
  return -_take_label(_log_probs(logits), labels)


def logit_loss(logits: Array, labels: Array) -> Array:
  """Negative logit of the target class, shape `[B]` (an identity loss that ignores the other classes)."""
  return -_take_label(jnp.asarray(logits, jnp.float32), labels)


def poincare_loss(logits: Array, labels: Array, xi: float = 1e-4) -> Array:
  """Poincaré-ball distance between L1-normalised logits and a shrunk one-hot target, shape `[B]`.

  `u = logits / |logits|_1` lies in the unit ball; the target is `v = clip(onehot - xi, 0, 1)`, i.e. the
  one-hot vector pulled inside the ball by `xi` (0 <= xi < 1). The loss is the hyperbolic distance
  `arccosh(1 + 2 |u - v|^2 / ((1 - |u|^2)(1 - |v|^2)))`, the identity loss of Plug & Play Attacks.
  `1 - |v|^2` is evaluated as `xi (2 - xi)`, which avoids the float32 cancellation of `1 - 0.9999^2`.
  """
  if not 0.0 <= xi < 1.0:
    raise ValueError(f"poincare_loss needs 0 <= xi < 1 so that the target lies inside the unit ball, got {xi}.")
  logits = jnp.asarray(logits, jnp.float32)
  u = logits / jnp.sum(jnp.abs(logits), axis=-1, keepdims=True)
  v = (1.0 - xi) * jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  diff_sq = jnp.sum(jnp.square(u - v), axis=-1)
  u_gap = 1.0 - jnp.sum(jnp.square(u), axis=-1)
  v_gap = xi * (2.0 - xi)
  return jnp.arccosh(1.0 + 2.0 * diff_sq / (u_gap * v_gap))


ScheduleKind = Literal["ppa", "proportional", "smooth", "constant"]


def ls_schedule(alpha: float, num_epochs: int, kind: ScheduleKind = "ppa",
                warmup_epochs: int | None = None) -> Callable[[int | Array], Array]:
  """Label-smoothing factor per epoch: returns `alpha_at(epoch)` for an integer 0-based `epoch`.

  kinds:
    `ppa`: PPA's schedule, reproduced with its quirk: 0 for epochs < 50, then
      `alpha * (epoch + 1 - 50) / (num_epochs - 50)` for 50 <= epoch < 75, then `alpha`. With 100 epochs it
      ramps only to alpha / 2 at epoch 74 and jumps to alpha at epoch 75. The 50/75 epochs are fixed, as in
      PPA, whatever `num_epochs` is, so with fewer than 76 epochs it never reaches `alpha`: use it only for
      PPA's 100 epochs.
    `proportional`: PPA's shape at proportional epochs, for any length: 0 for the first half
      (`epoch < num_epochs // 2`), a linear ramp `alpha * (epoch + 1 - start) / (stop - start)` that reaches
      `alpha` at epoch `stop - 1` with `stop = num_epochs - num_epochs // 4`, then `alpha` for the last quarter.
    `smooth`: 0 for the first `warmup_epochs` (default `num_epochs // 2`), then a linear ramp
      `alpha * (epoch + 1 - warmup) / (num_epochs - warmup)` that reaches `alpha` exactly at the last epoch.
    `constant`: `alpha` for every epoch.
  PPA uses the schedule only for negative alpha and a constant factor otherwise; which one to use is the
  caller's choice (the training config). The values are tabulated in float64 (PPA's Python arithmetic) and
  returned as float32 jax scalars; `epoch` may be a traced integer, so `alpha_at` works inside jit.
  Epochs past the end keep the last value.
  """
  if num_epochs < 1:
    raise ValueError(f"num_epochs must be positive, got {num_epochs}.")
  epochs = np.arange(num_epochs, dtype=np.float64)
  if kind == "ppa":
    start, stop, span = 50, 75, max(num_epochs - 50, 1)
  elif kind == "proportional":
    start, stop = num_epochs // 2, num_epochs - num_epochs // 4
    span = stop - start
  elif kind == "smooth":
    start = num_epochs // 2 if warmup_epochs is None else warmup_epochs
    if not 0 <= start < num_epochs:
      raise ValueError(f"warmup_epochs must be in [0, num_epochs={num_epochs}), got {start}.")
    stop, span = num_epochs, num_epochs - start
  elif kind == "constant":
    start, stop, span = 0, 0, 1
  else:
    raise ValueError(f"unknown label-smoothing schedule {kind!r}; use 'ppa', 'proportional', 'smooth' or "
                     "'constant'.")
  ramp = alpha * (1.0 / span) * (epochs + 1 - start)
  table = np.where(epochs < start, 0.0, np.where(epochs < stop, ramp, alpha)).astype(np.float32)

  def alpha_at(epoch):
    return jnp.asarray(table)[jnp.clip(jnp.asarray(epoch, jnp.int32), 0, num_epochs - 1)]

  return alpha_at
