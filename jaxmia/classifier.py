"""Classifier library: model creation, train state, optimisers, jitted train / eval steps, prediction.

Every builder takes explicit arguments (architecture, number of classes, image size, compute dtype,
augmentation, defense weights, learning rates, ...), not a training config: `jaxmia.train` is the loop,
checkpoints, export and CLI over this library and translates its config into these arguments; the
knowledge-extraction student (`jaxmia.student`) and the evaluation of a loaded target use it directly.

One training step is

    uint8 batch -> on-device augmentation (per-example keys = f(key, step, example index))
    -> model (train mode) -> label-smoothing CE (+ Inception aux loss, + MID / BiDO terms) -> optax update

as one pure function (`make_train_step`), jitted over the `('data',)` mesh with the state donated
(`jit_train_step`). Evaluation steps take the model's variables (`{'params', 'batch_stats'}`), not a
`TrainState`, so any loaded classifier can be evaluated.
"""
import functools
import math
import numbers
import pathlib
from typing import Any, Callable, Mapping

import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmia import convert, data, defenses, losses, metrics, model_store, models, parallel
from jaxmia.data import augment
from jaxmia.models import xla_cpu

# Top-level submodules whose parameters are created fresh when the initial weights come from another task
# (the ImageNet head, Inception's auxiliary head, MID's bottleneck).
FRESH_MODULES = ("fc", "classifier", "logits", "AuxLogits", "encoder")
COMPUTE_DTYPES = ("float32", "bfloat16")


class TrainState(train_state.TrainState):
  """Parameters, optimiser state and step (from flax) plus the BatchNorm running statistics."""
  batch_stats: Any


def model_variables(state: TrainState) -> dict:
  """The variables an eval step takes: `{'params', 'batch_stats'}` of a `TrainState`."""
  return {"params": state.params, "batch_stats": state.batch_stats}


# ----------------------------------------------------------------------------------------------- model


def compute_dtype(name: str) -> jnp.dtype:
  """`'float32'` or `'bfloat16'` as a dtype (parameters stay float32 either way)."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"The compute dtype must be 'float32' or 'bfloat16', got {name!r}.")
  return jnp.dtype(name)


def model_spec(arch: str, num_classes: int, builder_kwargs: Mapping[str, Any] | None = None, *,
               mid_bottleneck_dim: int | None = None, calor_rank: int | None = None,
               calor_activation: str = "tanh") -> tuple[str, dict]:
  """The export kind and the `module_kwargs` that rebuild the model (`model_store.load_model`).

  `mid_bottleneck_dim`: the model is a MID classifier (`defenses.create_mid_classifier`) with a variational
  bottleneck of this size before the head; `calor_rank`: a CALoR classifier (`defenses.create_calor_classifier`)
  whose head has this rank (`calor_activation` between its two layers); both None: a plain
  `models.create_classifier` classifier.
  """
  builder_kwargs = dict(builder_kwargs or {})
  if mid_bottleneck_dim is not None and calor_rank is not None:
    raise ValueError("A model is either a MID or a CALoR classifier, not both.")
  if mid_bottleneck_dim is not None:
    return "mid_classifier", dict(arch=arch, num_classes=num_classes, bottleneck_dim=mid_bottleneck_dim,
                                  **builder_kwargs)
  if calor_rank is not None:
    return "calor_classifier", dict(arch=arch, num_classes=num_classes, rank=calor_rank,
                                    activation=calor_activation, **builder_kwargs)
  return "classifier", dict(arch=arch, num_classes=num_classes, **builder_kwargs)


def create_model(kind: str, module_kwargs: Mapping[str, Any], dtype: str = "float32"):
  """The Flax module of a `model_spec`, computing in `dtype` ('float32' or 'bfloat16')."""
  kwargs, dtype = dict(module_kwargs), compute_dtype(dtype)
  if kind == "mid_classifier":
    return defenses.create_mid_classifier(dtype=dtype, **kwargs)
  if kind == "calor_classifier":
    return defenses.create_calor_classifier(dtype=dtype, **kwargs)
  if kind != "classifier":
    raise ValueError(f"Unknown classifier kind {kind!r}; expected 'classifier', 'mid_classifier' or "
                     "'calor_classifier'.")
  return models.create_classifier(kwargs.pop("arch"), kwargs.pop("num_classes"), dtype=dtype, **kwargs)


def init_variables(module, key: jax.Array, image_size: int) -> dict:
  """Fresh `{'params', 'batch_stats'}` (host arrays) of `module` for `[1, image_size, image_size, 3]` inputs."""
  init = jax.jit(functools.partial(module.init, train=False))
  variables = jax.device_get(init({"params": key}, jnp.zeros((1, image_size, image_size, 3), jnp.float32)))
  return {k: variables[k] for k in ("params", "batch_stats") if k in variables}


def pretrained_variables(path, arch: str, builder_kwargs: Mapping[str, Any] | None = None) -> dict:
  """Host variables of initial weights at `path`: a `converted_weights/` entry or a PyTorch file of `arch`
  (backbone only)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"init_weights={str(path)!r} does not exist. Give a converted_weights/ entry "
                            "(see `python -m jaxmia.convert`) or a torchvision .pth file, or '' to start "
                            "from random weights.")
  if path.is_dir():
    _, variables = model_store.load_model(path)
  else:
    variables = convert.classifier_from_torch(arch, path, None, **dict(builder_kwargs or {}))
  return jax.device_get(variables)


