"""StyleGAN2 training: `python -m jaxmia.gan --config=configs/gan_digits.py --workdir=runs/gan_digits`.

The objective of NVlabs stylegan2-ada-pytorch (`StyleGAN2Loss` with lazy regularisation), on the Flax
`models.stylegan2` Generator and Discriminator. One iteration (one global batch of reals) runs the phases in
NVlabs' order, each with its own latents:

  G main    non-saturating logistic loss `softplus(-D(G(z)))`
  G reg     path-length penalty every `pl_interval` iterations, scaled by the interval (off when pl_weight=0)
  D main    logistic loss `softplus(D(G(z))) + softplus(-D(x))`
  D reg     R1 penalty `gamma / 2 * |dD(x)/dx|^2` every `r1_interval` iterations, scaled by the interval
  G_ema     `p_ema <- p + beta * (p_ema - p)`, `beta = 0.5 ** (batch / ema_nimg)`, `ema_nimg` ramped up as
            `min(ema_kimg * 1000, images_seen * ema_rampup)`

With `diffaugment` set (e.g. 'translation,cutout'), D sees every real and generated image, in every phase
including R1 (whose gradient is taken w.r.t. the un-augmented reals), through `jaxmia.diffaugment` with
per-image draws; its keys are folded out of each phase's key, so '' reproduces the runs made before it existed.

Every generator pass draws `z ~ N(0, I)`, mixes styles with probability `style_mixing_prob` (one cutoff per
batch) and uses random noise; the mapping outputs of the main latents move `w_avg` (an EMA with
`w_avg_beta`, stored in the generator's 'buffers' collection) as NVlabs' training-mode mapping does. Each
phase is one Adam step (NVlabs: lr 0.0025, betas (0, 0.99), eps 1e-8; gradients' NaN/inf replaced as there);
a network with lazy regularisation gets lr and betas rescaled by `interval / (interval + 1)` and shares its
Adam state between the main and reg steps. The equalised learning rates (mapping lr multiplier included) are
runtime gains inside the Flax modules, so Adam on the stored parameters matches NVlabs.

`g_step` and `d_step` are pure functions of (state, batch, key) that `train_step` composes and `jax.jit`s
over the `('data',)` mesh (reals split over devices, state replicated); `train` runs it in `jaxmia.gan_loop`,
the loop every GAN program shares. Iteration `i` uses
`fold_in(fold_in(key(seed), 1), i)` and the data order is a pure function of (seed, epoch), so a run resumed from an
orbax checkpoint equals an uninterrupted one (the newest two checkpoints are kept; an unreadable newest one is
moved aside with a warning). Before anything is written, the config is validated (`validate_config`) and its
resume fingerprint (`fingerprint`) compared with the workdir's `run.json`; see `jaxmia.train`. The workdir
receives TensorBoard scalars, sample grids (`samples/fakes_<kimg>.png` from G_ema with fixed latents,
`samples/reals.png`), checkpoints and, at the end, `generator/` (G_ema) and `discriminator/` (D) written with
`model_store.save_model`, loadable with `model_store.load_model` exactly like converted NVlabs networks.
"""
import functools
import math
import os
import pathlib
from typing import Any

from absl import flags
import flax
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict, FrozenConfigDict
import numpy as np
import optax

from jaxmia import cli, data, diffaugment, files, gan_loop, model_store, parallel
from jaxmia.cli import number, one_of
from jaxmia.models import stylegan2


@flax.struct.dataclass
class GanState:
  """Everything a training run carries from one iteration to the next (all arrays)."""
  step: jax.Array          # finished iterations, int32 []
  g_params: Any
  g_buffers: Any           # 'buffers' of G: w_avg (trained here) and the noise_const maps
  g_opt_state: Any
  d_params: Any
  d_opt_state: Any
  ema_params: Any          # G_ema; it shares G's buffers, as NVlabs copies them every iteration
  pl_mean: jax.Array       # running mean of path lengths, float32 []


