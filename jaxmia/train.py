"""Target classifier training: `python -m jaxmia.train --config=configs/faces.py --workdir=runs/faces`.

The loop, checkpoints, export and CLI over `jaxmia.classifier` (model, train state, optimiser, the jitted
train and eval steps); the functions at the top translate a training config into that library's arguments.
One epoch = a deterministic pass over the training split (order = f(seed, epoch)); one step is
`classifier.make_train_step` (augmentation on device, label-smoothing CE, MID / BiDO terms, optax update),
jitted with the state donated. Data parallelism: the global batch is sharded over the `('data',)` mesh and
the state replicated (`jaxmia.parallel`); multi-host runs start through `parallel.initialize_distributed()`.
After every epoch the model is evaluated on the test split (accuracy, top-5, ECE), metrics go to the console and
TensorBoard (`jaxmia.writers`, no TensorFlow), and an orbax checkpoint is written (the newest two are kept; an
unreadable newest one is moved aside with a warning and the previous one used); a rerun with the same workdir
resumes, mid-epoch included, and ends with exactly the parameters of an uninterrupted run. The config is validated
(`validate_config`) and the resume fingerprint (`fingerprint`: config minus presentation fields, digest of the
initial weights, dataset version) checked against the workdir's `run.json` before anything is written: a different
run stops with the differing fields, unless `config.overwrite` discards it. The final model is exported with
`model_store.save_model(workdir/'model', ...)` so that the attack loads it with `model_store.load_model`.
"""
import functools
import hashlib
import json
import os
import pathlib
from typing import Callable

from absl import flags, logging
import jax
from jax.experimental import multihost_utils
from ml_collections import ConfigDict, config_flags
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxmia import classifier, cli, data, defenses, files, model_store, models, parallel, progress, writers
from jaxmia.cli import interval, number, one_of

# ----------------------------------------------------------------------------------------------- config checks

_SCHEDULES = ("ppa", "proportional", "smooth", "constant")


def _integers(low):
  return lambda values: all(number(low, integer=True)(v) for v in values)


CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("image_size", "a positive integer", number(1, integer=True)),
    ("label_smoothing", classifier.LABEL_SMOOTHING_RULE, number(high=1)),
    ("ls_schedule", f"one of {_SCHEDULES}", one_of(*_SCHEDULES)),
    ("num_epochs", "a positive integer", number(1, integer=True)),
    ("batch_size", "a positive integer", number(1, integer=True)),
    ("eval_batch_size", "a positive integer", number(1, integer=True)),
    ("max_steps", "an integer (<= 0: train to the end)", number(integer=True)),
    ("checkpoint_every_steps", "an integer >= 0 (0: only at the end of each epoch)", number(0, integer=True)),
    ("overwrite", "True or False", one_of(True, False)),
    ("init_weights", "a path or ''", lambda v: isinstance(v, str)),
    ("model.arch", f"one of {models.ARCHITECTURES}", one_of(*models.ARCHITECTURES)),
    ("model.dtype", f"one of {classifier.COMPUTE_DTYPES}", one_of(*classifier.COMPUTE_DTYPES)),
    ("model.aux_loss_weight", ">= 0", number(0)),
    ("defense.name", f"one of {defenses.DEFENSES}", one_of(*defenses.DEFENSES)),
    ("defense.mid.bottleneck_dim", "a positive integer", number(1, integer=True)),
    ("defense.mid.beta", ">= 0", number(0)),
    ("defense.bido.lambda_x", ">= 0", number(0)),
    ("defense.bido.lambda_y", ">= 0", number(0)),
    ("defense.bido.sigma", "> 0", number(0, low_open=True)),
    ("defense.calor.rank", "a positive integer", number(1, integer=True)),
    ("defense.calor.activation", f"one of {tuple(defenses.calor.ACTIVATIONS)}", one_of(*defenses.calor.ACTIVATIONS)),
    ("defense.calor.gamma", "> 0", number(0, low_open=True)),
    ("defense.calor.scale", "> 0", number(0, low_open=True)),
    ("defense.calor.finetune_epochs", "an integer >= 0", number(0, integer=True)),
    ("optimizer.learning_rate", "> 0", number(0, low_open=True)),
    ("optimizer.b1", "in [0, 1)", number(0, 1, high_open=True)),
    ("optimizer.b2", "in [0, 1)", number(0, 1, high_open=True)),
    ("optimizer.eps", "> 0", number(0, low_open=True)),
    ("optimizer.weight_decay", ">= 0", number(0)),
    ("optimizer.lr_decay", "> 0", number(0, low_open=True)),
    ("optimizer.lr_decay_epochs", "a list of epochs (integers >= 0)", _integers(0)),
    ("augment.crop_scale", "a pair (a, b) with 0 < a <= b <= 1", interval(0, 1)),
    ("augment.crop_ratio", "a pair (a, b) with 0 < a <= b", interval(0, None)),
    ("augment.brightness", ">= 0", number(0)),
    ("augment.contrast", ">= 0", number(0)),
    ("augment.saturation", ">= 0", number(0)),
    ("augment.hue", "in [0, 0.5]", number(0, 0.5)),
    ("augment.flip", "True or False", one_of(True, False)),
    ("dataset.validation_fraction", "in [0, 1)", number(0, 1, high_open=True)),
    ("dataset.test_fraction", "in (0, 1)", number(0, 1, low_open=True, high_open=True)),
    ("dataset.samples_per_class", "None or a positive integer", lambda v: v is None or number(1, integer=True)(v)),
)


