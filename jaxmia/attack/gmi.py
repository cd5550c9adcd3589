"""GMI (Zhang et al., CVPR 2020, "The Secret Revealer"): white-box inversion through a public-data WGAN-GP prior.

For each attacked class, `restarts` latents `z ~ N(0, I)` of GMI's generator G (`jaxmia.models.dcgan`) are each
optimised to minimise

    loss(z) = -D(G(z)) + identity_weight * CE(T(G(z)), class)

(the prior loss: the WGAN critic D's score, high on realistic images; the identity loss: the target T's
cross-entropy) by the official update (`Celeba/attack.py` of AI-secure/GMI-Attack), a Nesterov-form momentum
step followed by clipping every coordinate of z:

    v' = momentum * v - lr * grad;   z' = clip(z - momentum * v + (1 + momentum) * v', -clip, clip)

with the official defaults: 1,500 iterations, lr 0.02, momentum 0.9, identity weight 100, clip 1, 5 restarts.
Per class, the restart whose final image the target gives the largest logit of the class is selected (the
official choice; `samples_per_target` keeps more).

Per-latent independence: the official code averages the two losses over its batch of 100 identities, so each
latent moves along its own loss gradient divided by 100. Here each latent's loss is its own, divided by the fixed
`loss_batch` (official 100), and G (BatchNorm with running statistics), D (InstanceNorm) and T (inference mode)
process every image on its own, so a latent's trajectory does not depend on the batch it is optimised in, the
batch size or the device count. Latent k of class c starts from `fold_in(fold_in(fold_in(seed key, 2), c), k)`
(`brep.class_keys`): the same whichever other classes are attacked.

The target sees `render.target_view` of G's image (clamp, centre crop, resize: the `attack` section's fields,
read by `jaxmia.evaluate` too); D sees G's image. Latents are stored as `[N, 1, latent_dim]` rows, which the
generator renders through the StyleGAN2 interface (`dcgan.Generator.synthesis`), so `jaxmia.evaluate`,
`jaxmia.report` and the grids read a GMI run like any other.

`run_gmi(config, workdir)` (`config.kind = 'gmi'` in `jaxmia.attack.run`) writes the PPA run layout with
`gmi/batch_00000.npz` per finished batch of latents; see its docstring.
"""
import dataclasses
import json
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import jaxmia
from jaxmia import cli, files, parallel, report
from jaxmia.attack import brep, layout, render
from jaxmia.attack.render import ViewSettings
from jaxmia.cli import number, one_of
from jaxmia.models import xla_cpu


@dataclasses.dataclass(frozen=True)
class GmiSettings:
  """The optimisation's knobs (the GMI attack config's `attack` section; hashable: it keys compiled code)."""
  iterations: int = 1500          # official 1500
  learning_rate: float = 0.02     # official 2e-2
  momentum: float = 0.9           # official 0.9
  identity_weight: float = 100.0  # official lamda 100: weight of the target's cross-entropy
  prior_weight: float = 1.0       # weight of the prior loss -D(G(z)) (official 1; 0 leaves the identity loss)
  clip: float = 1.0               # official clip_range 1: z clipped to [-clip, clip] after every step
  loss_batch: int = 100           # the official batch of identities its mean losses divide by

  @classmethod
  def from_config(cls, config) -> "GmiSettings":
    return cls(iterations=int(config.iterations), learning_rate=float(config.learning_rate),
               momentum=float(config.momentum), identity_weight=float(config.identity_weight),
               prior_weight=float(config.prior_weight), clip=float(config.clip), loss_batch=int(config.loss_batch))


class Losses(NamedTuple):
  """Per-latent values `[B]` of one evaluation of the objective."""
  total: jax.Array       # (prior_weight * prior + identity_weight * identity) / loss_batch
  prior: jax.Array       # -D(G(z))
  identity: jax.Array    # CE(T(view(G(z))), target)
  target_logit: jax.Array  # the target's logit of the class (what the final selection ranks)


def latent_losses(z, targets, *, image_fn: Callable, critic_fn: Callable, logits_fn: Callable,
                  settings: GmiSettings) -> Losses:
  """GMI's objective of each latent `z` `[B, latent_dim]` for its class `targets` `[B]`.

  `image_fn(z) -> [B, R, R, C]` is G, `critic_fn(images) -> [B]` is D and `logits_fn(images) -> [B, K]` is the
  target on its view of the images; each must treat every image on its own (inference mode).
  """
  images = image_fn(z)
  prior = -critic_fn(images).astype(jnp.float32)
  logits = logits_fn(images).astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  identity = -jnp.take_along_axis(log_probs, targets[:, None], axis=1)[:, 0]
  total = (settings.prior_weight * prior + settings.identity_weight * identity) / settings.loss_batch
  return Losses(total, prior, identity, jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0])