# ----------------------------------------------------------------------------------------------- networks


def generator_kwargs(config: ConfigDict) -> dict:
  """NVlabs `Generator` init kwargs of the configured generator (JSON-serialisable, no dtype)."""
  g = config.generator
  return dict(z_dim=g.z_dim, c_dim=0, w_dim=g.w_dim, img_resolution=config.resolution, img_channels=3,
              mapping_kwargs=dict(num_layers=g.mapping_layers, lr_multiplier=g.mapping_lr_multiplier,
                                  w_avg_beta=g.w_avg_beta),
              synthesis_kwargs=dict(channel_base=g.channel_base, channel_max=g.channel_max,
                                    architecture=g.architecture))


def discriminator_kwargs(config: ConfigDict) -> dict:
  """NVlabs `Discriminator` init kwargs of the configured discriminator."""
  d = config.discriminator
  return dict(c_dim=0, img_resolution=config.resolution, img_channels=3, architecture=d.architecture,
              channel_base=d.channel_base, channel_max=d.channel_max,
              epilogue_kwargs=dict(mbstd_group_size=d.mbstd_group_size))


def compute_dtype(config: ConfigDict):
  if config.compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.compute_dtype must be 'float32' or 'bfloat16', got {config.compute_dtype!r}.")
  return jnp.dtype(config.compute_dtype)


def create_networks(config: ConfigDict):
  """(Generator, Discriminator) modules with the configured compute dtype."""
  dtype = compute_dtype(config)
  return (stylegan2.Generator(**generator_kwargs(config), dtype=dtype),
          stylegan2.Discriminator(**discriminator_kwargs(config), dtype=dtype))


def _adam(config: ConfigDict, reg_interval: int | None) -> optax.GradientTransformation:
  """NVlabs' Adam; with lazy regularisation every `reg_interval` steps, lr and betas are rescaled."""
  ratio = 1.0 if reg_interval is None else reg_interval / (reg_interval + 1)
  b1, b2 = config.optimizer.betas
  return optax.adam(config.optimizer.lr * ratio, b1=b1 ** ratio, b2=b2 ** ratio, eps=config.optimizer.eps)


def _pl_interval(config: ConfigDict) -> int | None:
  return config.pl_interval if config.pl_weight else None


def optimizers(config: ConfigDict) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  return _adam(config, _pl_interval(config)), _adam(config, config.r1_interval if config.r1_gamma else None)


def create_state(config: ConfigDict, key: jax.Array) -> GanState:
  """Freshly initialised networks (NVlabs initialisers), Adam states and G_ema = G."""
  return _compiled_init(step_config(config))(key)


@functools.lru_cache(maxsize=4)
def _compiled_init(config: FrozenConfigDict):
  generator, discriminator = create_networks(config)
  g_opt, d_opt = optimizers(config)

  @jax.jit
  def init(key):
    g_key, d_key, noise_key = jax.random.split(key, 3)
    g_vars = generator.init({"params": g_key, "noise": noise_key}, jnp.zeros((1, generator.z_dim)))
    d_vars = discriminator.init(d_key, jnp.zeros((1, config.resolution, config.resolution, 3)))
    return GanState(step=jnp.zeros((), jnp.int32), g_params=g_vars["params"], g_buffers=g_vars["buffers"],
                    g_opt_state=g_opt.init(g_vars["params"]), d_params=d_vars["params"],
                    d_opt_state=d_opt.init(d_vars["params"]), ema_params=g_vars["params"],  # a separate output buffer
                    pl_mean=jnp.zeros((), jnp.float32))

  return init


# ----------------------------------------------------------------------------------------------- losses


def ema_beta(config: ConfigDict, step) -> jax.Array:
  """G_ema decay after `step` iterations: `0.5 ** (batch / ema_nimg)` with NVlabs' ramp-up."""
  ema_nimg = jnp.asarray(config.ema_kimg * 1000.0, jnp.float32)
  if config.ema_rampup:
    ema_nimg = jnp.minimum(ema_nimg, step * config.batch_size * config.ema_rampup)
  return 0.5 ** (config.batch_size / jnp.maximum(ema_nimg, 1e-8))