def merge_pretrained(fresh: dict, pretrained: dict, prefix: tuple[str, ...] = ()) -> dict:
  """`fresh` with every leaf replaced by the `pretrained` leaf at the same path (under `prefix`).

  Leaves of the `FRESH_MODULES` heads keep their fresh values when the pretrained model has no such leaf or
  one of another shape (e.g. a 1000-class ImageNet `fc`); any other missing or mis-shaped leaf is an error.
  """
  flat_pretrained = flax.traverse_util.flatten_dict(pretrained)
  merged, problems = {}, []
  for path, value in flax.traverse_util.flatten_dict(fresh).items():
    source = flat_pretrained.get((path[0], *prefix, *path[1:]) if prefix else path)
    module = path[1 + len(prefix)] if len(path) > 1 + len(prefix) else None
    if source is not None and np.shape(source) == np.shape(value):
      merged[path] = np.asarray(source, np.asarray(value).dtype)
    elif module in FRESH_MODULES or (prefix and path[1] != prefix[0]):
      merged[path] = value
    else:
      problems.append(f"{'/'.join(path)}: " + ("missing" if source is None else
                                               f"shape {np.shape(source)} != {np.shape(value)}"))
  if problems:
    raise ValueError("The initial weights (init_weights) do not fit the architecture; these leaves do not match:"
                     "\n  " + "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else ""))
  return flax.traverse_util.unflatten_dict(merged)


def create_train_state(module, variables: dict, tx: optax.GradientTransformation,
                       mesh: jax.sharding.Mesh) -> TrainState:
  """A `TrainState` of `variables` (host arrays) with a fresh optimiser state, replicated over `mesh`."""

  def create(variables):
    return TrainState.create(apply_fn=module.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), tx=tx)

  # Host arrays in, replicated global arrays out: works across processes, where device_put cannot.
  return jax.jit(create, out_shardings=parallel.replicated(mesh))(variables)


# ----------------------------------------------------------------------------------------------- optimisers


def step_decay_schedule(learning_rate: float, decay: float, decay_epochs, steps_per_epoch: int) -> optax.Schedule:
  """Piecewise constant: `learning_rate`, times `decay` at each epoch in `decay_epochs` (PyTorch MultiStepLR)."""
  boundaries = {int(epoch * steps_per_epoch): decay for epoch in decay_epochs}
  return optax.piecewise_constant_schedule(learning_rate, boundaries)


