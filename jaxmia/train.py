"""Target classifier training: `python -m jaxmia.train --config=configs/faces.py --workdir=runs/faces`.

One epoch = a deterministic pass over the training split (order = f(seed, epoch)); one step =

    uint8 batch -> on-device augmentation (per-example keys = f(seed, step, example index))
    -> model (train mode) -> label-smoothing CE (+ Inception aux loss, + MID / BiDO terms) -> optax update

as one pure, jitted `train_step` with the state donated. Data parallelism: the global batch is sharded over
the `('data',)` mesh and the state replicated (`jaxmia.parallel`); multi-host runs start through
`parallel.initialize_distributed()`. After every epoch the model is evaluated on the test split (accuracy,
top-5, ECE), metrics go to the console and TensorBoard (clu), and an orbax checkpoint is written; a rerun
with the same workdir resumes, mid-epoch included, and ends with exactly the parameters of an uninterrupted
run. The final model is exported with `convert.save_converted(workdir/'model', ...)` so that the attack
loads it with `convert.load_converted`.
"""
import functools
import json
import os
import pathlib
from typing import Any, Callable

from absl import app, flags, logging
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict, config_flags
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxmia import cli, convert, data, defenses, losses, metrics, models, parallel
from jaxmia.data import augment

# Top-level submodules whose parameters are created fresh when the initial weights come from another task
# (the ImageNet head, Inception's auxiliary head, MID's bottleneck).
FRESH_MODULES = ("fc", "classifier", "logits", "AuxLogits", "encoder")


class TrainState(train_state.TrainState):
  """Parameters, optimiser state and step (from flax) plus the BatchNorm running statistics."""
  batch_stats: Any


# ----------------------------------------------------------------------------------------------- model & state


def compute_dtype(config: ConfigDict):
  if config.model.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}.")
  return jnp.dtype(config.model.dtype)


def model_spec(config: ConfigDict, num_classes: int) -> tuple[str, dict]:
  """The export kind and the `module_kwargs` that rebuild the trained model (`convert.load_converted`)."""
  if config.defense.name not in defenses.DEFENSES:
    raise ValueError(f"config.defense.name must be one of {defenses.DEFENSES}, got {config.defense.name!r}.")
  if config.defense.name == "mid":
    return "mid_classifier", dict(arch=config.model.arch, num_classes=num_classes,
                                  bottleneck_dim=config.defense.mid.bottleneck_dim, **config.model.builder_kwargs)
  return "classifier", dict(arch=config.model.arch, num_classes=num_classes, **config.model.builder_kwargs)


def create_model(config: ConfigDict, num_classes: int):
  """The Flax module to train, in the configured compute dtype."""
  kind, kwargs = model_spec(config, num_classes)
  dtype = compute_dtype(config)
  if kind == "mid_classifier":
    return defenses.create_mid_classifier(dtype=dtype, **kwargs)
  return models.create_classifier(kwargs.pop("arch"), kwargs.pop("num_classes"), dtype=dtype, **kwargs)


