"""KED-MI's inversion-specific GAN: `python -m jaxmia.gan_kedmi --config=configs/gan_kedmi_numbers.py --workdir=...`.

The "improved" (K+1)-class GAN of Chen et al. (ICCV 2021; `k+1_gan.py` of SCccc21/Knowledge-Enriched-DMI): GMI's
generator (`jaxmia.models.dcgan.Generator`) against `MinibatchDiscriminator`
(`jaxmia.models.kedmi_discriminator`), a discriminator that also classifies public images into the target's K
classes, taught by the target's soft labels, so that the generator distils what the target knows about its
classes from public data. One iteration draws three batches of public images (labelled, unlabelled 1 and 2: three
independently shuffled passes over the same public split, as the official three loaders) and latents
`z ~ N(0, I)`:

  D step (every iteration), `discriminator_loss`:
      supervised    soft cross-entropy of D's logits on the labelled batch against `softmax(target logits)`
                    (the target sees the same images, resized to its input size)
      unsupervised  `0.5 * (mean softplus(lse(u)) - mean lse(u) + mean softplus(lse(f)))`, `lse` the
                    log-sum-exp of D's logits of unlabelled batch 1 (u) and of fakes (f): the improved-GAN
                    real/fake loss with the fake class's logit fixed at 0
  G step (every `n_critic` iterations, the official 5th, 10th, ...), `generator_loss`:
      feature matching  `mean |mean_batch D_features(G(z)) - mean_batch D_features(u2)|` on unlabelled batch 2
      entropy           `entropy_weight * sum over the batch of H(softmax(D logits of G(z)))` (official 1e-4;
                        minimising it makes each fake confidently one of the K classes)

Both networks train with Adam (official lr 2e-4, betas (0.5, 0.999)); the generator's BatchNorm runs in
training mode in both steps (its running statistics move in both, as in the official code, where the D step
calls `G(z)` in training mode too). D scores each of its three batches as one minibatch (minibatch
discrimination couples the samples of a batch), the whole global batch across devices.

Structure as `jaxmia.gan`: `make_train_step(config)` returns the pure `(state, images, key) -> (state, metrics)`
that `compiled_train_step` jits over the `('data',)` mesh (batches split over devices, state replicated, donated).
Iteration i uses `fold_in(fold_in(key(seed), 1), i)`; the three data streams are `data.batches` with seeds `seed`,
`seed + 1`, `seed + 2` (pure functions of (seed, epoch)), so a run resumed from its orbax checkpoint equals an
uninterrupted one. Before anything is written the config is validated and its resume fingerprint (the config
without presentation fields, the data's version and the target's weights digest) compared with `run.json`. The
workdir receives TensorBoard scalars, sample grids (`samples/fakes_<step>.png` from fixed latents,
`samples/reals.png`), checkpoints and, at the end, `discriminator/` (kind `kedmi_discriminator`) and then
`generator/` (GMI's generator kind), both loadable with `model_store.load_model`.

Public images whose side differs from the generator's `image_size` are resized (antialiased) on the devices.
"""
import functools
import math
import pathlib
import time
from typing import Any

from absl import flags, logging
import flax
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict, FrozenConfigDict, config_flags
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxmia import cli, data, files, model_store, parallel, progress, train as train_lib, writers
from jaxmia.cli import number, one_of
from jaxmia.data import image_ops
from jaxmia.gan_gmi import to_float_images  # uint8 -> [-1, 1] at the generator's side (GMI's trainer)
from jaxmia.generate import image_grid, save_png
from jaxmia.models import dcgan
from jaxmia.models.kedmi_discriminator import MinibatchDiscriminator, realness_logit

GENERATOR_KIND = "dcgan_generator"
DISCRIMINATOR_KIND = "kedmi_discriminator"


@flax.struct.dataclass
class KedmiGanState:
  """Everything a training run carries from one iteration to the next (all arrays)."""
  step: jax.Array          # finished iterations, int32 []
  g_params: Any
  g_batch_stats: Any       # the generator's BatchNorm running statistics
  g_opt_state: Any
  d_params: Any
  d_opt_state: Any


# ----------------------------------------------------------------------------------------------- losses


def soft_cross_entropy(logits, target_logits):
  """Mean over the batch of `-sum_k softmax(target_logits)_k log_softmax(logits)_k`; both `[B, K]`."""
  target = jax.nn.softmax(target_logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1))