def _clean(grads):
  """NVlabs' guard: NaN -> 0, +-inf -> +-1e5 in every gradient."""
  return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), grads)


def _mapping(generator, g_params, g_buffers, z, key, style_mixing_prob: float, w_avg_beta):
  """`z [B, z_dim]` -> (ws `[B, num_ws, w_dim]` with style mixing, G buffers with w_avg moved)."""
  variables = {"params": g_params, "buffers": g_buffers}
  ws = generator.apply(variables, z, method="mapping")
  if w_avg_beta is not None:
    w_mean = jax.lax.stop_gradient(jnp.mean(ws[:, 0], axis=0))
    w_avg = g_buffers["mapping"]["w_avg"]
    g_buffers = flax.core.copy(g_buffers, {"mapping": {**g_buffers["mapping"],
                                                      "w_avg": w_mean + (w_avg - w_mean) * w_avg_beta}})
  if style_mixing_prob > 0:
    cutoff_key, coin_key, mix_key = jax.random.split(key, 3)
    num_ws = ws.shape[1]
    cutoff = jax.random.randint(cutoff_key, (), 1, num_ws)
    cutoff = jnp.where(jax.random.uniform(coin_key) < style_mixing_prob, cutoff, num_ws)
    mixed = generator.apply(variables, jax.random.normal(mix_key, z.shape), method="mapping")
    ws = jnp.where(jnp.arange(num_ws)[None, :, None] < cutoff, ws, mixed)
  return ws, g_buffers


def _synthesis(generator, g_params, g_buffers, ws, noise_key):
  """`ws` -> images `[B, R, R, 3]` with random noise maps drawn from `noise_key`."""
  return generator.apply({"params": g_params, "buffers": g_buffers}, ws, noise_mode="random",
                         method="synthesis", rngs={"noise": noise_key})


def _logits(discriminator, d_params, images):
  return discriminator.apply({"params": d_params}, images)[:, 0].astype(jnp.float32)


