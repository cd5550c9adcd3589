"""Gradient stability of the attack (the paper's Fig. 6b, Eq. 4): do consecutive attack steps agree on a direction?

For every latent and step t of the Plug & Play optimisation, the cosine similarity between the gradients of the
attack loss w.r.t. the generated image at steps t-1 and t. The optimisation itself is the attack's
(`jaxmia.attack.optimize`: its loop, Adam, image pipeline, augmentation keys and identity loss); only each
step's gradient is taken through the generated image, so that its image-space gradient is seen.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import parallel
from jaxmia.attack import optimize, render
from jaxmia.models import xla_cpu


def cosine_similarity(a, b, axis=None):
  """Cosine similarity of `a` and `b` over the non-batch axes (`axis`, default: all but the first): `[B]`.

  NaN where one of the two vectors is zero.
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  axis = tuple(range(1, a.ndim)) if axis is None else axis
  dot = jnp.sum(a * b, axis=axis)
  norms = jnp.sqrt(jnp.sum(a * a, axis=axis) * jnp.sum(b * b, axis=axis))
  return jnp.where(norms > 0, dot / jnp.where(norms > 0, norms, 1.0), jnp.nan)


def consecutive_cosine_similarity(gradients):
  """`[T - 1, B]` similarities between steps t-1 and t of `gradients` `[T, B, ...]` (Eq. 4 of the paper)."""
  gradients = jnp.asarray(gradients)
  return jax.vmap(cosine_similarity)(gradients[:-1], gradients[1:])


def _trajectory(w, targets, keys, generator_variables, target_variables, *, generator, target_model, settings):
  """Stage-2 loop of the attack that also returns the image-gradient similarities, `(w, [B, num_steps - 1])`.

  The attack's own loop, loss and augmentation keys (`optimize.optimization_loop`, `optimize.identity_losses`);
  each step's gradient w.r.t. w is taken through the image, so the image-space gradient can be compared with
  the previous step's.
  """
  synthesis = optimize.synthesis_fn(generator, settings)

  def image_loss(images, targets, step_keys):
    return jnp.sum(optimize.identity_losses(images, targets, step_keys, target_variables, target_model=target_model,
                                            settings=settings))

  def gradient(step, w, step_keys, carry):
    previous, similarity = carry
    images, pullback = jax.vjp(lambda w: synthesis(generator_variables, w), w)
    grad_images = jax.grad(image_loss)(images, targets, step_keys)
    (grad_w,) = pullback(grad_images)
    similarity = similarity.at[step].set(cosine_similarity(previous, grad_images))
    return grad_w, (grad_images.astype(jnp.float32), similarity)

  w = jnp.asarray(w, jnp.float32)
  images = jax.eval_shape(lambda w: synthesis(generator_variables, w), w)
  carry = (jnp.zeros(images.shape, jnp.float32), jnp.zeros((settings.num_steps, w.shape[0]), jnp.float32))
  w, _, (_, similarity) = optimize.optimization_loop(gradient, w, optimize.make_optimizer(settings).init(w), keys,
                                                     settings, carry)
  return w, similarity[1:].T


def compiled_trajectory(generator, target_model, settings):
  """`fn(w, targets, keys, generator_variables, target_variables) -> (w, similarity)`, jitted once per setup
  (with the attack step's compiler options, so that its latents are the attack's)."""
  return render.cached_jit("gradient_similarity", (generator, target_model), settings, lambda: jax.jit(
      functools.partial(_trajectory, generator=generator, target_model=target_model, settings=settings),
      compiler_options=xla_cpu.step_compiler_options()))


def resolve_settings(config, generator, target_model):
  """(settings, generator, target_model) for `config` (the attack section), models in its compute dtype."""
  settings = optimize.OptimizationSettings.from_config(config, generator.img_resolution)
  if settings.discriminator_loss_weight > 0:
    raise ValueError("the gradient-stability analysis does not support the discriminator realism loss; set "
                     "attack.discriminator_loss_weight=0.")
  if settings.num_steps < 2:
    raise ValueError(f"gradient similarity needs at least 2 attack steps, got num_steps={settings.num_steps}.")
  return (settings, render.with_compute_dtype(generator, settings.dtype),
          render.with_compute_dtype(target_model, settings.dtype))


def attack_gradient_similarity(w_init, targets, keys, *, generator, generator_variables, target_model,
                               target_variables, config):
  """Runs the attack's stage-2 optimisation and returns `(w_final, similarity [B, num_steps - 1])`.

  `similarity[i, t - 1]` is the cosine similarity of latent i's image-space loss gradients at steps t-1 and t
  (the gradient w.r.t. the generator output, before crop, resize and augmentation, which are part of the loss).
  Arguments as `jaxmia.attack.optimize_latents` (`config`: the attack config's `attack` section); the
  discriminator realism loss is not supported. `w_final` equals `optimize_latents`' result.
  """
  settings, generator, target_model = resolve_settings(config, generator, target_model)
  if not jax.dtypes.issubdtype(jnp.asarray(keys).dtype, jax.dtypes.prng_key):
    keys = jax.random.wrap_key_data(keys)
  run = compiled_trajectory(generator, target_model, settings)
  return run(w_init, jnp.asarray(targets, jnp.int32), keys, generator_variables, target_variables)


def random_attack_inputs(key, num_latents: int, num_classes: int, *, generator, generator_variables, config):
  """`(w [N, 1 or num_ws, w_dim], targets [N], keys [N])`: random latents and target classes for the analysis.

  z ~ N(0, I) mapped with the stage-1 truncation (`config.candidates`), one w per image if
  `config.attack.single_w`; targets uniform over `num_classes`; per-latent keys as the attack derives them.
  The same `key` gives the same inputs for every target model of that many classes (a paired comparison).
  """
  z = jax.random.normal(jax.random.fold_in(key, 1), (num_latents, generator.z_dim), jnp.float32)
  targets = jax.random.randint(jax.random.fold_in(key, 2), (num_latents,), 0, num_classes, jnp.int32)
  keys = optimize.latent_keys(jax.random.fold_in(key, 3), np.arange(num_latents))
  mapping = jax.jit(lambda v, z: generator.apply(
      v, z, None, truncation_psi=float(config.candidates.truncation_psi),
      truncation_cutoff=int(config.candidates.truncation_cutoff), method="mapping"))
  w = parallel.map_arrays(lambda z: mapping(generator_variables, z), (np.asarray(z),),
                          int(config.candidates.batch_size))
  return (w[:, :1] if config.attack.single_w else w), np.asarray(targets), keys


def similarity_for_latents(w, targets, keys, *, generator, generator_variables, target_model, target_variables,
                           config, batch_size: int, mesh=None, progress=None):
  """`[N, num_steps - 1]` image-gradient similarities of all latents, computed `batch_size` at a time.

  `config` is the attack config's `attack` section; with a `mesh` each batch is sharded over `'data'`.
  """
  settings, generator, target_model = resolve_settings(config, generator, target_model)
  run = compiled_trajectory(generator, target_model, settings)
  if mesh is not None:
    generator_variables, target_variables = parallel.replicate((generator_variables, target_variables), mesh)
  return parallel.map_arrays(lambda w, t, k: run(w, t, k, generator_variables, target_variables)[1],
                             (np.asarray(w, np.float32), np.asarray(targets, np.int32), keys), batch_size,
                             mesh=mesh, progress=progress)
