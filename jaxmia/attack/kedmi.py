"""KED-MI (Chen et al., ICCV 2021): distributional model inversion with an inversion-specific GAN.

Instead of one latent per class, the attack learns a Gaussian distribution `N(mu, diag(exp(log_var)))` over the
generator's latent space for every target class (the official `dist_inversion` of `attack.py` in
SCccc21/Knowledge-Enriched-DMI). Each optimisation step of class y:

1. draws `samples_per_step` latents by reparameterisation, `z = mu + exp(log_var / 2) * eps`, `eps ~ N(0, I)`
   (official: one per class and step), so the loss is differentiable in `(mu, log_var)`;
2. renders them with the GAN's generator (BatchNorm with its running statistics) and scores the images with
   KED-MI's discriminator (`jaxmia.models.kedmi_discriminator`) and the target;
3. minimises `prior + identity_weight * identity`: the prior loss
   `mean softplus(lse(D logits)) - mean lse(D logits)` (= mean softplus(-lse): the images should be real for the
   (K+1)-class discriminator, whose fake logit is 0) and the target's cross-entropy of class y (official; the
   max-margin loss `max_{k != y} logit_k - logit_y` is the option of later toolboxes), official weight 100;
4. takes one Adam step on `(mu, log_var)` (official lr 0.02, PyTorch's default betas and eps).

`mu` starts at 0 and `log_var` at 1 (official), the official recovery runs 2,400 steps, and the result of a
class is `num_samples` latents drawn from its learned distribution (official: 5, one per evaluation seed); they
are the run's latents (`latents.npz`: `optimized_w` `[N, 1, latent_dim]`, all selected), rendered by
`jaxmia.evaluate` through the generator's StyleGAN2-style `synthesis` (`jaxmia.models.dcgan`).

Where this differs from the official code, for per-class independence: the official loss averages over the
batch of classes (a class's gradient is scaled by 1 / batch; Adam undoes that scale up to its eps), and its
discriminator scores all classes' images as one minibatch, so minibatch discrimination couples classes. Here
every class is its own problem (its loss is the official loss of a batch of one class; the discriminator's
minibatch is that class's `samples_per_step` images, which with the official single sample gives minibatch
features 0), so a class's distribution depends only on the seed and its class, not on the batch it runs in.
The official code also clamps a detached copy of z to [-1, 1] that only its progress printout uses; nothing of
that is reproduced.

Batching: the classes of a batch are vmapped (one jitted `lax.scan` of `steps_per_call` steps at a time), the
class axis sharded over the device mesh. Keys: step t of class c draws from `fold_in(fold_in(fold_in(seed key,
2), c), t)`, its final samples from `fold_in(fold_in(fold_in(seed key, 3), c), j)`.

`run_kedmi(config, workdir)` (configs/attack_kedmi_numbers.py, configs/attack_kedmi_celeba64.py) is the
resumable runner behind `python -m jaxmia.attack` for `config.kind = 'kedmi'`; it writes the PPA run layout
(`run.json`, `latents.npz`, `summary.json`, `images/`) and one `kedmi/batch_NNNNN.npz` per finished batch of
classes, reusing `jaxmia.attack.run`'s helpers (the two modules import each other; neither reads the other at
import time).
"""
import dataclasses
import json
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

import jaxmia
from jaxmia import cli, files, parallel, report
from jaxmia.attack import layout, render
from jaxmia.attack.render import ViewSettings
from jaxmia.cli import number, one_of
from jaxmia.models import xla_cpu
from jaxmia.models.kedmi_discriminator import MinibatchDiscriminator, realness_logit

IDENTITY_LOSSES = ("ce", "max_margin")


