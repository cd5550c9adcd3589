"""Stage 2 of the Plug & Play Attack: optimise style vectors `w` until the target model sees the target class.

The image pipeline every stage shares (synthesis, the target's view, compute dtype, compiled-code cache) is
in `jaxmia.attack.render`.

Per-latent independence: each latent has its own PRNG key, the objective is the *sum* of per-latent losses
(so a latent's gradient is the gradient of its own loss) and Adam is elementwise, so a latent's trajectory
is the same whether it is optimised alone or in a batch of any size, on any number of devices.
"""
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmia import losses, parallel
from jaxmia.attack import render
from jaxmia.data import image_ops
from jaxmia.models import xla_cpu

IDENTITY_LOSSES = {
    "poincare": losses.poincare_loss,
    "cross_entropy": losses.cross_entropy_identity_loss,
    "logit": losses.logit_loss,
}
# Rematerialisation of the synthesis network in the backward pass ('none' keeps every activation).
REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_saveable,    # keep conv/matmul outputs, recompute the elementwise ops
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the inputs, recompute the whole forward pass
}


def latent_keys(key, indices):
  """One key per latent: `fold_in(key, global latent index)`, so a latent's randomness follows it anywhere."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(indices, jnp.uint32))


@dataclasses.dataclass(frozen=True)
class OptimizationSettings:
  """Stage 2's knobs (the attack config's `attack` section), resolved for one generator (hashable: it keys
  compiled code)."""
  num_steps: int
  learning_rate: float
  b1: float
  b2: float
  eps: float
  lr_schedule: str
  lr_milestones: tuple[int, ...]
  lr_gamma: float
  identity_loss: str
  discriminator_loss_weight: float
  clamp: bool
  center_crop: int
  resize: int
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  remat: str
  dtype: str
  xla_cpu_options: str

  @classmethod
  def from_config(cls, config, resolution: int) -> "OptimizationSettings":
    settings = cls(
        num_steps=int(config.num_steps), learning_rate=float(config.learning_rate), b1=float(config.b1),
        b2=float(config.b2), eps=float(config.eps), lr_schedule=str(config.lr_schedule),
        lr_milestones=tuple(int(m) for m in config.lr_milestones), lr_gamma=float(config.lr_gamma),
        identity_loss=str(config.identity_loss),
        discriminator_loss_weight=float(config.discriminator_loss_weight), remat=str(config.remat),
        **render.view_settings(config, resolution), **render.random_crop_settings(config))
    if settings.identity_loss not in IDENTITY_LOSSES:
      raise ValueError(f"Unknown identity_loss {settings.identity_loss!r}; choose one of {sorted(IDENTITY_LOSSES)}.")
    if settings.remat not in ("none", *REMAT_POLICIES):
      raise ValueError(f"Unknown remat {settings.remat!r}; choose 'none', 'dots' or 'full'.")
    if settings.lr_schedule not in ("constant", "multistep"):
      raise ValueError(f"Unknown lr_schedule {settings.lr_schedule!r}; choose 'constant' or 'multistep'.")
    if settings.num_steps < 0:
      raise ValueError(f"num_steps must be >= 0, got {settings.num_steps}.")
    return settings


def make_optimizer(settings: OptimizationSettings) -> optax.GradientTransformation:
  """Adam (PyTorch's update rule; elementwise, so latents never interact) with an optional step-decay schedule.

  'multistep' multiplies the learning rate by `lr_gamma` at every step in `lr_milestones`, like PyTorch's
  `MultiStepLR` stepped once per optimisation step.
  """
  learning_rate = settings.learning_rate
  if settings.lr_schedule == "multistep":
    learning_rate = optax.piecewise_constant_schedule(
        settings.learning_rate, {m: settings.lr_gamma for m in settings.lr_milestones})
  return optax.adam(learning_rate, b1=settings.b1, b2=settings.b2, eps=settings.eps)


def synthesis_fn(generator, settings: OptimizationSettings):
  """`synthesize(generator, generator_variables, w)`, rematerialised in the backward pass as `settings.remat`
  says."""
  synthesis = functools.partial(render.synthesize, generator)
  if settings.remat != "none":
    synthesis = jax.checkpoint(synthesis, policy=REMAT_POLICIES[settings.remat])
  return synthesis


def target_logits(images, step_keys, target_variables, *, target_model, settings: OptimizationSettings):
  """Float32 target logits `[B, K]` of each generated image `[B, R, R, C]`: the target's view of it, this step's
  random resized crop (`step_keys`, one per image), the target model."""
  view = render.target_view(images, clamp=settings.clamp, center_crop=settings.center_crop,
                            resize=settings.resize)
  view = image_ops.random_resized_crop(view, step_keys, settings.resize, settings.crop_scale, settings.crop_ratio)
  return target_model.apply(target_variables, view).astype(jnp.float32)


def identity_losses(images, targets, step_keys, target_variables, *, target_model, settings: OptimizationSettings):
  """Identity loss `[B]` of each generated image `[B, R, R, C]`: the configured identity loss of its
  `target_logits`."""
  logits = target_logits(images, step_keys, target_variables, target_model=target_model, settings=settings)
  return IDENTITY_LOSSES[settings.identity_loss](logits, targets)


def target_confidences(logits, targets):
  """The softmax probability `[B]` of each image's target class, from logits `[B, K]`."""
  return jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), targets[:, None], axis=1)[:, 0]