def generator_loss(fake_logits):
  """G main: non-saturating logistic loss `mean softplus(-D(G(z)))` of `fake_logits [B]`."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_loss(fake_logits, real_logits):
  """D main: logistic loss `mean softplus(D(G(z))) + mean softplus(-D(x))` of two `[B]` logit vectors."""
  return jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))


def r1_penalty(discriminator, d_params, reals, augment=lambda x: x):
  """`|d sum(D(augment(x))) / dx|^2` per image `[B]` (R1 of Mescheder et al., as NVlabs computes it)."""
  grads = jax.grad(lambda x: jnp.sum(_logits(discriminator, d_params, augment(x))))(reals)
  return jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3))


# ----------------------------------------------------------------------------------------------- steps


def make_steps(config: ConfigDict):
  """Pure `(g_step, d_step, train_step)`, each `(state, reals, key) -> (state, metrics)`.

  `reals` is the float32 batch `[B, R, R, 3]` in [-1, 1]; `g_step` ignores it. The lazy regularisation steps
  run inside `lax.cond` on `state.step`, so every iteration has the same compiled program.
  """
  generator, discriminator = create_networks(config)
  g_opt, d_opt = optimizers(config)
  beta = config.generator.w_avg_beta
  mixing = config.style_mixing_prob
  pl_interval, r1_interval = _pl_interval(config), config.r1_interval if config.r1_gamma else None
  z_dim = generator.z_dim
  policy = diffaugment.parse_policy(config.diffaugment)

  def augment(images, key, salt):
    """What D sees of `images`: DiffAugment with a key folded out of the phase's key (identity without policy)."""
    return diffaugment.diff_augment(images, jax.random.fold_in(key, salt), policy) if policy else images

  def run_g(g_params, g_buffers, z, key):
    """(images, ws, updated G buffers) from latents `z`."""
    map_key, noise_key = jax.random.split(key)
    ws, g_buffers = _mapping(generator, g_params, g_buffers, z, map_key, mixing, beta)
    return _synthesis(generator, g_params, g_buffers, ws, noise_key), ws, g_buffers

  def apply_update(opt, grads, opt_state, params):
    updates, opt_state = opt.update(_clean(grads), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def g_main_loss(g_params, state, key):
    z_key, g_key = jax.random.split(key)
    z = jax.random.normal(z_key, (config.batch_size, z_dim))
    fakes, _, buffers = run_g(g_params, state.g_buffers, z, g_key)
    logits = _logits(discriminator, state.d_params, augment(fakes, key, 1))
    return generator_loss(logits), (buffers, logits)

  def g_pl_loss(g_params, state, key):
    z_key, g_key, pl_key = jax.random.split(key, 3)
    z = jax.random.normal(z_key, (config.batch_size // config.pl_batch_shrink, z_dim))
    map_key, noise_key = jax.random.split(g_key)
    ws, buffers = _mapping(generator, g_params, state.g_buffers, z, map_key, mixing, beta)
    fakes, pull_back = jax.vjp(lambda w: _synthesis(generator, g_params, buffers, w, noise_key), ws)
    pl_noise = jax.random.normal(pl_key, fakes.shape) / math.sqrt(fakes.shape[1] * fakes.shape[2])
    pl_grads, = pull_back(pl_noise.astype(fakes.dtype))  # d sum(fakes * pl_noise) / d ws
    pl_lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(pl_grads), axis=2), axis=1))
    pl_mean = state.pl_mean + (jnp.mean(pl_lengths) - state.pl_mean) * config.pl_decay
    penalty = jnp.square(pl_lengths - pl_mean)
    return jnp.mean(penalty) * config.pl_weight * pl_interval, (buffers, jax.lax.stop_gradient(pl_mean), penalty)

  def g_step(state: GanState, reals, key):
    """G main (and every `pl_interval` iterations G reg): two Adam steps on G, w_avg updates."""
    del reals
    main_key, reg_key = jax.random.split(key)
    grads, (buffers, logits) = jax.grad(g_main_loss, has_aux=True)(state.g_params, state, main_key)
    params, opt_state = apply_update(g_opt, grads, state.g_opt_state, state.g_params)
    state = state.replace(g_params=params, g_buffers=buffers, g_opt_state=opt_state)
    metrics = {"loss_g": generator_loss(logits), "pl_penalty": jnp.float32(jnp.nan)}
    if pl_interval is None:
      return state, metrics

    def regularise(state):
      grads, (buffers, pl_mean, penalty) = jax.grad(g_pl_loss, has_aux=True)(state.g_params, state, reg_key)
      params, opt_state = apply_update(g_opt, grads, state.g_opt_state, state.g_params)
      return state.replace(g_params=params, g_buffers=buffers, g_opt_state=opt_state, pl_mean=pl_mean), \
          jnp.mean(penalty)

    state, penalty = jax.lax.cond(state.step % pl_interval == 0, regularise,
                                  lambda s: (s, jnp.float32(jnp.nan)), state)
    return state, {**metrics, "pl_penalty": penalty}

  def d_main_loss(d_params, state, reals, key):
    z_key, g_key = jax.random.split(key)
    z = jax.random.normal(z_key, (config.batch_size, z_dim))
    fakes, _, buffers = run_g(state.g_params, state.g_buffers, z, g_key)
    fake_logits = _logits(discriminator, d_params, augment(jax.lax.stop_gradient(fakes), key, 1))
    real_logits = _logits(discriminator, d_params, augment(reals, key, 2))
    loss = discriminator_loss(fake_logits, real_logits)
    return loss, (buffers, {"loss_d": loss, "logits_fake": jnp.mean(fake_logits),
                            "logits_real": jnp.mean(real_logits)})

  def d_r1_loss(d_params, reals, key):
    penalty = r1_penalty(discriminator, d_params, reals, lambda x: augment(x, key, 3))
    return jnp.mean(penalty) * (config.r1_gamma / 2) * r1_interval, jnp.mean(penalty)

  def d_step(state: GanState, reals, key):
    """D main (and every `r1_interval` iterations D reg): Adam steps on D; G's w_avg moves too."""
    grads, (buffers, metrics) = jax.grad(d_main_loss, has_aux=True)(state.d_params, state, reals, key)
    params, opt_state = apply_update(d_opt, grads, state.d_opt_state, state.d_params)
    state = state.replace(d_params=params, d_opt_state=opt_state, g_buffers=buffers)
    metrics["r1_penalty"] = jnp.float32(jnp.nan)
    if r1_interval is None:
      return state, metrics

    def regularise(state):
      grads, penalty = jax.grad(d_r1_loss, has_aux=True)(state.d_params, reals, key)
      params, opt_state = apply_update(d_opt, grads, state.d_opt_state, state.d_params)
      return state.replace(d_params=params, d_opt_state=opt_state), penalty

    state, metrics["r1_penalty"] = jax.lax.cond(state.step % r1_interval == 0, regularise,
                                                lambda s: (s, jnp.float32(jnp.nan)), state)
    return state, metrics

  def train_step(state: GanState, reals, key):
    """One iteration: G phases, D phases, G_ema update, step + 1."""
    key = jax.random.fold_in(key, state.step)
    g_key, d_key = jax.random.split(key)
    state, g_metrics = g_step(state, reals, g_key)
    state, d_metrics = d_step(state, reals, d_key)
    beta = ema_beta(config, state.step)
    ema = jax.tree.map(lambda p, e: p + (e - p) * beta, state.g_params, state.ema_params)
    return state.replace(ema_params=ema, step=state.step + 1), {**g_metrics, **d_metrics}

  return g_step, d_step, train_step