@dataclasses.dataclass(frozen=True)
class KedmiSettings:
  """The optimisation's knobs (the KED-MI attack config's `attack` section; hashable: it keys compiled code)."""
  iterations: int = 2400          # Adam steps per class (official recovery.py: 2400)
  learning_rate: float = 0.02     # official
  b1: float = 0.9                 # PyTorch's Adam defaults, as the official optimiser
  b2: float = 0.999
  eps: float = 1e-8
  identity_weight: float = 100.0  # lambda of the identity loss (official 100)
  identity_loss: str = "ce"       # 'ce' (official) or 'max_margin'
  samples_per_step: int = 1       # latents drawn per class and step (official 1)
  init_mu: float = 0.0            # official start of mu
  init_log_var: float = 1.0       # official start of log_var

  @classmethod
  def from_config(cls, config) -> "KedmiSettings":
    return cls(iterations=int(config.iterations), learning_rate=float(config.learning_rate), b1=float(config.b1),
               b2=float(config.b2), eps=float(config.eps), identity_weight=float(config.identity_weight),
               identity_loss=str(config.identity_loss), samples_per_step=int(config.samples_per_step),
               init_mu=float(config.init_mu), init_log_var=float(config.init_log_var))

  def optimizer(self) -> optax.GradientTransformation:
    return optax.adam(self.learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)


# ------------------------------------------------------------------------------------------------------------
# Losses and sampling (pure functions).

def prior_loss(discriminator_logits):
  """KED-MI's prior loss of D's logits `[S, K]`: `mean softplus(lse) - mean lse` (the official form)."""
  lse = realness_logit(discriminator_logits)
  return jnp.mean(jax.nn.softplus(lse)) - jnp.mean(lse)


def identity_loss(logits, target: int, kind: str = "ce"):
  """The target's loss `[]` over a class's samples, logits `[S, num_classes]`: mean cross-entropy of `target`
  ('ce'), or mean `max_{k != target} logit_k - logit_target` ('max_margin')."""
  logits = logits.astype(jnp.float32)
  if kind == "ce":
    return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, target])
  if kind == "max_margin":
    own = logits[:, target]
    others = jnp.where(jnp.arange(logits.shape[-1]) == target, -jnp.inf, logits)
    return jnp.mean(jnp.max(others, axis=-1) - own)
  raise ValueError(f"Unknown identity loss {kind!r}; use one of {IDENTITY_LOSSES}.")


def reparameterize(mu, log_var, eps):
  """`mu + exp(log_var / 2) * eps`: samples `[S, D]` of `N(mu, diag(exp(log_var)))` from `eps ~ N(0, I)` `[S, D]`
  (differentiable in `mu` `[D]` and `log_var` `[D]`)."""
  return mu + jnp.exp(0.5 * log_var) * eps


def sample_latents(key, mu, log_var, num: int):
  """`num` latents `[num, D]` of one class's distribution; latent j from `fold_in(key, j)`."""
  eps = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), mu.shape))(jnp.arange(num))
  return reparameterize(mu, log_var, eps)


class ScoreFns(NamedTuple):
  """The frozen networks as functions of latents (the attack's only access to them)."""
  discriminator_logits: Callable  # (variables, images [S, R, R, 3]) -> [S, K]
  target_logits: Callable         # (variables, images [S, R, R, 3]) -> [S, num_classes]
  generate: Callable              # (variables, z [S, D]) -> images [S, R, R, 3]


def score_fns(generator, discriminator, target_model, view: ViewSettings) -> ScoreFns:
  def target_logits(variables, images):
    inputs = render.target_view(images, clamp=view.clamp, center_crop=view.center_crop, resize=view.resize)
    return target_model.apply(variables, inputs)

  return ScoreFns(discriminator_logits=lambda v, images: discriminator.apply(v, images)[1],
                  target_logits=target_logits, generate=lambda v, z: generator.apply(v, z))


