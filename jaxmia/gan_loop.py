"""The training loop every GAN program shares (`jaxmia.gan`, `jaxmia.gan_gmi`, `jaxmia.gan_kedmi`).

A program validates its config, loads its data (and whatever else it trains against) and hands `run` a
`Program`: the pieces that differ between the GANs (state creation, the compiled step, the sampler, the export,
the fingerprint, the pacing). `run` does the rest the same way for all of them: the run record check, the orbax
resume, the data order (`data.batches`, a pure function of (seed, epoch)), sample grids, scalars, progress with
ETA, `config.max_steps` and the export at the end, so in every program a resumed run equals an uninterrupted one.

Also here: the config rules, fingerprint and workdir layout the programs have in common, and their CLI.
"""
import dataclasses
import math
import pathlib
import time
from typing import Any, Callable

from absl import flags, logging
import jax
from ml_collections import FrozenConfigDict, config_flags
import numpy as np
import orbax.checkpoint as ocp

from jaxmia import cli, data, files, parallel, progress, train as train_lib, writers
from jaxmia.cli import number, one_of
from jaxmia.generate import image_grid, save_png

# What a started run leaves in its workdir, and everything it writes (deleted by config.overwrite).
STATE = ("checkpoints/*", "generator", "discriminator", "generator.jaxmia-*", "discriminator.jaxmia-*")
OUTPUTS = STATE[1:] + ("checkpoints", "samples", "config.json", "config.json.tmp", "events.out.tfevents.*")
# Left out of the resume fingerprint of a program paced in iterations and epochs: presentation and pacing,
# num_epochs (a longer run continues a shorter one exactly), where the data is, overwrite itself.
NOT_IN_FINGERPRINT = ("num_samples", "sample_every_steps", "checkpoint_every_steps", "log_every_steps",
                      "progress_every_secs", "max_steps", "num_epochs", "overwrite", "dataset.manual_dir",
                      "dataset.data_dir")

positive_int = number(1, integer=True)
# Every GAN config: the seed and the split of public images it trains on.
RUN_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("split", "a split name", lambda v: isinstance(v, str) and v),
)
OPTIMIZER_RULES = (
    ("optimizer.lr", "> 0", number(0, low_open=True)),
    ("optimizer.betas", "a pair of numbers in [0, 1)",
     lambda v: len(v) == 2 and all(number(0, 1, high_open=True)(b) for b in v)),
    ("optimizer.eps", "> 0", number(0, low_open=True)),
)
# The pacing of a program counted in iterations (GMI, KED-MI; StyleGAN2 counts in kimg).
PACING_RULES = (
    ("num_samples", "a positive integer", positive_int),
    ("sample_every_steps", "a positive integer", positive_int),
    ("checkpoint_every_steps", "a positive integer", positive_int),
    ("log_every_steps", "a positive integer", positive_int),
    ("progress_every_secs", "> 0", number(0, low_open=True)),
    ("max_steps", "an integer >= 0 (0: run to the end)", number(0, integer=True)),
    ("overwrite", "True or False", one_of(True, False)),
)


def frozen_fields(config, fields) -> FrozenConfigDict:
  """The hashable part of `config` that a compiled step depends on (`fields`: its `STEP_FIELDS`)."""
  return FrozenConfigDict({field: config[field] for field in fields})


def fingerprint(config, split: data.Split, not_in_fingerprint=NOT_IN_FINGERPRINT) -> dict:
  """What defines a GAN run's result: the config minus `not_in_fingerprint` and the version of its data."""
  return {"config": train_lib.config_without(config, not_in_fingerprint),
          "dataset": {config.split: train_lib.dataset_version(split)}}


