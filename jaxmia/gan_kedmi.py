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
that `compiled_train_step` jits over the `('data',)` mesh (batches split over devices, state replicated, donated)
and `train` runs in `jaxmia.gan_loop`, the loop every GAN program shares.
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
import pathlib
from typing import Any

from absl import flags
import flax
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict, FrozenConfigDict
import optax

from jaxmia import cli, data, files, gan_loop, model_store, parallel
from jaxmia.cli import number, one_of
from jaxmia.data import image_ops
# GMI's generator, trained as GMI's trainer trains it: from uint8 images at its side, with Adam.
from jaxmia.gan_gmi import generator_kwargs, generator_variables, optimizer, to_float_images
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


def discriminator_kwargs(config: ConfigDict, num_classes: int) -> dict:
  d = config.discriminator
  end = {"end_size": int(d.end_size)} if d.get("end_size") else {}
  return dict(num_classes=int(num_classes), dim=int(d.dim), minibatch_kernels=int(d.minibatch_kernels),
              minibatch_kernel_dim=int(d.minibatch_kernel_dim), **end)


def create_networks(config, num_classes: int):
  """(Generator, MinibatchDiscriminator) with the configured compute dtype."""
  dtype = jnp.dtype(config.compute_dtype)
  return (dcgan.Generator(**generator_kwargs(config), dtype=dtype),
          MinibatchDiscriminator(**discriminator_kwargs(config, num_classes), dtype=dtype))


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
# Left out of the resume fingerprint: GMI's (presentation and pacing, where things are, overwrite itself) and
# where the target is (its weights are in the fingerprint).
NOT_IN_FINGERPRINT = gan_loop.NOT_IN_FINGERPRINT + ("target",)
_positive_int = gan_loop.positive_int

CONFIG_RULES = gan_loop.RUN_RULES + (
    ("image_size", "a multiple of 16", lambda v: _positive_int(v) and v % 16 == 0),
    ("target_resize", "a positive integer", _positive_int),
    ("generator.latent_dim", "a positive integer", _positive_int),
    ("generator.dim", "a positive integer", _positive_int),
    ("discriminator.dim", "a positive integer", _positive_int),
    ("discriminator.minibatch_kernels", "a positive integer", _positive_int),
    ("discriminator.minibatch_kernel_dim", "a positive integer", _positive_int),
    ("batch_size", "an integer >= 2", number(2, integer=True)),
    ("num_epochs", "> 0", number(0, low_open=True)),
) + gan_loop.OPTIMIZER_RULES + (
    ("n_critic", "a positive integer", _positive_int),
    ("entropy_weight", ">= 0", number(0)),
    ("compute_dtype", "'float32' or 'bfloat16'", one_of("float32", "bfloat16")),
) + gan_loop.PACING_RULES


def step_config(config) -> FrozenConfigDict:
  """The hashable part of `config` that the compiled step depends on."""
  return gan_loop.frozen_fields(config, STEP_FIELDS)


@functools.lru_cache(maxsize=4)
def compiled_train_step(config: FrozenConfigDict, num_classes: int, target_model, mesh):
  """The train step on uint8 batches, jitted over the mesh (batches split, state replicated and donated)."""
  train_step = make_train_step(config, num_classes, target_model, int(config.target_resize))
  size = int(config.image_size)

  def step(state, labelled, unlabelled, unlabelled2, target_variables, key):
    convert = functools.partial(to_float_images, size=size)
    return train_step(state, convert(labelled), convert(unlabelled), convert(unlabelled2), target_variables, key)

  return gan_loop.jit_train_step(step, mesh, num_batches=3, num_replicated=1)


@functools.lru_cache(maxsize=4)
def compiled_sampler(config: FrozenConfigDict, num_classes: int):
  """`(G variables, z) -> images` with BatchNorm's running statistics (what the attack renders)."""
  generator, _ = create_networks(config, num_classes)
  return jax.jit(lambda variables, z: generator.apply(variables, z))


def export(state: KedmiGanState, config, num_classes: int, workdir: pathlib.Path):
  """Writes `workdir/discriminator` and then `workdir/generator` (a complete generator marks a finished run)."""
  host = jax.device_get(state)
  model_store.save_model(workdir / "discriminator", {"params": host.d_params}, kind=DISCRIMINATOR_KIND,
                         module_kwargs=discriminator_kwargs(config, num_classes), overwrite=True)
  model_store.save_model(workdir / "generator", generator_variables(host), kind=GENERATOR_KIND,
                         module_kwargs=generator_kwargs(config), overwrite=True)
  return workdir / "generator", workdir / "discriminator"


def fingerprint(config, split: data.Split, target_variables) -> dict:
  return {**gan_loop.fingerprint(config, split, NOT_IN_FINGERPRINT), "target": files.tree_digest(target_variables)}


total_steps = gan_loop.total_steps


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
  frozen = step_config(config)
  record = fingerprint(config, split, target_variables)
  step = compiled_train_step(frozen, num_classes, target_model, mesh)
  target_variables = parallel.replicate(target_variables, mesh)
  sample = compiled_sampler(frozen, num_classes)

  def train_step(state, labelled, unlabelled, unlabelled2, key):
    return step(state, labelled, unlabelled, unlabelled2, target_variables, key)

  return gan_loop.run(config, workdir, mesh, split, gan_loop.Program(
      name="jaxmia.gan_kedmi", what="KED-MI GAN training", fingerprint=record,
      num_steps=total_steps(config, split), length_field="num_epochs",
      create_state=lambda key: create_state(config, num_classes, key),
      train_step=train_step,
      sample=lambda state, z: sample(generator_variables(state), z), latent_dim=config.generator.latent_dim,
      export=lambda state: export(state, config, num_classes, workdir), sample_every=config.sample_every_steps,
      checkpoint_every=config.checkpoint_every_steps, num_streams=3))


def main(argv):
  cli.start(argv)
  train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  gan_loop.run_cli(main, "KED-MI GAN configuration (configs/gan_kedmi_*.py).")