def epoch_cosine_schedule(learning_rate: float, final_learning_rate: float, num_epochs: int,
                          steps_per_epoch: int) -> optax.Schedule:
  """`final + (lr - final) * (1 + cos(pi * epoch / num_epochs)) / 2` with `epoch = step // steps_per_epoch`
  (PyTorch's `CosineAnnealingLR` stepped once per epoch)."""
  def schedule(step):
    epoch = (step // steps_per_epoch).astype(jnp.float32)
    return final_learning_rate + (learning_rate - final_learning_rate) * 0.5 * (
        1.0 + jnp.cos(jnp.pi * epoch / num_epochs))
  return schedule


def adam(learning_rate, *, b1: float, b2: float, eps: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam as in PyTorch: `weight_decay` is an L2 term added to the gradients (not AdamW)."""
  tx = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


def sgd(learning_rate, *, momentum: float, weight_decay: float) -> optax.GradientTransformation:
  """PyTorch `SGD(lr, momentum, weight_decay)`: the decay is added to the gradient before the momentum."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum or None))


# The rule for the label-smoothing factor α (checked by `check_label_smoothing` before training starts).
LABEL_SMOOTHING_RULE = ("a finite number <= 1 (the target (1 - α)·onehot + α/C gives the true class 1 - α(C-1)/C, "
                        "at least 1/C for α <= 1: α = 1 is the uniform target, α < 0 negative label smoothing)")


def check_label_smoothing(label_smoothing) -> float:
  """`label_smoothing` as a float if it is a valid factor α (`LABEL_SMOOTHING_RULE`: finite, α <= 1, any
  negative value allowed); else a `ValueError`. The loss can only check Python numbers, not the traced
  per-epoch factor of a jitted step, so the factor is checked here, where the schedule is built."""
  if (isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real)
      or not math.isfinite(label_smoothing) or label_smoothing > 1):
    raise ValueError(f"label_smoothing={label_smoothing!r} must be {LABEL_SMOOTHING_RULE}.")
  return float(label_smoothing)


def smoothing_schedule(label_smoothing: float, num_epochs: int, negative_kind: str) -> Callable[[int], jax.Array]:
  """Label-smoothing factor per epoch: the `negative_kind` schedule (`losses.ls_schedule`) for a negative
  factor, constant otherwise. The factor must satisfy `LABEL_SMOOTHING_RULE` (α <= 1)."""
  label_smoothing = check_label_smoothing(label_smoothing)
  kind = negative_kind if label_smoothing < 0 else "constant"
  return losses.ls_schedule(label_smoothing, num_epochs, kind)


# ----------------------------------------------------------------------------------------------- steps


def make_train_step(num_classes: int, *, augment_kwargs: Mapping[str, Any], aux_loss_weight: float = 0.0,
                    defense: str = "none", mid_beta: float = 0.0,
                    bido_kwargs: Mapping[str, float] | None = None,
                    calor_kwargs: Mapping[str, float] | None = None, calor_start_step: int = 0) -> Callable:
  """`train_step(state, batch, key, alpha) -> (state, metrics)`: pure, to be jitted (`jit_train_step`).

  augment_kwargs: keyword arguments of `data.augment.train_augment` (size, crop_scale, ...).
  aux_loss_weight: weight of Inception-v3's auxiliary-head loss (0: not computed).
  defense: 'none', 'mid' (KL term weighted by `mid_beta`; the model must be a MID classifier), 'bido'
    (`defenses.bido_penalty` with `bido_kwargs`: lambda_x, lambda_y, sigma, on the sown stage outputs and the
    pooled features) or 'calor' (the classification loss is label-smoothed cross-entropy before step
    `calor_start_step` and `defenses.confidence_adaptation_loss` with `calor_kwargs`: gamma, scale, and the
    label-smoothing factor as its alpha from that step on; the model should be a CALoR classifier).
  calor_start_step: the first step of CALoR's confidence adaptation phase (0: the whole run; the CA loss alone
    cannot train a randomly initialised many-class model, see `defenses.calor`). The step counter is traced,
    so the switch does not recompile.

  batch: `{'image': uint8 [B, S, S, 3], 'label': int32 [B]}` (the global batch); key: the run's root key;
  alpha: the label-smoothing factor of the current epoch (a float32 scalar array, so changing it does not
  recompile). Example `i` of step `s` is augmented with a key that is a function of (key, s, i) only, so it
  does not depend on how the batch is split over devices and processes.
  """
  if defense not in defenses.DEFENSES:
    raise ValueError(f"The defense must be one of {defenses.DEFENSES}, got {defense!r}.")
  augment_kwargs, bido_kwargs, calor_kwargs = dict(augment_kwargs), dict(bido_kwargs or {}), dict(calor_kwargs or {})

  def classification_loss(logits, labels, alpha, step):
    cross_entropy = losses.label_smoothing_cross_entropy(logits, labels, alpha)
    if defense != "calor":
      return cross_entropy
    adaptation = defenses.confidence_adaptation_loss(logits, labels, label_smoothing=alpha, **calor_kwargs)
    if calor_start_step <= 0:
      return adaptation
    return jnp.where(step >= calor_start_step, adaptation, cross_entropy)

  def loss_fn(params, state, images, labels, alpha, rngs):
    mutable = ["batch_stats"] + (["intermediates"] if defense in ("mid", "bido") or aux_loss_weight else [])
    # BiDO also constrains the pooled features that feed the head, as the official code does.
    feature_kwargs = {"return_features": True} if defense == "bido" else {}
    outputs, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                                      mutable=mutable, rngs=rngs, **feature_kwargs)
    logits, features = outputs if defense == "bido" else (outputs, None)
    logits = logits.astype(jnp.float32)
    loss = classification_loss(logits, labels, alpha, state.step).mean()
    extra = {}
    intermediates = updates.get("intermediates", {})
    if "aux_logits" in intermediates:
      (aux,) = intermediates["aux_logits"]
      extra["aux_loss"] = classification_loss(aux, labels, alpha, state.step).mean()
      loss += aux_loss_weight * extra["aux_loss"]
    if defense == "mid":
      (kl,) = intermediates["bottleneck_kl"]
      extra["kl"] = kl.mean()
      loss += mid_beta * extra["kl"]
    elif defense == "bido":
      stages = tuple(intermediates.get("stage_outputs", ()))
      hidden = (*stages, features) if stages else ()
      penalty, extra = defenses.bido_penalty(images, labels, num_classes, hidden, **bido_kwargs)
      extra["bido_penalty"] = penalty
      loss += penalty
    elif defense == "calor":
      extra["calor_adaptation"] = (state.step >= calor_start_step).astype(jnp.float32)  # 1 in the CA phase
    return loss, (logits, updates["batch_stats"], extra)

  def train_step(state: TrainState, batch: dict, key: jax.Array, alpha: jax.Array):
    step_key = jax.random.fold_in(key, state.step)
    augment_key, model_key = jax.random.split(step_key)
    example_keys = jax.vmap(jax.random.fold_in, (None, 0))(augment_key, jnp.arange(batch["label"].shape[0]))
    images = augment.train_augment(batch["image"], example_keys, **augment_kwargs)
    labels = batch["label"]
    rngs = {"dropout": jax.random.fold_in(model_key, 0), defenses.mid.RNG_STREAM: jax.random.fold_in(model_key, 1)}
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, batch_stats, extra)), grads = grad_fn(state.params, state, images, labels, alpha, rngs)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    step_metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels), **extra}
    return state, step_metrics

  return train_step