def total_steps(config, split: data.Split) -> int:
  """Iterations of `config.num_epochs` passes over `split` (whole batches; a fraction of an epoch rounds up)."""
  return math.ceil(round(float(config.num_epochs) * (split.num_examples // int(config.batch_size)), 6))


def state_arrays(state) -> dict:
  """A flax dataclass state as the dict of arrays a checkpoint holds."""
  return {field: getattr(state, field) for field in state.__dataclass_fields__}


def checkpoint_manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  """The newest two checkpoints are kept (an unreadable newest one leaves the one before it)."""
  return ocp.CheckpointManager(directory.absolute(), options=ocp.CheckpointManagerOptions(
      max_to_keep=train_lib.MAX_TO_KEEP, create=True))


def jit_train_step(step, mesh, num_batches: int = 1, num_replicated: int = 0):
  """`step(state, *batches, *replicated, key)` jitted over the mesh: the batches split over devices, the state
  (donated), the `num_replicated` further arguments and the key replicated."""
  replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(step, in_shardings=(replicated,) + (sharded,) * num_batches + (replicated,) * (num_replicated + 1),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def mean_metrics(pending: list) -> dict:
  """The mean of each metric over the iterations since the last log line, NaNs (skipped phases) left out; a
  metric that was never computed in them is dropped."""
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(pending))
  return {k: float(np.nanmean(v)) for k, v in stacked.items() if np.isfinite(v).any()}


def per_step_scalars(means: dict, step: int, start: int, elapsed: float) -> dict:
  """The scalars logged at `step` by a program paced in iterations: the metric means and seconds per iteration
  (`elapsed` seconds since this call of `run` started at iteration `start`)."""
  return {**means, "sec_per_step": elapsed / max(step - start, 1)}


@dataclasses.dataclass(frozen=True)
class Program:
  """What one GAN program gives `run`: everything in which the GANs differ."""
  name: str                  # the module, e.g. 'jaxmia.gan_gmi' (the run record's program)
  what: str                  # the progress lines' subject, e.g. 'GMI GAN training'
  fingerprint: dict          # what defines the run's result (compared with the workdir's run.json)
  num_steps: int             # iterations of the whole run
  length_field: str          # the config field `num_steps` follows from (named when a checkpoint lies beyond)
  create_state: Callable[[jax.Array], Any]       # key -> fresh state (a flax dataclass with a `step` field)
  train_step: Callable[..., tuple[Any, dict]]    # (state, *sharded uint8 image batches, key) -> (state, metrics)
  sample: Callable[[Any, jax.Array], Any]        # (state, z) -> images in [-1, 1] (the sample grids)
  latent_dim: int            # of the grids' fixed latents
  export: Callable[[Any], Any]                   # state -> (generator folder, discriminator folder), written
  sample_every: int          # iterations between sample grids
  checkpoint_every: int      # iterations between checkpoints
  sample_name: Callable[[int], str] = lambda step: f"fakes_{step:07d}.png"
  scalars: Callable[[dict, int, int, float], dict] = per_step_scalars
  exported: str = "Exported the generator to %s and the discriminator to %s."
  num_streams: int = 1       # independently shuffled passes over the split per iteration, seeds seed + 0, 1, ...
  progress_at_start: bool = True  # rates count from the resumed iteration (False: from the first one finished)


def run(config, workdir: pathlib.Path, mesh, split: data.Split, program: Program):
  """Trains (or resumes) `program` in `workdir` on `split`; exports the networks after the last iteration.

  `config` is validated and `workdir` checked by the caller. Returns the state after the last iteration of this
  call (`config.max_steps` stops early, as if interrupted; a rerun resumes).
  """
  batch_size = int(config.batch_size)
  steps_per_epoch = split.num_examples // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"The {config.split!r} split has {split.num_examples} images, fewer than one batch "
                     f"(config.batch_size={config.batch_size}).")
  num_steps = program.num_steps

  # Everything is checked: now the workdir may change.
  files.check_run_record(workdir, program.fingerprint, program=program.name, state=STATE, outputs=OUTPUTS,
                         overwrite=bool(config.get("overwrite", False)), primary=jax.process_index() == 0)
  train_lib.sync_processes(program.name.replace(".", "_") + "_run_record")
  (workdir / "samples").mkdir(parents=True, exist_ok=True)
  checkpoints = checkpoint_manager(workdir / "checkpoints")
  root_key = jax.random.key(config.seed)
  state = parallel.replicate(program.create_state(jax.random.fold_in(root_key, 0)), mesh)
  restored_step, restored = train_lib.restore_latest_readable(
      checkpoints, jax.tree.map(ocp.utils.to_shape_dtype_struct, state_arrays(state)))
  if restored is not None:
    state = state.replace(**restored)
    logging.info("Resumed from iteration %d in %s.", restored_step, workdir)
  start = int(jax.device_get(state.step))
  if start > num_steps:
    field = program.length_field
    raise ValueError(f"{workdir} holds a checkpoint at iteration {start}, beyond config.{field}={config[field]} "
                     f"({num_steps} iterations); raise {field} or choose a new workdir.")
  if jax.process_index() == 0:
    files.atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
  writer = writers.MetricWriter(workdir, just_logging=jax.process_index() > 0)

  step_key = jax.device_put(jax.random.fold_in(root_key, 1), parallel.replicated(mesh))
  sample_z = jax.random.normal(jax.random.fold_in(root_key, 2), (config.num_samples, program.latent_dim))
  report_progress = progress.Progress(num_steps, unit="steps", what=program.what, writer=writer,
                                      every_secs=config.progress_every_secs)
  if program.progress_at_start:
    report_progress(start)
  stop = min(num_steps, start + config.max_steps) if config.max_steps > 0 else num_steps

  def write_samples(step):
    if jax.process_index() == 0:
      save_png(image_grid(np.asarray(program.sample(state, sample_z))), workdir / "samples" /
               program.sample_name(step))

  if start == 0 and jax.process_index() == 0:
    shown = np.linspace(0, split.num_examples - 1, min(config.num_samples, split.num_examples)).astype(int)
    reals = np.stack([split.source[int(i)]["image"] for i in shown])  # spread over the (class-ordered) split
    save_png(image_grid(reals / 127.5 - 1.0), workdir / "samples" / "reals.png")
    write_samples(0)
  step, pending, started = start, [], time.time()
  while step < stop:
    epoch = step // steps_per_epoch
    offset = step - epoch * steps_per_epoch
    streams = [data.batches(split, batch_size, seed=config.seed + s, epoch=epoch, start_batch=offset)
               for s in range(program.num_streams)]
    for batches in zip(*streams):
      images = [parallel.shard_batch(batch["image"], mesh) for batch in batches]
      state, metrics = program.train_step(state, *images, step_key)
      pending.append(metrics)
      step += 1
      report_progress(step)
      if step % config.log_every_steps == 0 or step == stop:
        writer.write_scalars(step, program.scalars(mean_metrics(pending), step, start, time.time() - started))
        pending = []
      if step % program.sample_every == 0 or step == num_steps:
        write_samples(step)
      if step % program.checkpoint_every == 0 or step == stop:
        checkpoints.save(step, args=ocp.args.StandardSave(state_arrays(state)))
      if step == stop:
        break
  checkpoints.wait_until_finished()
  if step == num_steps:
    logging.info(program.exported, *program.export(state))
  writer.flush()
  return state


def run_cli(main, config_help: str) -> None:
  """`python -m <program> --config=... --workdir=...`: defines the two flags and runs `main`."""
  config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, sample grids and the exported networks.")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