def class_loss(params, key, target, variables, fns: ScoreFns, settings: KedmiSettings):
  """One class's loss `(total, (prior, identity))` for `params = {'mu': [D], 'log_var': [D]}`, with
  `samples_per_step` latents drawn from `key`; `variables = (generator, discriminator, target)` variables."""
  generator_variables, discriminator_variables, target_variables = variables
  eps = jax.random.normal(key, (settings.samples_per_step, params["mu"].shape[-1]))
  images = fns.generate(generator_variables, reparameterize(params["mu"], params["log_var"], eps))
  prior = prior_loss(fns.discriminator_logits(discriminator_variables, images))
  identity = identity_loss(fns.target_logits(target_variables, images), target, settings.identity_loss)
  return prior + settings.identity_weight * identity, (prior, identity)


class DistState(NamedTuple):
  """The distributions of a batch of classes (leading axis B) and their Adam states."""
  params: dict        # {'mu': [B, D], 'log_var': [B, D]}
  opt_state: object   # optax Adam state, each leaf with leading axis B
  step: jax.Array     # [] int32: steps done


def init_state(num_classes: int, latent_dim: int, settings: KedmiSettings) -> DistState:
  params = {"mu": jnp.full((num_classes, latent_dim), settings.init_mu, jnp.float32),
            "log_var": jnp.full((num_classes, latent_dim), settings.init_log_var, jnp.float32)}
  return DistState(params, jax.vmap(settings.optimizer().init)(params), jnp.zeros((), jnp.int32))


def optimize(state: DistState, targets, keys, variables, fns: ScoreFns, settings: KedmiSettings, num_steps: int):
  """`num_steps` Adam steps of every class (vmapped), or fewer where `settings.iterations` ends first (the
  remaining steps leave the state as it is and report NaN losses, so every call has one compiled length).
  Returns the new state and the per-step losses `(prior, identity)`, each `[num_steps, B]`. Step t of class b
  draws from `fold_in(keys[b], t)`."""
  opt = settings.optimizer()

  def one_class(params, opt_state, key, target, step):
    grads, losses = jax.grad(class_loss, has_aux=True)(params, jax.random.fold_in(key, step), target, variables,
                                                       fns, settings)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, losses

  def body(state, _):
    params, opt_state, losses = jax.vmap(one_class, in_axes=(0, 0, 0, 0, None))(
        state.params, state.opt_state, keys, targets, state.step)
    live = state.step < settings.iterations
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(live, a, b), new, old)
    losses = jax.tree.map(lambda x: jnp.where(live, x, jnp.nan), losses)
    return DistState(keep(params, state.params), keep(opt_state, state.opt_state),
                     state.step + live.astype(jnp.int32)), losses

  return jax.lax.scan(body, state, length=num_steps)


def final_samples(params, keys, num: int):
  """`num` latents `[B, num, D]` of each class's learned distribution (class b's from `keys[b]`)."""
  return jax.vmap(sample_latents, in_axes=(0, 0, 0, None))(keys, params["mu"], params["log_var"], num)


def class_keys(key, classes):
  """`fold_in(key, c)` for every class `c` of `classes` `[B]`."""
  return jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.asarray(np.asarray(classes), jnp.uint32))


# ------------------------------------------------------------------------------------------------------------
# One batch of classes on the devices.

def _compiled(fns: ScoreFns, cache_modules, view: ViewSettings, settings: KedmiSettings, chunk: int,
              num_samples: int, latent_dim: int, mesh):
  def build():
    def run(state, targets, keys, variables):
      return optimize(state, targets, keys, variables, fns, settings, chunk)

    def finish(params, sample_keys, targets, variables):
      z = final_samples(params, sample_keys, num_samples)                       # [B, n, D]
      images = jax.vmap(fns.generate, in_axes=(None, 0))(variables[0], z)
      logits = jax.vmap(fns.target_logits, in_axes=(None, 0))(variables[2], images).astype(jnp.float32)
      probs = jax.nn.softmax(logits, axis=-1)
      return z, jnp.sum(probs * jax.nn.one_hot(targets, probs.shape[-1])[:, None], axis=-1)

    options = xla_cpu.compiler_options(view.xla_cpu_options)
    return jax.jit(run, compiler_options=options), jax.jit(finish, compiler_options=options)

  return render.cached_jit("kedmi", cache_modules, (view, settings, chunk, num_samples, latent_dim, mesh), build)


