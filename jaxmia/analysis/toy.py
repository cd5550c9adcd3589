"""The 2-D toy experiment of the label-smoothing paper (Fig. 1): how α shapes an attack's path to a class.

Three Gaussian blobs, a small MLP trained full-batch with label smoothing α, then a gradient "attack" that
moves one input point from a fixed start until the model is confident it belongs to the target class.
Settings follow PPA's `label_smoothing_toy_example` notebook: 500 points, centres (0, -10), (-10, 10),
(10, 10), std 1.6; MLP 2-20-20-3 with BatchNorm and ReLU (PyTorch initialisers, no bias on the head); SGD
lr 1e-3, momentum 0.9, 5,000 full-batch steps; attack from (-3, -10) towards class 2 with plain
cross-entropy and SGD lr 0.1 until the target softmax exceeds 0.95 (at most 10,000 steps).

All of it is jitted: training is one `lax.scan`, the attack one `lax.while_loop`, and `run_toy` vmaps both
over the α values and the seeds. For a given seed every α sees the same blobs and the same initial weights
(as in the notebook, where only the loss changes between the three models).
"""
import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from jaxmia import losses
from jaxmia.files import mean_sd
from jaxmia.models.batch_norm import BatchNorm
from jaxmia.models.resnet import linear_bias_init, linear_kernel_init

UNROLL = 1
BLOB_CENTRES = ((0.0, -10.0), (-10.0, 10.0), (10.0, 10.0))


@dataclasses.dataclass(frozen=True)
class ToySettings:
  """Every knob of the toy experiment (defaults: the paper's)."""
  num_points: int = 500
  centres: tuple[tuple[float, float], ...] = BLOB_CENTRES
  std: float = 1.6
  hidden: int = 20
  train_steps: int = 5000
  learning_rate: float = 1e-3
  momentum: float = 0.9
  attack_start: tuple[float, float] = (-3.0, -10.0)
  attack_target: int = 2
  attack_learning_rate: float = 0.1
  attack_threshold: float = 0.95
  attack_max_steps: int = 10000


def blob_counts(num_points: int, num_blobs: int) -> np.ndarray:
  """Points per blob: `num_points // num_blobs` each, the remainder going to the first blobs (sklearn's rule)."""
  counts = np.full(num_blobs, num_points // num_blobs)
  counts[:num_points % num_blobs] += 1
  return counts


def sample_blobs(key, num_points: int = 500, centres=BLOB_CENTRES, std: float = 1.6):
  """Isotropic Gaussian blobs: points float32 `[N, 2]` and labels int32 `[N]` (blob i has label i, in order)."""
  centres = np.asarray(centres, np.float32)
  labels = np.repeat(np.arange(len(centres), dtype=np.int32), blob_counts(num_points, len(centres)))
  noise = jax.random.normal(key, (num_points, centres.shape[1]), jnp.float32)
  return jnp.asarray(centres)[labels] + std * noise, jnp.asarray(labels)


class ToyMLP(nn.Module):
  """`[B, 2]` -> logits `[B, num_classes]`: two Linear-BatchNorm-ReLU blocks and a bias-free linear head.

  Linear layers use PyTorch's default initialisers and BatchNorm PyTorch's semantics, as in the notebook.
  """
  hidden: int = 20
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(2):
      fan_in = x.shape[-1]
      x = nn.Dense(self.hidden, kernel_init=linear_kernel_init, bias_init=linear_bias_init(fan_in),
                   name=f"dense{i}")(x)
      x = nn.relu(BatchNorm(name=f"bn{i}")(x, train=train))
    return nn.Dense(self.num_classes, use_bias=False, kernel_init=linear_kernel_init, name="head")(x)


def train_toy_model(key, points, labels, alpha, settings: ToySettings = ToySettings()):
  """Variables of a `ToyMLP` trained full-batch with label-smoothing factor `alpha` (constant), and the loss curve.

  `key` initialises the weights; `points` `[N, 2]`, `labels` `[N]`. Returns `(variables, losses [train_steps])`.
  Pure and jit/vmap-able (the steps run in one `lax.scan`).
  """
  model = ToyMLP(settings.hidden, len(settings.centres))
  variables = model.init(key, points[:1], train=False)
  tx = optax.sgd(settings.learning_rate, momentum=settings.momentum)

  def loss_fn(params, batch_stats):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, points, train=True,
                                  mutable=["batch_stats"])
    return losses.label_smoothing_cross_entropy(logits, labels, alpha).mean(), updates["batch_stats"]

  def step(carry, _):
    params, batch_stats, opt_state = carry
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  init = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  (params, batch_stats, _), loss_curve = jax.lax.scan(step, init, None, length=settings.train_steps, unroll=UNROLL)
  return {"params": params, "batch_stats": batch_stats}, loss_curve


