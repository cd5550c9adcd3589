"""Target classifier training: `python -m jaxmia.train --config=configs/faces.py --workdir=runs/faces`.

The loop, checkpoints, export and CLI over `jaxmia.classifier` (model, train state, optimiser, the jitted
train and eval steps); the functions at the top translate a training config into that library's arguments.
One epoch = a deterministic pass over the training split (order = f(seed, epoch)); one step is
`classifier.make_train_step` (augmentation on device, label-smoothing CE, MID / BiDO terms, optax update),
jitted with the state donated. Data parallelism: the global batch is sharded over the `('data',)` mesh and
the state replicated (`jaxmia.parallel`); multi-host runs start through `parallel.initialize_distributed()`.
After every epoch the model is evaluated on the test split (accuracy, top-5, ECE), metrics go to the console
and TensorBoard (clu), and an orbax checkpoint is written; a rerun with the same workdir resumes, mid-epoch
included, and ends with exactly the parameters of an uninterrupted run. The final model is exported with
`convert.save_converted(workdir/'model', ...)` so that the attack loads it with `convert.load_converted`.
"""
import functools
import json
import os
import pathlib
from typing import Callable

from absl import app, flags, logging
import jax
from ml_collections import ConfigDict, config_flags
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxmia import classifier, cli, convert, data, defenses, parallel

# ----------------------------------------------------------------------------------------------- config -> library


def model_spec(config: ConfigDict, num_classes: int) -> tuple[str, dict]:
  """The export kind and `module_kwargs` of the configured model (`classifier.model_spec`)."""
  if config.defense.name not in defenses.DEFENSES:
    raise ValueError(f"config.defense.name must be one of {defenses.DEFENSES}, got {config.defense.name!r}.")
  return classifier.model_spec(
      config.model.arch, num_classes, config.model.builder_kwargs.to_dict(),
      mid_bottleneck_dim=config.defense.mid.bottleneck_dim if config.defense.name == "mid" else None)


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
                       mesh: jax.sharding.Mesh) -> classifier.TrainState:
  """Random or pretrained (`config.init_weights`) initial variables and a fresh Adam state, replicated."""
  variables = classifier.init_variables(module, key, config.image_size)
  if config.init_weights:
    pretrained = classifier.pretrained_variables(config.init_weights, config.model.arch,
                                                 config.model.builder_kwargs.to_dict())
    variables = classifier.merge_pretrained(variables, pretrained,
                                            ("backbone",) if config.defense.name == "mid" else ())
  opt = config.optimizer
  tx = classifier.adam(learning_rate_schedule(config, steps_per_epoch), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                       weight_decay=opt.weight_decay)
  return classifier.create_train_state(module, variables, tx, mesh)


def make_train_step(config: ConfigDict, num_classes: int) -> Callable:
  """`classifier.make_train_step` with the configured augmentation, auxiliary loss and defense."""
  defense = config.defense
  return classifier.make_train_step(
      num_classes, augment_kwargs=config.augment.to_dict(), aux_loss_weight=config.model.aux_loss_weight,
      defense=defense.name, mid_beta=defense.mid.beta,
      bido_kwargs=dict(lambda_x=defense.bido.lambda_x, lambda_y=defense.bido.lambda_y, sigma=defense.bido.sigma))


# ----------------------------------------------------------------------------------------------- loop


def _checkpoint_manager(directory: pathlib.Path, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, create=True,
      best_fn=(lambda m: m["val_accuracy"]) if best else None, best_mode="max")
  return ocp.CheckpointManager(directory.absolute(), options=options)


def _state_arrays(state: classifier.TrainState) -> dict:
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}


def _restore(manager: ocp.CheckpointManager, state: classifier.TrainState, step: int) -> classifier.TrainState:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_arrays(state))
  restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return state.replace(**restored)


def _export(path: pathlib.Path, state: classifier.TrainState, kind: str, module_kwargs: dict) -> None:
  """Writes the model where `convert.load_converted` finds it (every process takes part)."""
  variables = jax.device_get(classifier.model_variables(state))
  convert.save_converted(path, variables, kind=kind, module_kwargs=module_kwargs, overwrite=True)


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


def train_and_evaluate(config: ConfigDict, workdir: str | os.PathLike,
                       mesh: jax.sharding.Mesh | None = None) -> tuple[classifier.TrainState, dict]:
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

  train_step = classifier.jit_train_step(make_train_step(config, num_classes), mesh)
  eval_step = classifier.make_eval_step(module.apply, config.image_size, mesh)
  alpha_at = classifier.smoothing_schedule(config.label_smoothing, config.num_epochs, config.ls_schedule)
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