def to_float_images(images) -> jax.Array:
  """uint8 `[B, H, W, C]` -> float32 in [-1, 1]."""
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


# Config fields that decide what one iteration computes (besides the seed and the data).
STEP_FIELDS = ("resolution", "generator", "discriminator", "batch_size", "optimizer", "r1_gamma", "r1_interval",
               "pl_weight", "pl_interval", "pl_batch_shrink", "pl_decay", "style_mixing_prob", "ema_kimg",
               "ema_rampup", "compute_dtype", "diffaugment")
# Config fields left out of the resume fingerprint: how a run is shown and paced (sample grids, logs, progress,
# checkpoint interval, max_steps), total_kimg (a longer run continues a shorter one exactly: nothing depends on
# the total), where the dataset is, and overwrite itself. Everything else decides the trained networks.
NOT_IN_FINGERPRINT = ("num_samples", "sample_every_kimg", "checkpoint_every_kimg", "log_every_steps",
                      "progress_every_secs", "max_steps", "total_kimg", "overwrite", "dataset.manual_dir",
                      "dataset.data_dir")
_ARCHITECTURES = ("orig", "skip", "resnet")
_DTYPES = ("float32", "bfloat16")
_positive_int = gan_loop.positive_int
_unit = number(0, 1)

CONFIG_RULES = gan_loop.RUN_RULES + (
    ("resolution", "a power of two >= 4", lambda v: _positive_int(v) and v >= 4 and v & (v - 1) == 0),
    ("generator.z_dim", "a positive integer", _positive_int),
    ("generator.w_dim", "a positive integer", _positive_int),
    ("generator.mapping_layers", "a positive integer", _positive_int),
    ("generator.mapping_lr_multiplier", "> 0", number(0, low_open=True)),
    ("generator.w_avg_beta", "None or in [0, 1]", lambda v: v is None or _unit(v)),
    ("generator.channel_base", "a positive integer", _positive_int),
    ("generator.channel_max", "a positive integer", _positive_int),
    ("generator.architecture", f"one of {_ARCHITECTURES}", one_of(*_ARCHITECTURES)),
    ("discriminator.architecture", f"one of {_ARCHITECTURES}", one_of(*_ARCHITECTURES)),
    ("discriminator.channel_base", "a positive integer", _positive_int),
    ("discriminator.channel_max", "a positive integer", _positive_int),
    ("discriminator.mbstd_group_size", "None or an integer >= 0",
     lambda v: v is None or number(0, integer=True)(v)),
    ("batch_size", "a positive integer", _positive_int),
    ("total_kimg", "> 0", number(0, low_open=True)),
) + gan_loop.OPTIMIZER_RULES + (
    ("r1_gamma", ">= 0", number(0)),
    ("r1_interval", "a positive integer", _positive_int),
    ("pl_weight", ">= 0", number(0)),
    ("pl_interval", "a positive integer", _positive_int),
    ("pl_batch_shrink", "a positive integer", _positive_int),
    ("pl_decay", "in [0, 1]", _unit),
    ("style_mixing_prob", "in [0, 1]", _unit),
    ("ema_kimg", ">= 0", number(0)),
    ("ema_rampup", "None or >= 0", lambda v: v is None or number(0)(v)),
    ("compute_dtype", f"one of {_DTYPES}", one_of(*_DTYPES)),
    ("diffaugment", "a DiffAugment policy string", lambda v: isinstance(v, str)),
    ("num_samples", "a positive integer", _positive_int),
    ("sample_every_kimg", "> 0", number(0, low_open=True)),
    ("checkpoint_every_kimg", "> 0", number(0, low_open=True)),
    ("log_every_steps", "a positive integer", _positive_int),
    ("progress_every_secs", "> 0", number(0, low_open=True)),
    ("max_steps", "an integer >= 0 (0: run to the end)", number(0, integer=True)),
    ("overwrite", "True or False", one_of(True, False)),
    ("dataset.validation_fraction", "in [0, 1)", number(0, 1, high_open=True)),
    ("dataset.samples_per_class", "None or a positive integer", lambda v: v is None or _positive_int(v)),
)