def validate_config(config: ConfigDict) -> None:
  """Every range-limited field of a training config (`CONFIG_RULES`), checked before any work: one
  `ValueError` listing all that are out of range. `label_smoothing`: `classifier.LABEL_SMOOTHING_RULE` (α <= 1)."""
  cli.check_config(config, CONFIG_RULES)


# ----------------------------------------------------------------------------------------------- resume record

# Config fields left out of the resume fingerprint: how a run is paced and shown (max_steps, extra checkpoints),
# where things are (the dataset folders; init_weights is represented by the digest of its content), and
# overwrite itself. Everything else decides the trained model.
NOT_IN_FINGERPRINT = ("max_steps", "checkpoint_every_steps", "overwrite", "init_weights", "dataset.manual_dir",
                      "dataset.data_dir")
# What a started run leaves in its workdir, and everything it writes (deleted by config.overwrite).
_STATE = ("checkpoints/*", "best_checkpoints/*", "model", "best_model", "model.jaxmia-*", "best_model.jaxmia-*")
_OUTPUTS = ("checkpoints", "best_checkpoints", "model", "best_model", "model.jaxmia-*", "best_model.jaxmia-*",
            "config.json", "config.json.tmp", "events.out.tfevents.*")


def config_without(config: ConfigDict, fields) -> dict:
  """`config` as JSON values without the dotted `fields`."""
  values = json.loads(config.to_json_best_effort())
  for field in fields:
    *parents, leaf = field.split(".")
    node = values
    for parent in parents:
      node = node.get(parent) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.pop(leaf, None)
  return values


def dataset_version(split: data.Split) -> str:
  """The prepared dataset a split reads (TFDS name/config/version) and a digest of the examples it selects."""
  info = getattr(split.source.records, "dataset_info", None)
  name = getattr(info, "full_name", None) or "unknown dataset"
  labels = hashlib.sha256(np.ascontiguousarray(split.labels, np.int32).tobytes()).hexdigest()[:16]
  return f"{name}: {split.num_examples} examples, labels sha256 {labels}"