def discriminator_loss(labelled_logits, target_logits, unlabelled_logits, fake_logits):
  """KED-MI's D loss `(total, supervised, unsupervised)` from D's logits `[B, K]` of a labelled, an unlabelled and
  a generated batch and the target's logits `[B, K]` of the labelled batch."""
  supervised = soft_cross_entropy(labelled_logits, target_logits)
  real, fake = realness_logit(unlabelled_logits), realness_logit(fake_logits)
  unsupervised = 0.5 * (jnp.mean(jax.nn.softplus(real)) - jnp.mean(real) + jnp.mean(jax.nn.softplus(fake)))
  return supervised + unsupervised, supervised, unsupervised


def entropy(logits):
  """`sum over the batch of -sum_k p_k log p_k`, `p = softmax(logits [B, K])` (the official HLoss: a sum)."""
  logits = logits.astype(jnp.float32)
  return -jnp.sum(jax.nn.softmax(logits, axis=-1) * jax.nn.log_softmax(logits, axis=-1))


def feature_matching(fake_features, real_features):
  """`mean_d |mean_b fake_features - mean_b real_features|` of two `[B, D]` feature batches."""
  return jnp.mean(jnp.abs(jnp.mean(fake_features.astype(jnp.float32), axis=0)
                          - jnp.mean(real_features.astype(jnp.float32), axis=0)))


def generator_loss(fake_features, unlabelled_features, fake_logits, entropy_weight: float):
  """KED-MI's G loss `(total, feature matching, entropy)`: feature matching against an unlabelled batch plus
  `entropy_weight` times the summed entropy of D's class predictions on the fakes."""
  matching, h = feature_matching(fake_features, unlabelled_features), entropy(fake_logits)
  return matching + entropy_weight * h, matching, h


# ----------------------------------------------------------------------------------------------- networks


def generator_kwargs(config: ConfigDict) -> dict:
  g = config.generator
  return dict(latent_dim=int(g.latent_dim), dim=int(g.dim), image_size=int(config.image_size), channels=3)


def discriminator_kwargs(config: ConfigDict, num_classes: int) -> dict:
  d = config.discriminator
  return dict(num_classes=int(num_classes), dim=int(d.dim), minibatch_kernels=int(d.minibatch_kernels),
              minibatch_kernel_dim=int(d.minibatch_kernel_dim))


def create_networks(config, num_classes: int):
  """(Generator, MinibatchDiscriminator) with the configured compute dtype."""
  dtype = jnp.dtype(config.compute_dtype)
  return (dcgan.Generator(**generator_kwargs(config), dtype=dtype),
          MinibatchDiscriminator(**discriminator_kwargs(config, num_classes), dtype=dtype))


def optimizer(config) -> optax.GradientTransformation:
  b1, b2 = config.optimizer.betas
  return optax.adam(config.optimizer.lr, b1=b1, b2=b2, eps=config.optimizer.eps)


@functools.lru_cache(maxsize=4)
def _compiled_init(config: FrozenConfigDict, num_classes: int):
  generator, discriminator = create_networks(config, num_classes)
  opt = optimizer(config)
  size = int(config.image_size)

  @jax.jit
  def init(key):
    g_key, d_key = jax.random.split(key)
    g_vars = generator.init(g_key, jnp.zeros((1, generator.latent_dim)))
    d_vars = discriminator.init(d_key, jnp.zeros((2, size, size, 3)))
    return KedmiGanState(step=jnp.zeros((), jnp.int32), g_params=g_vars["params"],
                         g_batch_stats=g_vars["batch_stats"], g_opt_state=opt.init(g_vars["params"]),
                         d_params=d_vars["params"], d_opt_state=opt.init(d_vars["params"]))

  return init


def create_state(config, num_classes: int, key) -> KedmiGanState:
  """Freshly initialised networks (PyTorch's default initialisers, as the official code) and Adam states."""
  return _compiled_init(step_config(config), int(num_classes))(key)


# ----------------------------------------------------------------------------------------------- the step