def validate_config(config: ConfigDict) -> None:
  """Every range-limited field of a GAN config (`CONFIG_RULES`) and the DiffAugment policy, checked before any
  work: one `ValueError` listing all that are out of range."""
  cli.check_config(config, CONFIG_RULES)
  diffaugment.parse_policy(config.diffaugment)


def fingerprint(config: ConfigDict, split: data.Split) -> dict:
  """What defines a GAN run's result: the config minus `NOT_IN_FINGERPRINT` and the version of its data."""
  return gan_loop.fingerprint(config, split, NOT_IN_FINGERPRINT)


def step_config(config: ConfigDict) -> FrozenConfigDict:
  """The hashable part of `config` that the compiled train step depends on."""
  return gan_loop.frozen_fields(config, STEP_FIELDS)


@functools.lru_cache(maxsize=4)
def compiled_train_step(config: FrozenConfigDict, mesh: jax.sharding.Mesh):
  """`(state, uint8 reals, key) -> (state, metrics)` jitted over the mesh with the state donated.

  Cached on `step_config(config)`, so an interrupted and a resumed run in one process compile once.
  """
  _, _, train_step = make_steps(config)
  return gan_loop.jit_train_step(lambda state, reals, key: train_step(state, to_float_images(reals), key), mesh)


@functools.lru_cache(maxsize=4)
def compiled_sampler(config: FrozenConfigDict):
  """`(G variables, z [N, z_dim]) -> images [N, R, R, 3]`: no truncation, const noise (cached as above)."""
  generator, _ = create_networks(config)

  def sample(variables, z):
    ws = generator.apply(variables, z, method="mapping")
    return generator.apply(variables, ws, noise_mode="const", method="synthesis")

  return jax.jit(sample)