def _per_latent_losses(w, targets, step_keys, generator_variables, target_variables, discriminator_variables, *,
                       generator, target_model, discriminator, settings: OptimizationSettings):
  """Attack loss of each latent `[B]` (identity loss on an augmented view + weighted realism loss) and the
  target logits `[B, K]` of that view."""
  images = synthesis_fn(generator, settings)(generator_variables, w)
  loss = jnp.zeros(w.shape[0], jnp.float32)
  if settings.discriminator_loss_weight > 0:
    # One image at a time: the discriminator's minibatch-std layer would otherwise couple the latents.
    def realism_logit(image):
      return discriminator.apply(discriminator_variables, image[None], None)[0, 0]
    logits_d = jax.vmap(realism_logit)(images).astype(jnp.float32)
    loss = loss + settings.discriminator_loss_weight * jax.nn.softplus(-logits_d)
  logits = target_logits(images, step_keys, target_variables, target_model=target_model, settings=settings)
  return loss + IDENTITY_LOSSES[settings.identity_loss](logits, targets), logits


def keys_at_step(keys, step):
  """The keys `[B]` of attack step `step`: `fold_in(key of the latent, step)`."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)


def optimization_loop(gradient, w, opt_state, keys, settings: OptimizationSettings, carry=None):
  """`num_steps` Adam steps (`make_optimizer`) on `w` in one on-device loop; returns `(w, opt_state, carry)`.

  `gradient(step, w, step_keys, carry) -> (gradient w.r.t. w, carry)` is the gradient of the summed
  per-latent losses at `step`; `carry` (any pytree, None by default) lets an analysis keep its own state
  through the loop.
  """
  tx = make_optimizer(settings)

  def one_step(i, state):
    w, opt_state, carry = state
    grads, carry = gradient(i, w, keys_at_step(keys, i), carry)
    updates, opt_state = tx.update(grads, opt_state, w)
    return optax.apply_updates(w, updates), opt_state, carry

  return jax.lax.fori_loop(0, settings.num_steps, one_step, (w, opt_state, carry))


class Telemetry(NamedTuple):
  """Stage-2 statistics of one batch, computed on device from the target logits recorded at every step of the
  optimisation loop.

  `identity_loss` and `confidence` (the target's softmax probability of the target class) are
  `[num_steps + 1, 3]`: mean, min and max over the batch's counted latents. Row t < num_steps holds what the
  loss of step t saw (the latents before update t, on step t's augmented views: PPA's printout of each step);
  row num_steps the same for the returned latents, on the views of the keys of step num_steps.
  """
  identity_loss: jax.Array
  confidence: jax.Array

  def as_dict(self) -> dict[str, np.ndarray]:
    """`{'identity_loss_mean': [num_steps + 1], ..., 'confidence_max': ...}` on the host: the names the run's
    files and TensorBoard tags use."""
    host = parallel.to_host(tuple(self))
    return {f"{name}_{stat}": values[:, i] for name, values in zip(self._fields, host)
            for i, stat in enumerate(STATISTICS)}


STATISTICS = ("mean", "min", "max")


def batch_statistics(values, counted):
  """`[3]`: mean, min and max of `values` `[B]` over the entries where `counted` (bool `[B]`) is True."""
  mean = jnp.sum(jnp.where(counted, values, 0.0)) / jnp.sum(counted)
  return jnp.stack([mean, jnp.min(jnp.where(counted, values, jnp.inf)), jnp.max(jnp.where(counted, values, -jnp.inf))])


def _optimize(w, opt_state, targets, keys, counted, generator_variables, target_variables, discriminator_variables,
              *, generator, target_model, discriminator, settings: OptimizationSettings):
  """`num_steps` Adam steps on `w` in one on-device loop; returns the final `(w, opt_state, Telemetry)`.

  Each step's target logits (an output of the loss the gradient is taken of, `has_aux`) are written into a
  `[num_steps + 1, B, K]` buffer carried through the loop; the statistics are computed from it after the loop.
  Computing the identity loss inside the loop as well would let XLA share and fuse it with the gradient's
  own computation, which moves `w` by an ulp; the buffer keeps the gradient bit-identical to a loop
  without telemetry.
  """
  def loss_and_logits(w, step_keys):
    loss, logits = _per_latent_losses(
        w, targets, step_keys, generator_variables, target_variables, discriminator_variables,
        generator=generator, target_model=target_model, discriminator=discriminator, settings=settings)
    return jnp.sum(loss), logits

  def gradient(step, w, step_keys, logits_buffer):
    grads, logits = jax.grad(loss_and_logits, has_aux=True)(w, step_keys)
    return grads, logits_buffer.at[step].set(logits)

  logits_shape = jax.eval_shape(loss_and_logits, w, keys_at_step(keys, 0))[1]
  buffer = jnp.zeros((settings.num_steps + 1, *logits_shape.shape), jnp.float32)
  w, opt_state, buffer = optimization_loop(gradient, w, opt_state, keys, settings, buffer)
  _, final_logits = loss_and_logits(w, keys_at_step(keys, settings.num_steps))
  buffer = buffer.at[settings.num_steps].set(final_logits)

  def statistics(logits):  # [B, K] -> ([3], [3])
    return (batch_statistics(IDENTITY_LOSSES[settings.identity_loss](logits, targets), counted),
            batch_statistics(target_confidences(logits, targets), counted))

  identity_loss, confidence = jax.vmap(statistics)(buffer)
  return w, opt_state, Telemetry(identity_loss=identity_loss, confidence=confidence)


def _compiled(generator, target_model, discriminator, settings: OptimizationSettings):
  """`(init, run)`: jitted state initialisation and the jitted optimisation loop (w and Adam state donated)."""
  def build():
    def init(w_init):
      w = jnp.array(w_init, jnp.float32, copy=True)
      return w, make_optimizer(settings).init(w)

    def run(w, opt_state, targets, keys, counted, generator_variables, target_variables, discriminator_variables):
      return _optimize(w, opt_state, targets, keys, counted, generator_variables, target_variables,
                       discriminator_variables,
                       generator=generator, target_model=target_model, discriminator=discriminator,
                       settings=settings)

    return jax.jit(init), jax.jit(run, donate_argnums=(0, 1),
                                  compiler_options=xla_cpu.compiler_options(settings.xla_cpu_options))

  return render.cached_jit("optimize", (generator, target_model, discriminator), settings, build)


def _as_key_array(keys):
  keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
  return keys if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(keys)


def optimize_latents(w_init, targets, keys, *, generator, generator_variables, target_model, target_variables,
                     config, discriminator=None, discriminator_variables=None, mesh=None, counted=None,
                     return_telemetry: bool = False):
  """Optimises one batch of latents; returns the optimised `w` with the shape of `w_init` (and, with
  `return_telemetry`, the batch's `Telemetry`: `(w, telemetry)`).

  Args:
    w_init: `[B, 1, w_dim]` (one w per image, broadcast to all `num_ws` layers) or `[B, num_ws, w_dim]` (W+).
    targets: int `[B]`, the class each latent should become.
    keys: `[B]` PRNG keys, one per latent (augmentation randomness of step `t` is `fold_in(key, t)`).
    generator, generator_variables: StyleGAN2 `Generator` and its variables (frozen).
    target_model, target_variables: classifier taking `[B, H, W, 3]` in [-1, 1] (frozen, eval mode).
    config: the attack config's `attack` section (num_steps, learning_rate, b1, b2, eps, lr_schedule,
      lr_milestones, lr_gamma, identity_loss, discriminator_loss_weight, clamp, center_crop, resize,
      crop_scale, crop_ratio, remat, dtype).
    discriminator, discriminator_variables: StyleGAN2 discriminator, needed only if
      `config.discriminator_loss_weight > 0`.
    mesh: a `('data',)` mesh to shard the batch over (variables are replicated); None runs where the inputs are.
    counted: bool `[B]`, the latents the telemetry's statistics count (the attack's last batch repeats latents
      to fill the batch); None counts all. It never changes `w`.
    return_telemetry: also return the `Telemetry` (the same compiled loop runs either way, so `w` is the same).
  """
  init, run, w_init, arguments = _prepared(
      w_init, targets, keys, generator=generator, generator_variables=generator_variables, target_model=target_model,
      target_variables=target_variables, config=config, discriminator=discriminator,
      discriminator_variables=discriminator_variables, mesh=mesh, counted=counted)
  w, opt_state = init(w_init)
  w, _, telemetry = run(w, opt_state, *arguments)
  return (w, telemetry) if return_telemetry else w


def lower_optimization(w_init, targets, keys, **kwargs) -> jax.stages.Lowered:
  """The optimisation loop of `optimize_latents(w_init, targets, keys, **kwargs)` lowered for those arguments,
  with the compiler options it runs with: `.compile().cost_analysis()` reads the executable that runs."""
  init, run, w_init, arguments = _prepared(w_init, targets, keys, **kwargs)
  return run.lower(*init(w_init), *arguments)


def _prepared(w_init, targets, keys, *, generator, generator_variables, target_model, target_variables, config,
              discriminator=None, discriminator_variables=None, mesh=None, counted=None):
  """`(init, run, w_init, arguments)`: the compiled functions of `optimize_latents` and their checked, placed
  inputs (`run(*init(w_init), *arguments)` is the optimisation)."""
  settings = OptimizationSettings.from_config(config, generator.img_resolution)
  if settings.discriminator_loss_weight > 0 and discriminator is None:
    raise ValueError("config.discriminator_loss_weight > 0 needs a discriminator; pass discriminator= and "
                     "discriminator_variables=, or set the weight to 0.")
  if settings.discriminator_loss_weight == 0:
    discriminator, discriminator_variables = None, None
  w_init = jnp.asarray(w_init) if not isinstance(w_init, jax.Array) else w_init
  if w_init.ndim != 3 or w_init.shape[1] not in (1, generator.num_ws) or w_init.shape[2] != generator.w_dim:
    raise ValueError(f"w_init must have shape [B, 1 or {generator.num_ws}, {generator.w_dim}], got {w_init.shape}.")
  targets = jnp.asarray(targets, jnp.int32)
  keys = _as_key_array(keys)
  counted = np.ones(w_init.shape[:1], bool) if counted is None else np.asarray(counted, bool)
  if not targets.shape == keys.shape == counted.shape == w_init.shape[:1]:
    raise ValueError(f"targets {targets.shape}, keys {keys.shape} and counted {counted.shape} need one entry per "
                     f"latent (w_init has {w_init.shape[0]}).")
  if not counted.any():
    raise ValueError("counted must count at least one latent.")
  variables = (generator_variables, target_variables, discriminator_variables)
  if mesh is not None:
    parallel.check_batch_size(w_init.shape[0], mesh, "attack batch size")
    w_init, targets, keys, counted = jax.device_put((w_init, targets, keys, counted), parallel.data_sharding(mesh))
    variables = parallel.replicate(variables, mesh)
  else:
    counted = jnp.asarray(counted)
  generator = render.with_compute_dtype(generator, settings.dtype)
  target_model = render.with_compute_dtype(target_model, settings.dtype)
  if discriminator is not None:
    discriminator = render.with_compute_dtype(discriminator, settings.dtype)
  init, run = _compiled(generator, target_model, discriminator, settings)
  return init, run, w_init, (targets, keys, counted, *variables)
