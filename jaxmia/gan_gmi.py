"""GMI's public-data GAN (WGAN-GP): `python -m jaxmia.gan_gmi --config=configs/gan_gmi_numbers.py --workdir=...`.

The prior of "The Secret Revealer" (Zhang et al., CVPR 2020; `Celeba/train_gan.py` of AI-secure/GMI-Attack):
GMI's generator against its critic `DGWGAN` (`jaxmia.models.dcgan`), trained on the attacker's public images
with the WGAN-GP objective (Gulrajani et al. 2017). One iteration draws one batch of public images x and
latents `z ~ N(0, I)`:

  D step (every iteration)     `-(mean D(x) - mean D(G(z))) + gp_weight * gradient_penalty` (official 10)
  G step (every `n_critic`-th  `-mean D(G(z'))` with fresh latents z' (official n_critic 5: iterations 5, 10, ...)
          iteration)

Both networks train with Adam (official lr 2e-4, betas (0.5, 0.999), batch 64). The generator's BatchNorm runs in
training mode in both steps, so its running statistics move in both, as in the official code (its G stays in
train mode throughout; only its gradients are frozen for the D step). The penalty is taken where the official
code takes it: on the [0, 1] images the official critic sees (`gradient_penalty` in the docstring of
`jaxmia.models.dcgan`), at a uniform random point between each real image and a generated one.

Structure as `jaxmia.gan`: `make_train_step(config)` returns the pure `(state, reals, key) -> (state, metrics)`
that `compiled_train_step` jits over the `('data',)` mesh (batch split over devices, state replicated, donated)
and `train` runs in `jaxmia.gan_loop`, the loop every GAN program shares.
Iteration i uses `fold_in(fold_in(key(seed), 1), i)` and the data order is `data.batches` (a pure function of
(seed, epoch)), so a run resumed from its orbax checkpoint equals an uninterrupted one. Before anything is
written the config is validated and its resume fingerprint (the config without presentation fields and the
data's version) compared with `run.json`. The workdir receives TensorBoard scalars, sample grids
(`samples/fakes_<step>.png` from fixed latents, `samples/reals.png`), checkpoints and, at the end,
`discriminator/` (kind `dcgan_discriminator`) and then `generator/` (kind `dcgan_generator`), both loadable with
`model_store.load_model`; the GMI attack (`configs/attack_gmi_*.py`) reads both.

Public images whose side differs from `image_size` are resized (antialiased) on the devices.
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
from jaxmia.models import dcgan

GENERATOR_KIND = "dcgan_generator"
DISCRIMINATOR_KIND = "dcgan_discriminator"


@flax.struct.dataclass
class GmiGanState:
  """Everything a training run carries from one iteration to the next (all arrays)."""
  step: jax.Array          # finished iterations, int32 []
  g_params: Any
  g_batch_stats: Any       # the generator's BatchNorm running statistics
  g_opt_state: Any
  d_params: Any
  d_opt_state: Any


# ----------------------------------------------------------------------------------------------- losses


def gradient_penalty(critic, reals, fakes, alpha):
  """WGAN-GP's penalty `mean_b (|grad critic(x_b)|_2 - 1)^2` at `x_b = reals_b + alpha_b (fakes_b - reals_b)`.

  `critic` maps images `[B, H, W, C]` to scores `[B]`, one per image (the gradient of their sum is each image's
  own gradient); `alpha` `[B]` in [0, 1]. The penalty is differentiable w.r.t. the critic's parameters.
  """
  alpha = alpha.reshape((-1,) + (1,) * (reals.ndim - 1))
  points = reals + alpha * (fakes - reals)
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(points).astype(jnp.float32)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))
  return jnp.mean(jnp.square(norms - 1.0))


def critic_loss(real_scores, fake_scores, penalty, gp_weight: float):
  """`(loss, wasserstein)`: `-(mean real - mean fake) + gp_weight * penalty` and the estimate in brackets."""
  wasserstein = jnp.mean(real_scores) - jnp.mean(fake_scores)
  return -wasserstein + gp_weight * penalty, wasserstein


def generator_loss(fake_scores):
  """`-mean D(G(z))` of the critic's scores `[B]` of generated images."""
  return -jnp.mean(fake_scores)


# ----------------------------------------------------------------------------------------------- networks


def generator_kwargs(config: ConfigDict) -> dict:
  """`dcgan.Generator` kwargs; `generator.start_size` (optional, KED-MI's numbers GAN sets it) only when given."""
  g = config.generator
  start = {"start_size": int(g.start_size)} if g.get("start_size") else {}
  return dict(latent_dim=int(g.latent_dim), dim=int(g.dim), image_size=int(config.image_size), channels=3, **start)