# ----------------------------------------------------------------------------------------------- outputs


def ema_variables(state: GanState) -> dict:
  """G_ema's variables as `model_store.load_model` returns them for a generator."""
  return {"params": state.ema_params, "buffers": state.g_buffers}


def export(state: GanState, config: ConfigDict, workdir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `workdir/discriminator` (D) and then `workdir/generator` (G_ema) as jaxmia weights folders: a
  complete generator marks a finished run (the study skips training its prior), so it comes last."""
  host = jax.device_get(state)
  model_store.save_model(workdir / "discriminator", {"params": host.d_params}, kind="stylegan2_discriminator",
                         module_kwargs=discriminator_kwargs(config), overwrite=True)
  model_store.save_model(workdir / "generator", ema_variables(host), kind="stylegan2_generator",
                         module_kwargs=generator_kwargs(config), overwrite=True)
  return workdir / "generator", workdir / "discriminator"


def total_steps(config: ConfigDict) -> int:
  return math.ceil(config.total_kimg * 1000 / config.batch_size)


def _check_config(config: ConfigDict, mesh) -> None:
  parallel.check_batch_size(config.batch_size, mesh)
  group = config.discriminator.mbstd_group_size
  if group and config.batch_size % min(group, config.batch_size):
    raise ValueError(f"config.batch_size ({config.batch_size}) must be a multiple of "
                     f"config.discriminator.mbstd_group_size ({group}) for the minibatch-std layer.")
  if config.pl_weight and config.batch_size // config.pl_batch_shrink < 1:
    raise ValueError(f"config.pl_batch_shrink ({config.pl_batch_shrink}) leaves no images of the batch "
                     f"({config.batch_size}) for the path-length penalty.")


def train(config: ConfigDict, workdir: str | os.PathLike, mesh: jax.sharding.Mesh | None = None) -> GanState:
  """Trains (or resumes) the configured StyleGAN2 in `workdir`; exports G_ema and D when finished.

  Returns the state after the last iteration run by this call (`config.max_steps` stops early, as if
  interrupted; a rerun resumes).
  """
  validate_config(config)
  workdir = files.check_workdir(workdir)
  mesh = mesh or parallel.make_mesh()
  _check_config(config, mesh)
  split = data.load_split(config.dataset, config.split)
  image_size = split.source[0]["image"].shape[0]
  if image_size != config.resolution:
    raise ValueError(f"The {config.dataset.name} images are {image_size}x{image_size} but config.resolution is "
                     f"{config.resolution}; set config.resolution={image_size}.")
  kimg = lambda step: step * config.batch_size / 1000
  every = lambda kimg_interval: max(1, round(kimg_interval * 1000 / config.batch_size))

  def scalars(means, step, start, elapsed):
    means = {k: v for k, v in means.items() if np.isfinite(v)}
    return {**means, "kimg": kimg(step), "sec_per_kimg": elapsed / max(kimg(step - start), 1e-9)}

  sample = compiled_sampler(step_config(config))
  return gan_loop.run(config, workdir, mesh, split, gan_loop.Program(
      name="jaxmia.gan", what="GAN training", fingerprint=fingerprint(config, split),
      num_steps=total_steps(config), length_field="total_kimg",
      create_state=lambda key: create_state(config, key), train_step=compiled_train_step(step_config(config), mesh),
      sample=lambda state, z: sample(ema_variables(state), z), latent_dim=config.generator.z_dim,
      export=lambda state: export(state, config, workdir), sample_every=every(config.sample_every_kimg),
      checkpoint_every=every(config.checkpoint_every_kimg), scalars=scalars, progress_at_start=False,
      sample_name=lambda step: f"fakes_{kimg(step):08.3f}kimg.png", exported="Exported G_ema to %s and D to %s."))


# ----------------------------------------------------------------------------------------------- CLI


def main(argv):
  cli.start(argv)
  train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  gan_loop.run_cli(main, "GAN training configuration (configs/gan_*.py).")