def make_train_step(config, num_classes: int, target_model, target_resize: int):
  """The pure `(state, labelled, unlabelled, unlabelled2, target_variables, key) -> (state, metrics)`.

  The three image batches are float32 `[B, R, R, 3]` in [-1, 1] at the generator's resolution R; the target
  sees `labelled` resized to `target_resize`. The G step runs inside `lax.cond` on `state.step`, so every
  iteration has the same compiled program.
  """
  generator, discriminator = create_networks(config, num_classes)
  opt = optimizer(config)
  batch, latent, n_critic = int(config.batch_size), generator.latent_dim, int(config.n_critic)
  entropy_weight = float(config.entropy_weight)

  def generate(g_params, batch_stats, z):
    images, updates = generator.apply({"params": g_params, "batch_stats": batch_stats}, z, train=True,
                                      mutable=["batch_stats"])
    return images, updates["batch_stats"]

  def d_loss_fn(d_params, fakes, labelled, unlabelled, target_logits):
    logits = lambda x: discriminator.apply({"params": d_params}, x)[1]
    labelled_logits = logits(labelled)
    total, supervised, unsupervised = discriminator_loss(labelled_logits, target_logits, logits(unlabelled),
                                                         logits(fakes))
    # How often D's class (before this step's update) is the target's, on the labelled batch (official `acc`).
    accuracy = jnp.mean(jnp.argmax(labelled_logits, -1) == jnp.argmax(target_logits, -1))
    return total, {"loss_d": total, "loss_d_supervised": supervised, "loss_d_unsupervised": unsupervised,
                   "d_accuracy": accuracy}

  def g_loss_fn(g_params, batch_stats, d_params, z, unlabelled2):
    fakes, batch_stats = generate(g_params, batch_stats, z)
    fake_features, fake_logits = discriminator.apply({"params": d_params}, fakes)
    real_features, _ = discriminator.apply({"params": d_params}, unlabelled2)
    total, matching, h = generator_loss(fake_features, real_features, fake_logits, entropy_weight)
    return total, (batch_stats, {"loss_g": total, "feature_matching": matching, "entropy": h})

  def update(grads, opt_state, params):
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def train_step(state: KedmiGanState, labelled, unlabelled, unlabelled2, target_variables, key):
    key = jax.random.fold_in(key, state.step)
    d_key, g_key = jax.random.split(key)
    target_input = image_ops.resize(labelled, target_resize, antialias=True)
    target_logits = jax.lax.stop_gradient(target_model.apply(target_variables, target_input).astype(jnp.float32))
    fakes, batch_stats = generate(state.g_params, state.g_batch_stats, jax.random.normal(d_key, (batch, latent)))
    grads, metrics = jax.grad(d_loss_fn, has_aux=True)(state.d_params, jax.lax.stop_gradient(fakes), labelled,
                                                       unlabelled, target_logits)
    d_params, d_opt_state = update(grads, state.d_opt_state, state.d_params)
    state = state.replace(d_params=d_params, d_opt_state=d_opt_state, g_batch_stats=batch_stats)

    def g_step(state):
      z = jax.random.normal(g_key, (batch, latent))
      grads, (stats, g_metrics) = jax.grad(g_loss_fn, has_aux=True)(state.g_params, state.g_batch_stats,
                                                                    state.d_params, z, unlabelled2)
      g_params, g_opt_state = update(grads, state.g_opt_state, state.g_params)
      return state.replace(g_params=g_params, g_opt_state=g_opt_state, g_batch_stats=stats), g_metrics

    nan = jnp.float32(jnp.nan)
    state, g_metrics = jax.lax.cond((state.step + 1) % n_critic == 0, g_step,
                                    lambda s: (s, {"loss_g": nan, "feature_matching": nan, "entropy": nan}), state)
    return state.replace(step=state.step + 1), {**metrics, **g_metrics}

  return train_step


# Config fields that decide what one iteration computes (besides the seed, the data and the target).
STEP_FIELDS = ("image_size", "generator", "discriminator", "batch_size", "optimizer", "n_critic", "entropy_weight",
               "compute_dtype", "target_resize")
# Left out of the resume fingerprint: presentation and pacing, where things are, overwrite itself.
NOT_IN_FINGERPRINT = ("num_samples", "sample_every_steps", "checkpoint_every_steps", "log_every_steps",
                      "progress_every_secs", "max_steps", "num_epochs", "overwrite", "dataset.manual_dir",
                      "dataset.data_dir", "target")
_STATE = ("checkpoints/*", "generator", "discriminator", "generator.jaxmia-*", "discriminator.jaxmia-*")
_OUTPUTS = _STATE[1:] + ("checkpoints", "samples", "config.json", "config.json.tmp", "events.out.tfevents.*")
_positive_int = number(1, integer=True)

CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("split", "a split name", lambda v: isinstance(v, str) and v),
    ("image_size", "a multiple of 16", lambda v: _positive_int(v) and v % 16 == 0),
    ("target_resize", "a positive integer", _positive_int),
    ("generator.latent_dim", "a positive integer", _positive_int),
    ("generator.dim", "a positive integer", _positive_int),
    ("discriminator.dim", "a positive integer", _positive_int),
    ("discriminator.minibatch_kernels", "a positive integer", _positive_int),
    ("discriminator.minibatch_kernel_dim", "a positive integer", _positive_int),
    ("batch_size", "an integer >= 2", number(2, integer=True)),
    ("num_epochs", "> 0", number(0, low_open=True)),
    ("optimizer.lr", "> 0", number(0, low_open=True)),
    ("optimizer.betas", "a pair of numbers in [0, 1)",
     lambda v: len(v) == 2 and all(number(0, 1, high_open=True)(b) for b in v)),
    ("optimizer.eps", "> 0", number(0, low_open=True)),
    ("n_critic", "a positive integer", _positive_int),
    ("entropy_weight", ">= 0", number(0)),
    ("compute_dtype", "'float32' or 'bfloat16'", one_of("float32", "bfloat16")),
    ("num_samples", "a positive integer", _positive_int),
    ("sample_every_steps", "a positive integer", _positive_int),
    ("checkpoint_every_steps", "a positive integer", _positive_int),
    ("log_every_steps", "a positive integer", _positive_int),
    ("progress_every_secs", "> 0", number(0, low_open=True)),
    ("max_steps", "an integer >= 0 (0: run to the end)", number(0, integer=True)),
    ("overwrite", "True or False", one_of(True, False)),
)


def step_config(config) -> FrozenConfigDict:
  """The hashable part of `config` that the compiled step depends on."""
  return FrozenConfigDict({field: config[field] for field in STEP_FIELDS})