def fingerprint(config: ConfigDict, splits: dict, init_weights_digest: str | None) -> dict:
  """What defines a training run's result: the config minus `NOT_IN_FINGERPRINT`, the content digest of the
  initial weights (`files.tree_digest`) and the version of each dataset split."""
  # defense.calor.finetune_epochs came after runs were recorded and decides nothing unless CALoR is selected:
  # left out of the other runs' records, so they still resume.
  unused = () if config.defense.name == "calor" else ("defense.calor.finetune_epochs",)
  return {"config": config_without(config, NOT_IN_FINGERPRINT + unused),
          "weights": {"init_weights": init_weights_digest},
          "dataset": {name: dataset_version(split) for name, split in splits.items()}}


def _previous_config(workdir: pathlib.Path) -> dict | None:
  """The config.json of a workdir written by an older jaxmia (compared when it has no resume record)."""
  try:
    return json.loads((workdir / "config.json").read_text())
  except (OSError, ValueError):
    return None


def sync_processes(name: str) -> None:
  """A barrier of all processes of a multi-process run (nothing in a single-process one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------------------- config -> library


def model_spec(config: ConfigDict, num_classes: int) -> tuple[str, dict]:
  """The export kind and `module_kwargs` of the configured model (`classifier.model_spec`)."""
  if config.defense.name not in defenses.DEFENSES:
    raise ValueError(f"config.defense.name must be one of {defenses.DEFENSES}, got {config.defense.name!r}.")
  calor = config.defense.get("calor") if config.defense.name == "calor" else None
  return classifier.model_spec(
      config.model.arch, num_classes, config.model.builder_kwargs.to_dict(),
      mid_bottleneck_dim=config.defense.mid.bottleneck_dim if config.defense.name == "mid" else None,
      calor_rank=calor.rank if calor else None, calor_activation=calor.activation if calor else "tanh")


def create_model(config: ConfigDict, num_classes: int):
  """The Flax module to train, in the configured compute dtype."""
  kind, module_kwargs = model_spec(config, num_classes)
  if config.model.dtype not in classifier.COMPUTE_DTYPES:
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}.")
  return classifier.create_model(kind, module_kwargs, dtype=config.model.dtype)


def learning_rate_schedule(config: ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """`config.optimizer.learning_rate`, times `lr_decay` at each epoch in `lr_decay_epochs`."""
  opt = config.optimizer
  return classifier.step_decay_schedule(opt.learning_rate, opt.lr_decay, opt.lr_decay_epochs, steps_per_epoch)


def create_train_state(config: ConfigDict, module, key: jax.Array, steps_per_epoch: int,
                       mesh: jax.sharding.Mesh, pretrained: dict | None = None) -> classifier.TrainState:
  """Random or pretrained (`config.init_weights`) initial variables and a fresh Adam state, replicated.

  `pretrained`: the variables of `config.init_weights` if already loaded (`classifier.pretrained_variables`).
  """
  variables = classifier.init_variables(module, key, config.image_size)
  if config.init_weights:
    if pretrained is None:
      pretrained = classifier.pretrained_variables(config.init_weights, config.model.arch,
                                                   config.model.builder_kwargs.to_dict())
    variables = classifier.merge_pretrained(variables, pretrained,
                                            ("backbone",) if config.defense.name in ("mid", "calor") else ())
  opt = config.optimizer
  tx = classifier.adam(learning_rate_schedule(config, steps_per_epoch), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                       weight_decay=opt.weight_decay)
  return classifier.create_train_state(module, variables, tx, mesh)


def calor_start_step(config: ConfigDict, steps_per_epoch: int) -> int:
  """First step of CALoR's confidence adaptation phase: the last `defense.calor.finetune_epochs` epochs of
  `num_epochs` (all of them when it is >= num_epochs); the steps before it train with cross-entropy."""
  finetune_epochs = config.defense.calor.get("finetune_epochs", config.num_epochs)
  return max(config.num_epochs - finetune_epochs, 0) * steps_per_epoch


def make_train_step(config: ConfigDict, num_classes: int, steps_per_epoch: int | None = None) -> Callable:
  """`classifier.make_train_step` with the configured augmentation, auxiliary loss and defense.

  `steps_per_epoch` places CALoR's confidence adaptation phase (`calor_start_step`); needed for CALoR only.
  """
  defense = config.defense
  start = 0
  if defense.name == "calor":
    if steps_per_epoch is None:
      raise ValueError("CALoR's confidence adaptation phase starts at an epoch: pass steps_per_epoch.")
    start = calor_start_step(config, steps_per_epoch)
  return classifier.make_train_step(
      num_classes, augment_kwargs=config.augment.to_dict(), aux_loss_weight=config.model.aux_loss_weight,
      defense=defense.name, mid_beta=defense.mid.beta,
      bido_kwargs=dict(lambda_x=defense.bido.lambda_x, lambda_y=defense.bido.lambda_y, sigma=defense.bido.sigma),
      calor_kwargs=(dict(gamma=defense.calor.gamma, scale=defense.calor.scale) if defense.name == "calor" else None),
      calor_start_step=start)


# ----------------------------------------------------------------------------------------------- loop


# Checkpoints kept: the newest two, so that an unreadable newest one leaves the one before it.
MAX_TO_KEEP = 2


def _checkpoint_manager(directory: pathlib.Path, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=MAX_TO_KEEP, create=True,
      best_fn=(lambda m: m["val_accuracy"]) if best else None, best_mode="max")
  return ocp.CheckpointManager(directory.absolute(), options=options)


def _state_arrays(state: classifier.TrainState) -> dict:
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}


def restore_latest_readable(manager: ocp.CheckpointManager, abstract) -> tuple[int | None, dict | None]:
  """`(step, arrays)` of the newest checkpoint of `manager` that restores into `abstract`, or `(None, None)`.

  A checkpoint that does not read (truncated or corrupt files) is moved aside to `<step>.unreadable` (kept for
  inspection; orbax ignores it) with a warning naming it, and the one before it is tried.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # any failure: orbax and TensorStore report damaged files with several types
      path = pathlib.Path(os.fspath(manager.directory)) / str(step)
      aside, n = path.with_name(f"{step}.unreadable"), 1
      while aside.exists():
        aside, n = path.with_name(f"{step}.unreadable{n}"), n + 1
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      logging.warning("Checkpoint %s is unreadable (%s: %s); moved it to %s and trying the previous one.", path,
                      type(e).__name__, reason, aside.name)
      if jax.process_index() == 0 and path.exists():
        path.rename(aside)
      sync_processes(f"jaxmia_unreadable_checkpoint_{step}")
      manager.reload()
  return None, None