def jit_train_step(train_step: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """`train_step` jitted over `mesh`: batch sharded on `'data'`, everything else replicated, state donated.

  BatchNorm needs no cross-device code: the batch mean inside the jitted step is a mean over the *global*
  (sharded) batch, for which XLA inserts the all-reduce itself, so 1 device and N devices compute the same
  statistics and the same update (`tests/test_train.py` checks 4 devices against 1). On XLA:CPU the step is
  compiled with `xla_cpu.step_compiler_options()` (convolutions on XLA's own emitter, not YNNPACK).
  """
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(train_step, in_shardings=(repl, sharded, repl, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,), compiler_options=xla_cpu.step_compiler_options())


def make_eval_step(apply_fn: Callable, image_size: int, mesh: jax.sharding.Mesh) -> Callable:
  """`eval_step(variables, images uint8 [B, S, S, 3]) -> logits [B, C]` (float32, replicated on every device).

  `apply_fn`: the model's `module.apply`; `variables`: `{'params', 'batch_stats'}` replicated over `mesh`;
  images are resized to `image_size` (antialiased) and normalised to [-1, 1].
  """

  def eval_step(variables, images):
    x = augment.eval_transform(images, size=image_size)
    return apply_fn(variables, x, train=False).astype(jnp.float32)

  return jax.jit(eval_step, in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


# ----------------------------------------------------------------------------------------------- evaluation


def predict(eval_step: Callable, variables, split, batch_size: int, mesh) -> tuple[np.ndarray, np.ndarray]:
  """Logits `[N, C]` and labels `[N]` of a whole split, in order (`eval_step` from `make_eval_step`).

  Every process reads every global batch (evaluation splits are small) and feeds its own rows
  (`parallel.map_batches`: the last batch is padded to `batch_size` and the padding cut from the logits).
  """
  labels = []

  def images():
    for batch in data.batches(split, batch_size, seed=0, epoch=0, shuffle=False, drop_remainder=False,
                              process_index=0, process_count=1):
      labels.append(batch["label"])
      yield (batch["image"],)

  logits = list(parallel.map_batches(lambda x: eval_step(variables, x), images(), batch_size, mesh=mesh))
  return np.concatenate(logits), np.concatenate(labels)


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def evaluate_split(eval_step: Callable, variables, split, batch_size: int, mesh, prefix: str) -> dict:
  """Accuracy, top-5 accuracy, mean cross-entropy, ECE (10 bins) and mean confidence (top softmax probability;
  above the accuracy means over-confident) of the model on `split`, keyed `<prefix>_<name>`."""
  logits, labels = predict(eval_step, variables, split, batch_size, mesh)
  probs = _softmax(logits.astype(np.float64))
  nll = -np.log(np.maximum(np.take_along_axis(probs, labels[:, None], 1)[:, 0], 1e-300))
  return {f"{prefix}_accuracy": float(metrics.topk_accuracy(logits, labels, 1)),
          f"{prefix}_top5_accuracy": float(metrics.topk_accuracy(logits, labels, min(5, logits.shape[-1]))),
          f"{prefix}_loss": float(nll.mean()),
          f"{prefix}_ece": float(metrics.expected_calibration_error(probs, labels, num_bins=10)),
          f"{prefix}_confidence": float(probs.max(axis=-1).mean())}