class AttackPath(NamedTuple):
  steps: jax.Array        # int32 []: updates until the target softmax exceeded the threshold (max_steps if never)
  point: jax.Array        # [D], the final point
  confidence: jax.Array   # [], target softmax at the final point
  path: jax.Array         # [max_steps + 1, D]: the visited points; rows after `steps` repeat the final point


def gradient_attack(logits_fn, start, target: int, *, learning_rate: float, threshold: float, max_steps: int):
  """Plain gradient descent on the input's cross-entropy towards `target` until its softmax exceeds `threshold`.

  `logits_fn(x [D]) -> logits [C]`. Point k is reached after k updates `x <- x - lr * grad CE(x, target)`; the
  loop stops at the first k whose target softmax is > `threshold`, or at `max_steps` (one `lax.while_loop`, so
  it is jit/vmap-able). PPA's notebook counts steps the same way but measures the final point one update
  later, after the step that it already knew was not needed.
  """
  start = jnp.asarray(start, jnp.float32)

  def loss_and_confidence(x):
    log_probs = jax.nn.log_softmax(logits_fn(x).astype(jnp.float32))
    return -log_probs[target], jnp.exp(log_probs[target])

  grad_fn = jax.grad(loss_and_confidence, has_aux=True)
  grad, confidence = grad_fn(start)
  path = jnp.broadcast_to(start, (max_steps + 1, start.shape[0]))

  def not_done(carry):
    step, _, _, confidence, _ = carry
    return (step < max_steps) & (confidence <= threshold)

  def update(carry):
    step, x, grad, _, path = carry
    x = x - learning_rate * grad
    grad, confidence = grad_fn(x)
    return step + 1, x, grad, confidence, path.at[step + 1].set(x)

  step, x, _, confidence, path = jax.lax.while_loop(
      not_done, update, (jnp.int32(0), start, grad, confidence, path))
  path = jnp.where(jnp.arange(max_steps + 1)[:, None] > step, x, path)
  return AttackPath(step, x, confidence, path)


def confidence_grid(extent: float = 15.0, size: int = 100):
  """Evaluation grid: (xs `[size]`, points `[size * size, 2]` row-major over (y, x)), as the notebook's meshgrid."""
  xs = np.linspace(-extent, extent, size, dtype=np.float32)
  gx, gy = np.meshgrid(xs, xs)
  return xs, np.stack([gx.ravel(), gy.ravel()], axis=1)


class ToyResult(NamedTuple):
  """Arrays with leading axes `[num_seeds, num_alphas]`."""
  steps: np.ndarray          # int, attack updates
  distance: np.ndarray       # L2 distance of the attack's end point to the nearest target-class training point
  confidence: np.ndarray     # target softmax at the end point
  final_loss: np.ndarray     # training loss after the last step
  train_accuracy: np.ndarray
  paths: np.ndarray          # [S, A, max_steps + 1, 2]
  confidence_maps: np.ndarray  # [S, A, size, size]: max softmax on the grid (rows: y, columns: x)
  points: np.ndarray         # [S, N, 2], the blobs of each seed
  labels: np.ndarray         # [N]


@functools.partial(jax.jit, static_argnames=("settings", "grid_size", "grid_extent"))
def _run_seed(key, alphas, settings: ToySettings, grid_size: int, grid_extent: float):
  data_key, init_key = jax.random.split(key)
  points, labels = sample_blobs(data_key, settings.num_points, settings.centres, settings.std)
  model = ToyMLP(settings.hidden, len(settings.centres))
  is_target = labels == settings.attack_target
  _, grid = confidence_grid(grid_extent, grid_size)

  def one_alpha(alpha):
    variables, loss_curve = train_toy_model(init_key, points, labels, alpha, settings)
    apply = functools.partial(model.apply, variables, train=False)
    attack = gradient_attack(lambda x: apply(x[None])[0], jnp.asarray(settings.attack_start),
                             settings.attack_target, learning_rate=settings.attack_learning_rate,
                             threshold=settings.attack_threshold, max_steps=settings.attack_max_steps)
    gaps = jnp.where(is_target, jnp.sum(jnp.square(points - attack.point), axis=-1), jnp.inf)
    accuracy = jnp.mean(jnp.argmax(apply(points), -1) == labels)
    conf_map = jnp.max(jax.nn.softmax(apply(jnp.asarray(grid))), axis=-1).reshape(grid_size, grid_size)
    return (attack.steps, jnp.sqrt(jnp.min(gaps)), attack.confidence, loss_curve[-1], accuracy, attack.path,
            conf_map)

  return jax.vmap(one_alpha)(alphas) + (points, labels)