def _restore(manager: ocp.CheckpointManager, state: classifier.TrainState, step: int) -> classifier.TrainState:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_arrays(state))
  restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return state.replace(**restored)


def _export(path: pathlib.Path, state: classifier.TrainState, kind: str, module_kwargs: dict) -> None:
  """Writes the model where `model_store.load_model` finds it (every process takes part)."""
  variables = jax.device_get(classifier.model_variables(state))
  model_store.save_model(path, variables, kind=kind, module_kwargs=module_kwargs, overwrite=True)


def _save_on_interrupt(manager: ocp.CheckpointManager, state: classifier.TrainState,
                       save: Callable[[int], None]) -> None:
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


def train_and_evaluate(config: ConfigDict, workdir: str | os.PathLike, mesh: jax.sharding.Mesh | None = None,
                       splits: dict | None = None) -> tuple[classifier.TrainState, dict]:
  """Trains (or resumes) the configured classifier in `workdir`; returns the final state and metrics.

  `mesh` defaults to all devices of all processes (`parallel.make_mesh()`). `splits`: `{'train': Split, 'test':
  Split[, 'validation': Split]}` to train and evaluate on instead of `config.dataset`'s splits (e.g. the shadow
  models of `jaxmia.membership`, trained on subsets of the public split); they enter the resume fingerprint.
  """
  validate_config(config)
  workdir = files.check_workdir(workdir)
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval batch size")
  if splits is not None:
    train_split, test_split, val_split = splits["train"], splits["test"], splits.get("validation")
  else:
    train_split = data.load_split(config.dataset, "train")
    test_split = data.load_split(config.dataset, "test")
    val_split = data.load_split(config.dataset, "validation") if config.dataset.validation_fraction else None
  num_classes = train_split.num_classes
  steps_per_epoch = train_split.num_examples // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"The training split has {train_split.num_examples} examples, fewer than one batch "
                     f"(config.batch_size={config.batch_size}); lower the batch size.")
  total_steps = steps_per_epoch * config.num_epochs
  kind, module_kwargs = model_spec(config, num_classes)
  module = create_model(config, num_classes)
  pretrained = (classifier.pretrained_variables(config.init_weights, config.model.arch,
                                                config.model.builder_kwargs.to_dict())
                if config.init_weights else None)
  splits = {"train": train_split, "test": test_split, **({"validation": val_split} if val_split else {})}
  record = fingerprint(config, splits, files.tree_digest(pretrained) if pretrained is not None else None)
  root_key = jax.random.key(config.seed)
  state = create_train_state(config, module, jax.random.fold_in(root_key, 0), steps_per_epoch, mesh, pretrained)
  train_step = classifier.jit_train_step(make_train_step(config, num_classes, steps_per_epoch), mesh)
  alpha_at = classifier.smoothing_schedule(config.label_smoothing, config.num_epochs, config.ls_schedule)

  # Everything is checked: now the workdir may change.
  files.check_run_record(workdir, record, program="jaxmia.train", state=_STATE, outputs=_OUTPUTS,
                         overwrite=bool(config.get("overwrite", False)), legacy=_previous_config(workdir),
                         primary=jax.process_index() == 0)
  sync_processes("jaxmia_train_run_record")
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    files.atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
  writer = writers.MetricWriter(workdir, just_logging=jax.process_index() > 0)

  checkpoints = _checkpoint_manager(workdir / "checkpoints", best=False)
  best_checkpoints = _checkpoint_manager(workdir / "best_checkpoints", best=True) if val_split else None
  restored_step, restored = restore_latest_readable(
      checkpoints, jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_arrays(state)))
  if restored is not None:
    state = state.replace(**restored)
    logging.info("Resumed from step %d in %s.", restored_step, workdir)
  elif checkpoints.all_steps() or any((workdir / "checkpoints").glob("*.unreadable*")):
    logging.warning("No readable checkpoint in %s: training starts again from step 0.", workdir / "checkpoints")
  start_step = int(jax.device_get(state.step))

  eval_step = classifier.make_eval_step(module.apply, config.image_size, mesh)
  lr_at = learning_rate_schedule(config, steps_per_epoch)
  # Small replicated inputs are made by jitted functions: device_put cannot target other processes' devices.
  replicated = functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  step_key = replicated(lambda: jax.random.fold_in(jax.random.key(config.seed), 1))()
  alpha_on_mesh = replicated(alpha_at)
  report_progress = progress.Progress(total_steps, unit="steps", what="Training", writer=writer)
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
        report_progress(step)
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
      with report_progress.timed("eval"):
        variables = classifier.model_variables(state)
        summary.update(classifier.evaluate_split(eval_step, variables, test_split, config.eval_batch_size, mesh,
                                                 "test"))
        if val_split is not None:
          summary.update(classifier.evaluate_split(eval_step, variables, val_split, config.eval_batch_size, mesh,
                                                   "val"))
      writer.write_scalars(step, summary)
      save(step, summary)
  except KeyboardInterrupt:
    _save_on_interrupt(checkpoints, state, save)
    raise
  checkpoints.wait_until_finished()
  if step == total_steps:
    if best_checkpoints is not None:
      best_checkpoints.wait_until_finished()
      best = _restore(best_checkpoints, state, best_checkpoints.best_step())
      _export(workdir / "best_model", best, kind, module_kwargs)
    # Last: a complete `model` marks a finished run (`chain` skips its training).
    _export(workdir / "model", state, kind, module_kwargs)
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
  cli.run(main)