def discriminator_kwargs(config: ConfigDict) -> dict:
  return dict(dim=int(config.discriminator.dim), image_size=int(config.image_size))


def create_networks(config):
  """(Generator, Discriminator) with the configured compute dtype."""
  dtype = jnp.dtype(config.compute_dtype)
  return (dcgan.Generator(**generator_kwargs(config), dtype=dtype),
          dcgan.Discriminator(**discriminator_kwargs(config), dtype=dtype))


def optimizer(config) -> optax.GradientTransformation:
  b1, b2 = config.optimizer.betas
  return optax.adam(config.optimizer.lr, b1=b1, b2=b2, eps=config.optimizer.eps)


@functools.lru_cache(maxsize=4)
def _compiled_init(config: FrozenConfigDict):
  generator, discriminator = create_networks(config)
  opt = optimizer(config)
  size = int(config.image_size)

  @jax.jit
  def init(key):
    g_key, d_key = jax.random.split(key)
    g_vars = generator.init(g_key, jnp.zeros((1, generator.latent_dim)))
    d_vars = discriminator.init(d_key, jnp.zeros((1, size, size, 3)))
    return GmiGanState(step=jnp.zeros((), jnp.int32), g_params=g_vars["params"],
                       g_batch_stats=g_vars["batch_stats"], g_opt_state=opt.init(g_vars["params"]),
                       d_params=d_vars["params"], d_opt_state=opt.init(d_vars["params"]))

  return init


def create_state(config, key) -> GmiGanState:
  """Freshly initialised networks (PyTorch's default initialisers, as the official code) and Adam states."""
  return _compiled_init(step_config(config))(key)


# ----------------------------------------------------------------------------------------------- the step


def to_float_images(images, size: int):
  """uint8 `[B, S, S, 3]` -> float32 in [-1, 1] at `size` x `size` (antialiased resize when S differs)."""
  images = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
  return images if images.shape[1] == size else image_ops.resize(images, size, antialias=True)


def make_train_step(config):
  """The pure `(state, reals, key) -> (state, metrics)`; `reals` float32 `[B, R, R, 3]` in [-1, 1].

  The G step runs inside `lax.cond` on `state.step`, so every iteration has the same compiled program.
  """
  generator, discriminator = create_networks(config)
  opt = optimizer(config)
  batch, latent, n_critic = int(config.batch_size), generator.latent_dim, int(config.n_critic)
  gp_weight = float(config.gp_weight)

  def generate(g_params, batch_stats, z):
    images, updates = generator.apply({"params": g_params, "batch_stats": batch_stats}, z, train=True,
                                      mutable=["batch_stats"])
    return images, updates["batch_stats"]

  def d_loss_fn(d_params, reals, fakes, alpha):
    scores = lambda x: discriminator.apply({"params": d_params}, x)
    # The penalty in the official [0, 1] pixel space: the critic sees 2u - 1, i.e. u after its own mapping.
    penalty = gradient_penalty(lambda u: scores(2.0 * u - 1.0), (reals + 1) / 2, (fakes + 1) / 2, alpha)
    loss, wasserstein = critic_loss(scores(reals), scores(fakes), penalty, gp_weight)
    return loss, {"loss_d": loss, "wasserstein": wasserstein, "gradient_penalty": penalty}

  def g_loss_fn(g_params, batch_stats, d_params, z):
    fakes, batch_stats = generate(g_params, batch_stats, z)
    loss = generator_loss(discriminator.apply({"params": d_params}, fakes))
    return loss, (batch_stats, {"loss_g": loss})

  def update(grads, opt_state, params):
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def train_step(state: GmiGanState, reals, key):
    key = jax.random.fold_in(key, state.step)
    z_key, alpha_key, g_key = jax.random.split(key, 3)
    fakes, batch_stats = generate(state.g_params, state.g_batch_stats, jax.random.normal(z_key, (batch, latent)))
    alpha = jax.random.uniform(alpha_key, (batch,))
    grads, metrics = jax.grad(d_loss_fn, has_aux=True)(state.d_params, reals, jax.lax.stop_gradient(fakes), alpha)
    d_params, d_opt_state = update(grads, state.d_opt_state, state.d_params)
    state = state.replace(d_params=d_params, d_opt_state=d_opt_state, g_batch_stats=batch_stats)

    def g_step(state):
      z = jax.random.normal(g_key, (batch, latent))
      grads, (stats, g_metrics) = jax.grad(g_loss_fn, has_aux=True)(state.g_params, state.g_batch_stats,
                                                                    state.d_params, z)
      g_params, g_opt_state = update(grads, state.g_opt_state, state.g_params)
      return state.replace(g_params=g_params, g_opt_state=g_opt_state, g_batch_stats=stats), g_metrics

    state, g_metrics = jax.lax.cond((state.step + 1) % n_critic == 0, g_step,
                                    lambda s: (s, {"loss_g": jnp.float32(jnp.nan)}), state)
    return state.replace(step=state.step + 1), {**metrics, **g_metrics}

  return train_step