@functools.lru_cache(maxsize=4)
def compiled_train_step(config: FrozenConfigDict, num_classes: int, target_model, mesh):
  """The train step on uint8 batches, jitted over the mesh (batches split, state replicated and donated)."""
  train_step = make_train_step(config, num_classes, target_model, int(config.target_resize))
  replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  size = int(config.image_size)

  def step(state, labelled, unlabelled, unlabelled2, target_variables, key):
    convert = functools.partial(to_float_images, size=size)
    return train_step(state, convert(labelled), convert(unlabelled), convert(unlabelled2), target_variables, key)

  return jax.jit(step, in_shardings=(replicated, sharded, sharded, sharded, replicated, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


@functools.lru_cache(maxsize=4)
def compiled_sampler(config: FrozenConfigDict, num_classes: int):
  """`(G variables, z) -> images` with BatchNorm's running statistics (what the attack renders)."""
  generator, _ = create_networks(config, num_classes)
  return jax.jit(lambda variables, z: generator.apply(variables, z))


def generator_variables(state: KedmiGanState) -> dict:
  return {"params": state.g_params, "batch_stats": state.g_batch_stats}


def export(state: KedmiGanState, config, num_classes: int, workdir: pathlib.Path):
  """Writes `workdir/discriminator` and then `workdir/generator` (a complete generator marks a finished run)."""
  host = jax.device_get(state)
  model_store.save_model(workdir / "discriminator", {"params": host.d_params}, kind=DISCRIMINATOR_KIND,
                         module_kwargs=discriminator_kwargs(config, num_classes), overwrite=True)
  model_store.save_model(workdir / "generator", generator_variables(host), kind=GENERATOR_KIND,
                         module_kwargs=generator_kwargs(config), overwrite=True)
  return workdir / "generator", workdir / "discriminator"


def _state_arrays(state: KedmiGanState) -> dict:
  return {field: getattr(state, field) for field in state.__dataclass_fields__}


def fingerprint(config, split: data.Split, target_variables) -> dict:
  return {"config": train_lib.config_without(config, NOT_IN_FINGERPRINT),
          "dataset": {config.split: train_lib.dataset_version(split)},
          "target": files.tree_digest(target_variables)}


def total_steps(config, split: data.Split) -> int:
  return math.ceil(round(float(config.num_epochs) * (split.num_examples // int(config.batch_size)), 6))


def load_target(path: str):
  if not path or not pathlib.Path(path).exists():
    raise FileNotFoundError(f"Target model not found at {path!r}; set --config.target to a weights folder "
                            "(jaxmia.train's export or converted PyTorch weights).")
  return model_store.load_model(path)


def train(config, workdir, mesh=None) -> KedmiGanState:
  """Trains (or resumes) KED-MI's GAN in `workdir` against the target `config.target`; exports both networks
  when finished. Returns the state after the last iteration of this call (`config.max_steps` stops early)."""
  cli.check_config(config, CONFIG_RULES)
  workdir = files.check_workdir(workdir)
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(int(config.batch_size), mesh)
  target_model, target_variables = load_target(config.target)
  split = data.load_split(config.dataset, config.split)
  num_classes = int(jax.eval_shape(
      lambda v: target_model.apply(v, jnp.zeros((1, config.target_resize, config.target_resize, 3))),
      target_variables).shape[-1])
  steps_per_epoch = split.num_examples // int(config.batch_size)
  if steps_per_epoch == 0:
    raise ValueError(f"The {config.split!r} split has {split.num_examples} images, fewer than one batch "
                     f"(config.batch_size={config.batch_size}).")
  num_steps = total_steps(config, split)

  files.check_run_record(workdir, fingerprint(config, split, target_variables), program="jaxmia.gan_kedmi",
                         state=_STATE, outputs=_OUTPUTS, overwrite=bool(config.get("overwrite", False)),
                         primary=jax.process_index() == 0)
  train_lib.sync_processes("jaxmia_gan_kedmi_run_record")
  (workdir / "samples").mkdir(parents=True, exist_ok=True)
  checkpoints = ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(
      max_to_keep=train_lib.MAX_TO_KEEP, create=True))
  root_key = jax.random.key(config.seed)
  state = parallel.replicate(create_state(config, num_classes, jax.random.fold_in(root_key, 0)), mesh)
  restored_step, restored = train_lib.restore_latest_readable(
      checkpoints, jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_arrays(state)))
  if restored is not None:
    state = state.replace(**restored)
    logging.info("Resumed from iteration %d in %s.", restored_step, workdir)
  start = int(jax.device_get(state.step))
  if start > num_steps:
    raise ValueError(f"{workdir} holds a checkpoint at iteration {start}, beyond config.num_epochs="
                     f"{config.num_epochs} ({num_steps} iterations); raise num_epochs or choose a new workdir.")
  if jax.process_index() == 0:
    files.atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
  writer = writers.MetricWriter(workdir, just_logging=jax.process_index() > 0)

  frozen = step_config(config)
  train_step = compiled_train_step(frozen, num_classes, target_model, mesh)
  target_variables = parallel.replicate(target_variables, mesh)
  step_key = jax.device_put(jax.random.fold_in(root_key, 1), parallel.replicated(mesh))
  sample = compiled_sampler(frozen, num_classes)
  sample_z = jax.random.normal(jax.random.fold_in(root_key, 2), (config.num_samples, config.generator.latent_dim))
  report_progress = progress.Progress(num_steps, unit="steps", what="KED-MI GAN training", writer=writer,
                                      every_secs=config.progress_every_secs)
  report_progress(start)
  stop = min(num_steps, start + config.max_steps) if config.max_steps > 0 else num_steps

  def write_samples(step):
    if jax.process_index() == 0:
      save_png(image_grid(np.asarray(sample(generator_variables(state), sample_z))),
               workdir / "samples" / f"fakes_{step:07d}.png")

  if start == 0 and jax.process_index() == 0:
    shown = np.linspace(0, split.num_examples - 1, min(config.num_samples, split.num_examples)).astype(int)
    reals = np.stack([split.source[int(i)]["image"] for i in shown])
    save_png(image_grid(reals / 127.5 - 1.0), workdir / "samples" / "reals.png")
    write_samples(0)
  step, pending, started = start, [], time.time()
  batch_size = int(config.batch_size)
  while step < stop:
    epoch = step // steps_per_epoch
    offset = step - epoch * steps_per_epoch
    streams = [data.batches(split, batch_size, seed=config.seed + s, epoch=epoch, start_batch=offset)
               for s in range(3)]
    for labelled, unlabelled, unlabelled2 in zip(*streams):
      images = [parallel.shard_batch(b["image"], mesh) for b in (labelled, unlabelled, unlabelled2)]
      state, metrics = train_step(state, *images, target_variables, step_key)
      pending.append(metrics)
      step += 1
      report_progress(step)
      if step % config.log_every_steps == 0 or step == stop:
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(pending))
        means = {k: float(np.nanmean(v)) for k, v in stacked.items() if np.isfinite(v).any()}
        means["sec_per_step"] = (time.time() - started) / max(step - start, 1)
        writer.write_scalars(step, means)
        pending = []
      if step % config.sample_every_steps == 0 or step == num_steps:
        write_samples(step)
      if step % config.checkpoint_every_steps == 0 or step == stop:
        checkpoints.save(step, args=ocp.args.StandardSave(_state_arrays(state)))
      if step == stop:
        break
  checkpoints.wait_until_finished()
  if step == num_steps:
    export(state, config, num_classes, workdir)
    logging.info("Exported the generator to %s and the discriminator to %s.", workdir / "generator",
                 workdir / "discriminator")
  writer.flush()
  return state


def main(argv):
  cli.start(argv)
  train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "KED-MI GAN configuration (configs/gan_kedmi_*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, sample grids and the exported networks.")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