class BatchResult(NamedTuple):
  mu: np.ndarray             # [B, D]
  log_var: np.ndarray        # [B, D]
  z: np.ndarray              # [B, num_samples, D] the final samples
  scores: np.ndarray         # [B, num_samples] the target's probability of the class for each final sample
  prior_loss: np.ndarray     # [B, iterations]
  identity_loss: np.ndarray  # [B, iterations]


def attack_classes(targets, keys, sample_keys, *, fns: ScoreFns, variables, latent_dim: int,
                   settings: KedmiSettings, num_samples: int, mesh=None, steps_per_call: int = 100,
                   cache=((), ()), progress: Callable[[int], None] | None = None) -> BatchResult:
  """Learns the distributions of one batch of classes `targets` `[B]` (keys `[B]` for the steps, `sample_keys`
  `[B]` for the final samples); `variables = (generator, discriminator, target)` variables. With a `mesh`, B must
  divide by its devices; `progress(steps done)` after every call of `steps_per_call` steps."""
  chunk = max(1, min(int(steps_per_call), settings.iterations))
  targets = jnp.asarray(targets, jnp.int32)
  if mesh is not None:
    parallel.check_batch_size(len(targets), mesh, "KED-MI batch size")
    targets, keys, sample_keys = jax.device_put((targets, keys, sample_keys), parallel.data_sharding(mesh))
    variables = parallel.replicate(variables, mesh)
  modules, view = cache
  finish = _compiled(fns, modules, view, settings, chunk, num_samples, latent_dim, mesh)[1]
  state = init_state(len(targets), latent_dim, settings)
  if mesh is not None:  # the class axis split over the devices, the step counter replicated
    data, replicated = parallel.data_sharding(mesh), parallel.replicated(mesh)
    state = jax.device_put(state, jax.tree.map(lambda x: data if x.ndim else replicated, state))
  curves, done = [], 0
  run = _compiled(fns, modules, view, settings, chunk, num_samples, latent_dim, mesh)[0]
  while done < settings.iterations:
    state, losses = run(state, targets, keys, variables)
    done = min(done + chunk, settings.iterations)
    curves.append(parallel.to_host(losses))
    if progress is not None:
      progress(done)
  z, scores = finish(state.params, sample_keys, targets, variables)
  prior, identity = (np.concatenate([c[i] for c in curves])[:settings.iterations].T if curves
                     else np.zeros((len(targets), 0), np.float32) for i in (0, 1))
  params = parallel.to_host(state.params)
  return BatchResult(mu=params["mu"], log_var=params["log_var"], z=parallel.to_host(z),
                     scores=parallel.to_host(scores), prior_loss=prior, identity_loss=identity)


# ------------------------------------------------------------------------------------------------------------
# The runner behind `python -m jaxmia.attack` (config.kind = 'kedmi').

_STATE = ("kedmi/*.npz", "latents.npz", "summary.json")
_OUTPUTS = _STATE + ("kedmi", "images", report.EVALUATION_DIR, "*.tmp")
_RESULTS = ("mu", "log_var", "z", "scores", "prior_loss", "identity_loss")

CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("overwrite", "True or False", one_of(True, False)),
    ("attack.iterations", "an integer >= 0", number(0, integer=True)),
    ("attack.learning_rate", "> 0", number(0, low_open=True)),
    ("attack.b1", "in [0, 1)", number(0, 1, high_open=True)),
    ("attack.b2", "in [0, 1)", number(0, 1, high_open=True)),
    ("attack.eps", "> 0", number(0, low_open=True)),
    ("attack.identity_weight", ">= 0", number(0)),
    ("attack.identity_loss", f"one of {IDENTITY_LOSSES}", one_of(*IDENTITY_LOSSES)),
    ("attack.samples_per_step", "a positive integer", layout.positive_int),
    ("attack.init_mu", "a finite number", number()),
    ("attack.init_log_var", "a finite number", number()),
    ("attack.num_samples", "a positive integer", layout.positive_int),
    ("attack.steps_per_call", "a positive integer", layout.positive_int),
    ("output.images_per_class", "an integer >= 0 (0: no grids)", number(0, integer=True)),
    ("output.image_size", "a positive integer", layout.positive_int),
)


def run_kedmi(config, workdir) -> dict:
  """Runs (or resumes) KED-MI as `config` (configs/attack_kedmi_numbers.py) describes; returns the summary.

  The classes run in batches of `attack.batch_size` (the last batch repeats its last class), each saved to
  `kedmi/batch_NNNNN.npz` (its distributions, final samples, their target scores and the loss curves) when done,
  so a rerun resumes at the first unfinished batch.
  """
  cli.check_config(config, CONFIG_RULES + tuple(layout.view_rules("attack")))
  settings = KedmiSettings.from_config(config.attack)
  workdir = files.check_workdir(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(int(config.attack.batch_size), mesh, "attack.batch_size")

  generator, generator_variables = layout.load_weights(config.generator, "KED-MI generator", "generator")
  discriminator, discriminator_variables = layout.load_weights(config.discriminator, "KED-MI discriminator",
                                                            "discriminator")
  target_model, target_variables = layout.load_weights(config.target, "Target model", "target")
  if not hasattr(generator, "latent_dim"):
    raise ValueError(f"{config.generator} is not a GMI/KED-MI generator (jaxmia.gan_kedmi's export, kind "
                     "'dcgan_generator'); KED-MI learns distributions over its latent z.")
  if not isinstance(discriminator, MinibatchDiscriminator):
    raise ValueError(f"{config.discriminator} is not a KED-MI discriminator (jaxmia.gan_kedmi's export, kind "
                     "'kedmi_discriminator'); its logits over the target's classes give the prior loss.")
  view = layout.view_of(config, "attack", generator.image_size)
  record = layout.fingerprint(config, generator_variables=generator_variables, target_variables=target_variables,
                                  discriminator_variables=discriminator_variables)
  generator_c = render.with_compute_dtype(generator, view.dtype)
  discriminator_c = render.with_compute_dtype(discriminator, view.dtype)
  target_c = render.with_compute_dtype(target_model, view.dtype)
  fns = score_fns(generator_c, discriminator_c, target_c, view)
  variables = parallel.replicate((generator_variables, discriminator_variables, target_variables), mesh)
  num_classes = layout.count_classes(target_model, target_variables, view.resize)
  if discriminator.num_classes != num_classes:
    raise ValueError(f"The discriminator {config.discriminator} classifies {discriminator.num_classes} classes but the "
                     f"target has {num_classes}: KED-MI's GAN is trained against the attacked target (jaxmia.gan_kedmi "
                     "--config.target=...).")
  classes = layout.resolve_targets(config.targets, num_classes)
  latent_dim, num_samples = int(generator.latent_dim), int(config.attack.num_samples)

  layout.claim_workdir(workdir, record, state=_STATE, outputs=_OUTPUTS, overwrite=bool(config.get("overwrite", False)))
  seed_key = jax.random.key(config.seed)
  keys = class_keys(jax.random.fold_in(seed_key, 2), classes)
  sample_keys = class_keys(jax.random.fold_in(seed_key, 3), classes)
  logging.info("KED-MI on %d classes (%d steps of %d sample(s) each, %d final samples per class) on %d device(s); "
               "workdir %s.", len(classes), settings.iterations, settings.samples_per_step, num_samples,
               mesh.devices.size, workdir)

  t0 = time.monotonic()
  batch_size, count = int(config.attack.batch_size), len(classes)
  num_batches = -(-count // batch_size)
  (workdir / "kedmi").mkdir(exist_ok=True)
  results = {name: [] for name in _RESULTS}
  report_progress = None
  for batch, start in enumerate(range(0, count, batch_size)):
    stop = min(start + batch_size, count)
    path = workdir / "kedmi" / f"batch_{batch:05d}.npz"
    n = stop - start
    expected = {"mu": (n, latent_dim), "log_var": (n, latent_dim), "z": (n, num_samples, latent_dim),
                "scores": (n, num_samples), "prior_loss": (n, settings.iterations),
                "identity_loss": (n, settings.iterations), "classes": (n,)}
    cached = layout.read_cached(path, expected) if path.exists() else None
    if cached is not None and not np.array_equal(cached["classes"], classes[start:stop]):
      cached = None
    if cached is None:
      if report_progress is None:
        logging.info("KED-MI: classes %d-%d of %d in batches of %d.", start, count, count, batch_size)
        report_progress = layout.progress_bar(num_batches * settings.iterations, "steps", "KED-MI",
                                               done=batch * settings.iterations)
      rows = np.minimum(np.arange(start, start + batch_size), count - 1)  # the last batch repeats its end
      done_before = batch * settings.iterations
      result = attack_classes(
          classes[rows], keys[rows], sample_keys[rows], fns=fns, variables=variables, latent_dim=latent_dim,
          settings=settings, num_samples=num_samples, mesh=mesh, steps_per_call=int(config.attack.steps_per_call),
          cache=((generator_c, discriminator_c, target_c), view),
          progress=lambda done, b=batch: report_progress(done_before + done, f"batch {b + 1}/{num_batches}"))
      cached = {name: np.asarray(getattr(result, name))[:n] for name in _RESULTS}
      cached["classes"] = classes[start:stop]
      layout.save_npz(path, start=start, stop=stop, **cached)
    for name in _RESULTS:
      results[name].append(cached[name])
  results = {name: np.concatenate(parts) for name, parts in results.items()}
  timings = {"attack_seconds": time.monotonic() - t0}

  targets = np.repeat(classes, num_samples).astype(np.int32)
  w = results["z"].reshape(-1, 1, latent_dim).astype(np.float32)  # the generator's "single w" rows
  scores = results["scores"].reshape(-1).astype(np.float32)
  kept = np.arange(len(targets))
  layout.save_npz(
      workdir / "latents.npz", targets=targets, optimized_w=w, final_scores=scores, selected_indices=kept,
      selected_w=w, selected_targets=targets, selected_scores=scores, classes=classes, mu=results["mu"],
      log_var=results["log_var"], prior_loss=results["prior_loss"], identity_loss=results["identity_loss"])
  layout.write_grids(workdir, w, targets, generator, generator_variables, config, mesh)
  last = lambda curve: float(np.mean(curve[:, -1])) if curve.shape[1] else None
  summary = {
      "kind": "kedmi",
      "config": json.loads(config.to_json_best_effort()),
      "num_classes_attacked": count,
      "num_latents": len(targets),
      "num_selected": len(kept),
      "mean_final_score_selected": float(np.mean(scores)),
      "per_class_mean_selected_score": {int(c): float(np.mean(s)) for c, s in zip(classes, results["scores"])},
      "final_losses": {"prior": last(results["prior_loss"]), "identity": last(results["identity_loss"])},
      "sigma_mean": float(np.mean(np.exp(0.5 * results["log_var"]))),
      "timings": timings,
      "devices": [str(d) for d in mesh.devices.flat],
      "versions": {"jaxmia": jaxmia.__version__, "jax": jax.__version__},
  }
  layout.save_json(workdir / "summary.json", summary)
  logging.info("Done: KED-MI on %d classes, %d samples each; target confidence %.3f (mean over samples); results "
               "in %s.", count, num_samples, summary["mean_final_score_selected"], workdir)
  return summary