# Config fields that decide what one iteration computes (besides the seed and the data).
STEP_FIELDS = ("image_size", "generator", "discriminator", "batch_size", "optimizer", "n_critic", "gp_weight",
               "compute_dtype")
NOT_IN_FINGERPRINT = gan_loop.NOT_IN_FINGERPRINT
_positive_int = gan_loop.positive_int

CONFIG_RULES = gan_loop.RUN_RULES + (
    ("image_size", "a multiple of 16", lambda v: _positive_int(v) and v % 16 == 0),
    ("generator.latent_dim", "a positive integer", _positive_int),
    ("generator.dim", "a positive integer", _positive_int),
    ("discriminator.dim", "a positive integer", _positive_int),
    ("batch_size", "a positive integer", _positive_int),
    ("num_epochs", "> 0", number(0, low_open=True)),
) + gan_loop.OPTIMIZER_RULES + (
    ("n_critic", "a positive integer", _positive_int),
    ("gp_weight", ">= 0", number(0)),
    ("compute_dtype", "'float32' or 'bfloat16'", one_of("float32", "bfloat16")),
) + gan_loop.PACING_RULES


def step_config(config) -> FrozenConfigDict:
  """The hashable part of `config` that the compiled step depends on."""
  return gan_loop.frozen_fields(config, STEP_FIELDS)


@functools.lru_cache(maxsize=4)
def compiled_train_step(config: FrozenConfigDict, mesh):
  """The train step on uint8 batches, jitted over the mesh (batch split, state replicated and donated)."""
  train_step = make_train_step(config)
  size = int(config.image_size)
  return gan_loop.jit_train_step(lambda state, reals, key: train_step(state, to_float_images(reals, size), key), mesh)


@functools.lru_cache(maxsize=4)
def compiled_sampler(config: FrozenConfigDict):
  """`(G variables, z) -> images` with BatchNorm's running statistics (what the attack renders)."""
  generator, _ = create_networks(config)
  return jax.jit(lambda variables, z: generator.apply(variables, z))


def generator_variables(state: GmiGanState) -> dict:
  return {"params": state.g_params, "batch_stats": state.g_batch_stats}


def export(state: GmiGanState, config, workdir: pathlib.Path):
  """Writes `workdir/discriminator` and then `workdir/generator` (a complete generator marks a finished run)."""
  host = jax.device_get(state)
  model_store.save_model(workdir / "discriminator", {"params": host.d_params}, kind=DISCRIMINATOR_KIND,
                         module_kwargs=discriminator_kwargs(config), overwrite=True)
  model_store.save_model(workdir / "generator", generator_variables(host), kind=GENERATOR_KIND,
                         module_kwargs=generator_kwargs(config), overwrite=True)
  return workdir / "generator", workdir / "discriminator"


def fingerprint(config, split: data.Split) -> dict:
  return gan_loop.fingerprint(config, split, NOT_IN_FINGERPRINT)


total_steps = gan_loop.total_steps


def train(config, workdir, mesh=None) -> GmiGanState:
  """Trains (or resumes) GMI's GAN in `workdir`; exports both networks when finished. Returns the state after
  the last iteration of this call (`config.max_steps` stops early, as if interrupted; a rerun resumes)."""
  cli.check_config(config, CONFIG_RULES)
  workdir = files.check_workdir(workdir)
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(int(config.batch_size), mesh)
  split = data.load_split(config.dataset, config.split)
  frozen = step_config(config)
  sample = compiled_sampler(frozen)
  return gan_loop.run(config, workdir, mesh, split, gan_loop.Program(
      name="jaxmia.gan_gmi", what="GMI GAN training", fingerprint=fingerprint(config, split),
      num_steps=total_steps(config, split), length_field="num_epochs",
      create_state=lambda key: create_state(config, key), train_step=compiled_train_step(frozen, mesh),
      sample=lambda state, z: sample(generator_variables(state), z), latent_dim=config.generator.latent_dim,
      export=lambda state: export(state, config, workdir), sample_every=config.sample_every_steps,
      checkpoint_every=config.checkpoint_every_steps))


def main(argv):
  cli.start(argv)
  train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  gan_loop.run_cli(main, "GMI GAN configuration (configs/gan_gmi_*.py).")