class GmiState(NamedTuple):
  """The optimisation state of a batch of latents (leading axis B)."""
  z: jax.Array          # [B, latent_dim]
  velocity: jax.Array   # [B, latent_dim]
  step: jax.Array       # int32 []: finished iterations


def init_state(z) -> GmiState:
  z = jnp.asarray(z, jnp.float32)
  return GmiState(z, jnp.zeros_like(z), jnp.zeros((), jnp.int32))


def momentum_step(z, velocity, grad, settings: GmiSettings):
  """The official update `(z', v')`: `v' = m v - lr g`, `z' = clip(z - m v + (1 + m) v')`."""
  new_velocity = settings.momentum * velocity - settings.learning_rate * grad
  moved = z - settings.momentum * velocity + (1 + settings.momentum) * new_velocity
  return jnp.clip(moved, -settings.clip, settings.clip), new_velocity


def optimize(state: GmiState, targets, loss_fn: Callable, settings: GmiSettings, num_steps: int) -> GmiState:
  """`num_steps` GMI iterations of every latent (one on-device loop, stopping at `settings.iterations`).
  `loss_fn(z, targets) -> Losses`; each latent's gradient is that of its own `total`."""
  grad_fn = jax.grad(lambda z: jnp.sum(loss_fn(z, targets).total))

  def body(_, state):
    z, velocity = jax.lax.cond(state.step < settings.iterations,
                               lambda: momentum_step(state.z, state.velocity, grad_fn(state.z), settings),
                               lambda: (state.z, state.velocity))
    return GmiState(z, velocity, jnp.minimum(state.step + 1, settings.iterations))

  return jax.lax.fori_loop(0, num_steps, body, state)


def initial_latents(keys, latent_dim: int) -> jax.Array:
  """`z ~ N(0, I)` `[B, latent_dim]`, one draw per latent key `[B]`."""
  return jax.vmap(lambda k: jax.random.normal(k, (latent_dim,), jnp.float32))(keys)


# ------------------------------------------------------------------------------------------------------------
# The networks, compiled once per (networks, view, settings, chunk).

def network_losses(generator, discriminator, target_model, view: ViewSettings, settings: GmiSettings):
  """`(z, targets, variables) -> Losses` with `variables = (G, D, T variables)`."""
  def losses(z, targets, variables):
    g_vars, d_vars, t_vars = variables
    view_fn = lambda images: render.target_view(images, clamp=view.clamp, center_crop=view.center_crop,
                                                resize=view.resize)
    return latent_losses(z, targets, image_fn=lambda z: generator.apply(g_vars, z),
                         critic_fn=lambda x: discriminator.apply(d_vars, x),
                         logits_fn=lambda x: target_model.apply(t_vars, view_fn(x)), settings=settings)

  return losses


def _compiled(generator, discriminator, target_model, view: ViewSettings, settings: GmiSettings, chunk: int):
  def build():
    losses = network_losses(generator, discriminator, target_model, view, settings)

    def run(state, targets, variables):
      return optimize(state, targets, lambda z, t: losses(z, t, variables), settings, chunk)

    options = xla_cpu.compiler_options(view.xla_cpu_options)
    return jax.jit(run, compiler_options=options), jax.jit(losses, compiler_options=options)

  return render.cached_jit("gmi", (generator, discriminator, target_model), (view, settings, chunk), build)