def run_toy(seed: int, num_seeds: int, alphas: Sequence[float], settings: ToySettings = ToySettings(),
            grid_size: int = 100, grid_extent: float = 15.0) -> ToyResult:
  """Trains and attacks one model per (seed, α); seed s uses `fold_in(key(seed), s)` for data and weights."""
  alphas = jnp.asarray(alphas, jnp.float32)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.arange(num_seeds))
  outputs = jax.device_get(jax.vmap(lambda k: _run_seed(k, alphas, settings, grid_size, grid_extent))(keys))
  steps, distance, confidence, final_loss, accuracy, paths, maps, points, labels = outputs
  return ToyResult(steps=np.asarray(steps), distance=np.asarray(distance), confidence=np.asarray(confidence),
                   final_loss=np.asarray(final_loss), train_accuracy=np.asarray(accuracy),
                   paths=np.asarray(paths), confidence_maps=np.asarray(maps), points=np.asarray(points),
                   labels=np.asarray(labels[0]))


# Fig. 1 of the paper (one model per α, PPA's seeds): attack steps and final distance.
PAPER_STEPS = {0.0: 763, 0.05: 3113, -0.05: 53}
PAPER_DISTANCES = {0.0: 3.23, 0.05: 0.65, -0.05: 6.75}


def _ordered(values_by_alpha: dict, order: Sequence[float]) -> bool | None:
  """Whether `values_by_alpha[order[0]] < values_by_alpha[order[1]] < ...`; None if a value is missing (NaN)."""
  values = [values_by_alpha[a] for a in order]
  if any(np.isnan(v) for v in values):
    return None
  return bool(all(x < y for x, y in zip(values, values[1:])))


def summarize_toy(result: ToyResult, alphas: Sequence[float], threshold: float) -> dict:
  """Per-α statistics over seeds and the checks of the paper's ordering.

  Attacks that never pass `threshold` (they stall where the model is flat) count with `max_steps` in
  `steps` and with their end point in `distance`; `*_reached` statistics use only the attacks that got there.
  Orderings: steps −0.05 < 0 < 0.05 and distance 0.05 < 0 < −0.05 (needs those three α values).
  """
  reached = result.confidence > threshold
  per_alpha = []
  for j, alpha in enumerate(alphas):
    ok = reached[:, j]
    entry = {"alpha": float(alpha), "num_seeds": int(len(ok)), "num_reached": int(ok.sum())}
    for name, values in (("steps", result.steps[:, j]), ("distance", result.distance[:, j])):
      entry[name] = mean_sd(values)
      entry[f"{name}_reached"] = mean_sd(values[ok])
      entry[f"{name}_per_seed"] = [float(v) for v in values]
    entry["train_accuracy"] = mean_sd(result.train_accuracy[:, j])
    entry["final_train_loss"] = mean_sd(result.final_loss[:, j])
    if float(alpha) in PAPER_STEPS:
      entry["paper_steps"] = PAPER_STEPS[float(alpha)]
      entry["paper_distance"] = PAPER_DISTANCES[float(alpha)]
    per_alpha.append(entry)
  summary = {"per_alpha": per_alpha}
  index = {float(a): j for j, a in enumerate(alphas)}
  if all(a in index for a in PAPER_STEPS):
    step_order, distance_order = (-0.05, 0.0, 0.05), (0.05, 0.0, -0.05)
    checks = {}
    for stat in ("", "_reached"):
      steps = {a: per_alpha[index[a]][f"steps{stat}"]["mean"] for a in step_order}
      distances = {a: per_alpha[index[a]][f"distance{stat}"]["mean"] for a in distance_order}
      checks[f"steps_order_of_means{stat}"] = _ordered(steps, step_order)
      checks[f"distance_order_of_means{stat}"] = _ordered(distances, distance_order)
    cols = [index[a] for a in step_order]
    checks["seeds_with_steps_order"] = int(np.sum(np.all(np.diff(result.steps[:, cols], axis=1) > 0, axis=1)))
    cols = [index[a] for a in distance_order]
    checks["seeds_with_distance_order"] = int(np.sum(np.all(np.diff(result.distance[:, cols], axis=1) > 0, axis=1)))
    summary["paper_ordering"] = checks
  return summary