def pretrained_variables(config: ConfigDict) -> dict:
  """Variables of `config.init_weights`: a `converted_weights/` entry or a PyTorch file (backbone only)."""
  path = pathlib.Path(config.init_weights)
  if not path.exists():
    raise FileNotFoundError(f"config.init_weights={str(path)!r} does not exist. Give a converted_weights/ entry "
                            "(see `python -m jaxmia.convert`) or a torchvision .pth file, or '' to start "
                            "from random weights.")
  if path.is_dir():
    _, variables = convert.load_converted(path)
  else:
    variables = convert.classifier_from_torch(config.model.arch, path, None, **config.model.builder_kwargs)
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
    raise ValueError("config.init_weights does not fit config.model.arch; these leaves do not match:\n  "
                     + "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else ""))
  return flax.traverse_util.unflatten_dict(merged)


def learning_rate_schedule(config: ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Piecewise constant: `learning_rate`, times `lr_decay` at each epoch in `lr_decay_epochs`."""
  boundaries = {int(epoch * steps_per_epoch): config.optimizer.lr_decay for epoch in config.optimizer.lr_decay_epochs}
  return optax.piecewise_constant_schedule(config.optimizer.learning_rate, boundaries)


def create_optimizer(config: ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam as in PyTorch: `weight_decay` is an L2 term added to the gradients (not AdamW)."""
  opt = config.optimizer
  adam = optax.adam(learning_rate_schedule(config, steps_per_epoch), b1=opt.b1, b2=opt.b2, eps=opt.eps)
  return optax.chain(optax.add_decayed_weights(opt.weight_decay), adam) if opt.weight_decay else adam


def create_train_state(config: ConfigDict, module, key: jax.Array, steps_per_epoch: int,
                       mesh: jax.sharding.Mesh) -> TrainState:
  """Random or pretrained initial variables and a fresh optimiser state, replicated over `mesh`."""
  size = config.image_size
  init = jax.jit(functools.partial(module.init, train=False))
  variables = jax.device_get(init({"params": key}, jnp.zeros((1, size, size, 3), jnp.float32)))
  variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
  if config.init_weights:
    prefix = ("backbone",) if config.defense.name == "mid" else ()
    variables = merge_pretrained(variables, pretrained_variables(config), prefix)
  tx = create_optimizer(config, steps_per_epoch)

  def create(variables):
    return TrainState.create(apply_fn=module.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), tx=tx)

  # Host arrays in, replicated global arrays out: works across processes, where device_put cannot.
  return jax.jit(create, out_shardings=parallel.replicated(mesh))(variables)


def smoothing_schedule(config: ConfigDict) -> Callable[[int], jax.Array]:
  """Label-smoothing factor per epoch: `config.ls_schedule` for negative factors, constant otherwise."""
  kind = config.ls_schedule if config.label_smoothing < 0 else "constant"
  return losses.ls_schedule(config.label_smoothing, config.num_epochs, kind)


# ----------------------------------------------------------------------------------------------- steps


def make_train_step(config: ConfigDict, num_classes: int) -> Callable:
  """`train_step(state, batch, key, alpha) -> (state, metrics)`: pure, to be jitted (`jit_train_step`).

  batch: `{'image': uint8 [B, S, S, 3], 'label': int32 [B]}` (the global batch); key: the run's root key;
  alpha: the label-smoothing factor of the current epoch (a float32 scalar array, so changing it does not
  recompile). Example `i` of step `s` is augmented with a key that is a function of (key, s, i) only, so it
  does not depend on how the batch is split over devices and processes.
  """
  defense = config.defense

  def loss_fn(params, state, images, labels, alpha, rngs):
    mutable = ["batch_stats"] + (["intermediates"] if defense.name != "none" or config.model.aux_loss_weight
                                 else [])
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                                     mutable=mutable, rngs=rngs)
    logits = logits.astype(jnp.float32)
    loss = losses.label_smoothing_cross_entropy(logits, labels, alpha).mean()
    extra = {}
    intermediates = updates.get("intermediates", {})
    if "aux_logits" in intermediates:
      (aux,) = intermediates["aux_logits"]
      extra["aux_loss"] = losses.label_smoothing_cross_entropy(aux, labels, alpha).mean()
      loss += config.model.aux_loss_weight * extra["aux_loss"]
    if defense.name == "mid":
      (kl,) = intermediates["bottleneck_kl"]
      extra["kl"] = kl.mean()
      loss += defense.mid.beta * extra["kl"]
    elif defense.name == "bido":
      penalty, extra = defenses.bido_penalty(images, labels, num_classes,
                                             intermediates.get("stage_outputs", ()),
                                             lambda_x=defense.bido.lambda_x, lambda_y=defense.bido.lambda_y,
                                             sigma=defense.bido.sigma)
      loss += penalty
    return loss, (logits, updates["batch_stats"], extra)

  def train_step(state: TrainState, batch: dict, key: jax.Array, alpha: jax.Array):
    step_key = jax.random.fold_in(key, state.step)
    augment_key, model_key = jax.random.split(step_key)
    example_keys = jax.vmap(jax.random.fold_in, (None, 0))(augment_key, jnp.arange(batch["label"].shape[0]))
    images = augment.train_augment(batch["image"], example_keys, **config.augment)
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
  statistics and the same update (`tests/test_train.py` checks 4 devices against 1).
  """
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(train_step, in_shardings=(repl, sharded, repl, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,))


def make_eval_step(config: ConfigDict, mesh: jax.sharding.Mesh) -> Callable:
  """`eval_step(state, images uint8 [B, S, S, 3]) -> logits [B, C]` (float32, replicated on every device)."""

  def eval_step(state: TrainState, images):
    x = augment.eval_transform(images, size=config.image_size)
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    return logits.astype(jnp.float32)

  return jax.jit(eval_step, in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


# ----------------------------------------------------------------------------------------------- evaluation


def predict(eval_step: Callable, state: TrainState, split, batch_size: int, mesh) -> tuple[np.ndarray, np.ndarray]:
  """Logits `[N, C]` and labels `[N]` of a whole split, in order.

  Every process reads every global batch (evaluation splits are small) and feeds its own rows; the last
  batch is padded to `batch_size` and the padding cut from the (replicated) logits.
  """
  all_logits, all_labels = [], []
  rows = parallel.process_slice(batch_size)
  for batch in data.batches(split, batch_size, seed=0, epoch=0, shuffle=False, drop_remainder=False,
                            process_index=0, process_count=1):
    images, n = batch["image"], len(batch["label"])
    if n < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), images.dtype)])
    logits = jax.device_get(eval_step(state, parallel.shard_batch(images[rows], mesh)))
    all_logits.append(logits[:n])
    all_labels.append(batch["label"])
  return np.concatenate(all_logits), np.concatenate(all_labels)


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def evaluate(eval_step: Callable, state: TrainState, split, batch_size: int, mesh, prefix: str) -> dict:
  """Accuracy, top-5 accuracy, mean cross-entropy, ECE (10 bins) and mean confidence (top softmax probability;
  above the accuracy means over-confident) of the model on `split`."""
  logits, labels = predict(eval_step, state, split, batch_size, mesh)
  probs = softmax(logits.astype(np.float64))
  nll = -np.log(np.maximum(np.take_along_axis(probs, labels[:, None], 1)[:, 0], 1e-300))
  return {f"{prefix}_accuracy": float(metrics.topk_accuracy(logits, labels, 1)),
          f"{prefix}_top5_accuracy": float(metrics.topk_accuracy(logits, labels, min(5, logits.shape[-1]))),
          f"{prefix}_loss": float(nll.mean()),
          f"{prefix}_ece": float(metrics.expected_calibration_error(probs, labels, num_bins=10)),
          f"{prefix}_confidence": float(probs.max(axis=-1).mean())}


# ----------------------------------------------------------------------------------------------- loop


def _checkpoint_manager(directory: pathlib.Path, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, create=True,
      best_fn=(lambda m: m["val_accuracy"]) if best else None, best_mode="max")
  return ocp.CheckpointManager(directory.absolute(), options=options)


def _state_arrays(state: TrainState) -> dict:
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}


def _restore(manager: ocp.CheckpointManager, state: TrainState, step: int) -> TrainState:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_arrays(state))
  restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return state.replace(**restored)


def _export(path: pathlib.Path, state: TrainState, kind: str, module_kwargs: dict) -> None:
  """Writes the model where `convert.load_converted` finds it (every process takes part)."""
  variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  convert.save_converted(path, variables, kind=kind, module_kwargs=module_kwargs, overwrite=True)


def _save_on_interrupt(manager: ocp.CheckpointManager, state: TrainState, save: Callable[[int], None]) -> None:
  """Ctrl-C: checkpoints the last finished step, so a rerun resumes there instead of at the last checkpoint.

  Only between steps: a state already donated to an unfinished step is gone, and then the last regular
  checkpoint stands. Multi-process runs keep their regular checkpoints (saving is collective, and an interrupt
  reaches one process).
  """
  if jax.process_count() > 1 or any(leaf.is_deleted() for leaf in jax.tree.leaves(_state_arrays(state))):
    return
  step = int(jax.device_get(state.step))
  if step != manager.latest_step():
    save(step)
    manager.wait_until_finished()
  logging.warning("Interrupted: checkpoint at step %d; rerun with the same workdir to resume.", step)


def train_and_evaluate(config: ConfigDict, workdir: str | os.PathLike,
                       mesh: jax.sharding.Mesh | None = None) -> tuple[TrainState, dict]:
  """Trains (or resumes) the configured classifier in `workdir`; returns the final state and metrics.

  `mesh` defaults to all devices of all processes (`parallel.make_mesh()`).
  """
  from clu import metric_writers, periodic_actions  # imports TensorFlow: keep it out of `import jaxmia.train`

  workdir = pathlib.Path(workdir)
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval batch size")
  train_split = data.load_split(config.dataset, "train")
  test_split = data.load_split(config.dataset, "test")
  val_split = data.load_split(config.dataset, "validation") if config.dataset.validation_fraction else None
  num_classes = train_split.num_classes
  steps_per_epoch = train_split.num_examples // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"The training split has {train_split.num_examples} examples, fewer than one batch "
                     f"(config.batch_size={config.batch_size}); lower the batch size.")
  total_steps = steps_per_epoch * config.num_epochs

  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  kind, module_kwargs = model_spec(config, num_classes)
  module = create_model(config, num_classes)
  root_key = jax.random.key(config.seed)
  state = create_train_state(config, module, jax.random.fold_in(root_key, 0), steps_per_epoch, mesh)

  checkpoints = _checkpoint_manager(workdir / "checkpoints", best=False)
  best_checkpoints = _checkpoint_manager(workdir / "best_checkpoints", best=True) if val_split else None
  if checkpoints.latest_step() is not None:
    state = _restore(checkpoints, state, checkpoints.latest_step())
    logging.info("Resumed from step %d in %s.", int(state.step), workdir)
  start_step = int(jax.device_get(state.step))

  train_step = jit_train_step(make_train_step(config, num_classes), mesh)
  eval_step = make_eval_step(config, mesh)
  alpha_at = smoothing_schedule(config)
  lr_at = learning_rate_schedule(config, steps_per_epoch)
  # Small replicated inputs are made by jitted functions: device_put cannot target other processes' devices.
  replicated = functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  step_key = replicated(lambda: jax.random.fold_in(jax.random.key(config.seed), 1))()
  alpha_on_mesh = replicated(alpha_at)
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  max_steps = config.max_steps if config.max_steps > 0 else total_steps

  def save(step, epoch_metrics=None):
    checkpoints.save(step, args=ocp.args.StandardSave(_state_arrays(state)))
    if best_checkpoints is not None and epoch_metrics is not None:
      best_checkpoints.save(step, args=ocp.args.StandardSave(_state_arrays(state)), metrics=epoch_metrics)

  summary, step = {}, start_step
  try:
    for epoch in range(start_step // steps_per_epoch, config.num_epochs):
      if step >= max_steps:
        break
      alpha = alpha_on_mesh(epoch)
      step_metrics = []
      batches = data.batches(train_split, config.batch_size, seed=config.seed, epoch=epoch, shuffle=True,
                             start_batch=step - epoch * steps_per_epoch, drop_remainder=True)
      for batch in batches:
        state, m = train_step(state, parallel.shard_batch(batch, mesh), step_key, alpha)
        step_metrics.append(m)
        step += 1
        progress(step)
        if step >= max_steps:
          break
        if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step % steps_per_epoch:
          save(step)
      if step < (epoch + 1) * steps_per_epoch:
        logging.info("Stopping at step %d (config.max_steps); rerun with the same workdir to resume.", step)
        save(step)
        break
      summary = {"epoch": epoch + 1, "label_smoothing": float(jax.device_get(alpha)),
                 "learning_rate": float(jax.device_get(lr_at(step - 1)))}
      if step_metrics:  # means over the steps of this epoch run by this invocation
        summary.update({f"train_{k}": float(np.mean(v)) for k, v in
                        jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(step_metrics)).items()})
      with progress.timed("eval"):
        summary.update(evaluate(eval_step, state, test_split, config.eval_batch_size, mesh, "test"))
        if val_split is not None:
          summary.update(evaluate(eval_step, state, val_split, config.eval_batch_size, mesh, "val"))
      writer.write_scalars(step, summary)
      save(step, summary)
  except KeyboardInterrupt:
    _save_on_interrupt(checkpoints, state, save)
    raise
  checkpoints.wait_until_finished()
  if step == total_steps:
    _export(workdir / "model", state, kind, module_kwargs)
    if best_checkpoints is not None:
      best_checkpoints.wait_until_finished()
      best = _restore(best_checkpoints, state, best_checkpoints.best_step())
      _export(workdir / "best_model", best, kind, module_kwargs)
  writer.flush()
  return state, summary


# ----------------------------------------------------------------------------------------------- CLI


def main(argv):
  cli.start(argv)
  _, final = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  logging.info("Final metrics: %s", json.dumps(final))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Training configuration (configs/*.py[:variant]).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the exported model.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