def attack_latents(z_init, targets, *, generator, generator_variables, discriminator, discriminator_variables,
                   target_model, target_variables, settings: GmiSettings, view: ViewSettings, mesh=None,
                   steps_per_call: int = 100, progress: Callable[[int], None] | None = None):
  """GMI's optimisation of one batch of latents; returns `(z [B, latent_dim], Losses of z)` on the host.

  `z_init` `[B, latent_dim]`, `targets` int `[B]`; `mesh`: a `('data',)` mesh to shard the batch over (B
  divisible by its devices), None runs where the inputs are. `progress(step)` after every call of
  `steps_per_call` iterations.
  """
  generator, discriminator, target_model = (render.with_compute_dtype(m, view.dtype)
                                            for m in (generator, discriminator, target_model))
  z_init, targets = jnp.asarray(z_init, jnp.float32), jnp.asarray(targets, jnp.int32)
  variables = (generator_variables, discriminator_variables, target_variables)
  if mesh is not None:
    parallel.check_batch_size(z_init.shape[0], mesh, "GMI batch size")
    z_init, targets = jax.device_put((z_init, targets), parallel.data_sharding(mesh))
    variables = parallel.replicate(variables, mesh)
  run, losses = _compiled(generator, discriminator, target_model, view, settings, int(steps_per_call))
  state = init_state(z_init)
  for _ in range(-(-settings.iterations // int(steps_per_call))):
    state = run(state, targets, variables)
    if progress is not None:
      progress(int(state.step))
  return parallel.to_host(state.z), Losses(*parallel.to_host(tuple(losses(state.z, targets, variables))))


def select_best(targets, scores, per_class: int) -> np.ndarray:
  """Rows `[M]` kept: for each class (ascending), its `per_class` latents of largest `scores` (ties: first)."""
  targets, scores = np.asarray(targets), np.asarray(scores)
  kept = [np.flatnonzero(targets == c)[np.argsort(-scores[targets == c], kind="stable")[:per_class]]
          for c in np.unique(targets)]
  return np.concatenate(kept).astype(np.int64)


# ------------------------------------------------------------------------------------------------------------
# The run: config.kind = 'gmi'.

_STATE = ("gmi/*.npz", "latents.npz", "summary.json")
_OUTPUTS = _STATE + ("gmi", "images", report.EVALUATION_DIR, "*.tmp")
_RESULTS = ("initial_w", "w", "total", "prior", "identity", "target_logit")

CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("overwrite", "True or False", one_of(True, False)),
    ("attack.restarts", "a positive integer", layout.positive_int),
    ("attack.steps_per_call", "a positive integer", layout.positive_int),
    ("attack.iterations", "an integer >= 0", number(0, integer=True)),
    ("attack.learning_rate", "> 0", number(0, low_open=True)),
    ("attack.momentum", "in [0, 1)", number(0, 1, high_open=True)),
    ("attack.identity_weight", ">= 0", number(0)),
    ("attack.prior_weight", ">= 0", number(0)),
    ("attack.clip", "> 0", number(0, low_open=True)),
    ("attack.loss_batch", "a positive integer", layout.positive_int),
    ("attack.samples_per_target", "a positive integer", layout.positive_int),
    ("output.images_per_class", "an integer >= 0 (0: no grids)", number(0, integer=True)),
    ("output.image_size", "a positive integer", layout.positive_int),
)


def validate_config(config) -> None:
  """Every range-limited field of a GMI config (`CONFIG_RULES` and run.py's view fields of the `attack` section,
  batch_size among them), checked before any work: one `ValueError` naming them all."""
  cli.check_config(config, CONFIG_RULES + tuple(layout.view_rules("attack")))
  if int(config.attack.samples_per_target) > int(config.attack.restarts):
    raise ValueError(f"config.attack.samples_per_target={config.attack.samples_per_target} exceeds the "
                     f"{config.attack.restarts} restarts per class (config.attack.restarts).")


def run_gmi(config, workdir) -> dict:
  """Runs (or resumes) GMI as `config` (configs/attack_gmi_numbers.py) describes; returns the summary.

  Workdir: `run.json` (resume fingerprint: the config without presentation fields and the digests of the
  generator, discriminator and target weights), `gmi/batch_00000.npz` per finished batch of latents (starting
  and final z, final losses), `latents.npz` (the PPA layout: targets, initial_w, optimized_w `[N, 1, latent_dim]`,
  final_scores = the target's logit of the class, selected_indices/_w/_targets/_scores, plus prior_loss and
  identity_loss), `images/class_XXXX.png` and `summary.json`. Latents are ordered class-major (class c's
  restarts together); a rerun skips finished batches.
  """
  validate_config(config)
  settings = GmiSettings.from_config(config.attack)
  workdir = files.check_workdir(workdir)
  mesh = parallel.make_mesh()
  batch_size = int(config.attack.batch_size)
  parallel.check_batch_size(batch_size, mesh, "attack.batch_size")

  generator, generator_variables = layout.load_weights(config.generator, "GMI generator", "generator")
  discriminator, discriminator_variables = layout.load_weights(config.discriminator, "GMI discriminator",
                                                            "discriminator")
  target_model, target_variables = layout.load_weights(config.target, "Target model", "target")
  view = layout.view_of(config, "attack", generator.img_resolution)
  record = layout.fingerprint(config, generator_variables=generator_variables,
                                  target_variables=target_variables, discriminator_variables=discriminator_variables)
  num_classes = layout.count_classes(target_model, target_variables, view.resize)
  classes = layout.resolve_targets(config.targets, num_classes)
  restarts = int(config.attack.restarts)
  targets = np.repeat(classes, restarts)
  num_latents = len(targets)

  layout.claim_workdir(workdir, record, state=_STATE, outputs=_OUTPUTS, overwrite=bool(config.get("overwrite", False)))
  (workdir / "gmi").mkdir(exist_ok=True)
  seed_key = jax.random.key(config.seed)
  keys = brep.class_keys(jax.random.fold_in(seed_key, 2), classes, restarts)
  logging.info("GMI on %d classes x %d restarts (%d latents) on %d device(s), %d iterations each; workdir %s.",
               len(classes), restarts, num_latents, mesh.devices.size, settings.iterations, workdir)

  t0 = time.monotonic()
  num_batches = -(-num_latents // batch_size)
  results = {name: [] for name in _RESULTS}
  report_progress = None
  for batch, start in enumerate(range(0, num_latents, batch_size)):
    stop = min(start + batch_size, num_latents)
    path = workdir / "gmi" / f"batch_{batch:05d}.npz"
    latent_shape = (stop - start, generator.z_dim)
    expected = {name: (latent_shape if name.endswith("w") else latent_shape[:1]) for name in _RESULTS}
    cached = layout.read_cached(path, expected) if path.exists() else None
    if cached is None:
      if report_progress is None:
        report_progress = layout.progress_bar(num_batches * settings.iterations, "iterations", "GMI",
                                               done=batch * settings.iterations)
      rows = np.minimum(np.arange(start, start + batch_size), num_latents - 1)  # the last batch repeats its end
      z_init = np.asarray(initial_latents(keys[rows], generator.z_dim))
      done = batch * settings.iterations
      z, losses = attack_latents(
          z_init, targets[rows], generator=generator, generator_variables=generator_variables,
          discriminator=discriminator, discriminator_variables=discriminator_variables, target_model=target_model,
          target_variables=target_variables, settings=settings, view=view, mesh=mesh,
          steps_per_call=int(config.attack.steps_per_call),
          progress=lambda step: report_progress(done + step))
      count = stop - start
      cached = {"initial_w": z_init[:count], "w": np.asarray(z)[:count],
                **{name: np.asarray(getattr(losses, name))[:count] for name in _RESULTS[2:]}}
      layout.save_npz(path, start=start, stop=stop, **cached)
      report_progress(done + settings.iterations,
                      f"batch {batch + 1}/{num_batches}: identity loss {np.mean(cached['identity']):.4g}, prior "
                      f"loss {np.mean(cached['prior']):.4g} (means)")
    for name in _RESULTS:
      results[name].append(cached[name])
  results = {name: np.concatenate(parts) for name, parts in results.items()}
  timings = {"attack_seconds": time.monotonic() - t0}

  initial_w, optimized_w = results["initial_w"][:, None], results["w"][:, None]
  scores = results["target_logit"]
  kept = select_best(targets, scores, int(config.attack.samples_per_target))
  layout.save_npz(
      workdir / "latents.npz", targets=targets, initial_w=initial_w, optimized_w=optimized_w, final_scores=scores,
      selected_indices=kept, selected_w=optimized_w[kept], selected_targets=targets[kept],
      selected_scores=scores[kept], prior_loss=results["prior"], identity_loss=results["identity"],
      total_loss=results["total"])
  layout.write_grids(workdir, optimized_w[kept], targets[kept], generator, generator_variables, config,
                          mesh)
  summary = {
      "kind": "gmi",
      "config": json.loads(config.to_json_best_effort()),
      "num_classes_attacked": len(classes),
      "num_latents": num_latents,
      "num_selected": len(kept),
      "final_losses": {name: {"mean": float(np.mean(results[name])), "min": float(np.min(results[name])),
                              "max": float(np.max(results[name]))} for name in ("identity", "prior", "total")},
      "mean_final_score_all": float(np.mean(scores)),
      "mean_final_score_selected": float(np.mean(scores[kept])),
      "timings": timings,
      "devices": [str(d) for d in mesh.devices.flat],
      "versions": {"jaxmia": jaxmia.__version__, "jax": jax.__version__},
  }
  layout.save_json(workdir / "summary.json", summary)
  final = summary["final_losses"]
  logging.info("Done: GMI optimised %d latents (identity loss %.4g, prior loss %.4g, means); kept %d; results in "
               "%s.", num_latents, final["identity"]["mean"], final["prior"]["mean"], len(kept), workdir)
  return summary
