"""BREP-MI (Kahla et al., CVPR 2022): the label-only model inversion attack by boundary repulsion.

The attacker sees only the target's predicted label (argmax) of an image. Each attacked latent starts at a
point the target already labels as its class and walks away from the class boundary:

1. sample `sphere_points` points on the sphere of radius r around the current point (Gaussian directions
   normalised to length r, one fresh draw per iteration) and query the target's labels of their images;
2. when more than `expansion_fraction` of them are inside the class, grow r by `radius_expansion` (the point
   lies deep enough inside for this radius);
3. the step direction is the mean of the directions to the points labelled as other classes, negated
   (`repulsion_only`: points inside the class contribute zero; otherwise +1 inside / -1 outside), divided by
   the (possibly grown) radius; the step size is `min(r * step_size_ratio, max_step_size)` of the radius before
   the growth;
4. the moved point (clamped to `point_clamp` if set) is queried once more: it is kept if the target labels it as
   the class, otherwise the move is rejected (the radius growth of step 2 stays);
5. the search ends after `max_iterations_at_radius` accepted moves without a radius growth (the official
   termination), or at a budget: `max_iterations` sphere samplings, `max_queries` queries, `max_radius`.

The target labels each latent's sphere points `sphere_points_per_call` at a time when that is set (memory only:
the labels, and so the search, are unchanged). Every iteration costs `sphere_points + 1` target queries (the
sphere and the moved point); `BrepState.queries` counts them per latent. The result of a latent is the point
at its last radius growth (what the official code evaluates; its current point if the radius never grew).
Defaults (`BrepSettings`) are the official `config2.yaml`'s: 32 sphere points, initial radius 2, growth x1.3
when > 75 % of the sphere is inside, step min(r / 3, 3), 1000 accepted moves at one radius; the official search
has no radius or query limit besides them.

Latent space: the w space of a StyleGAN2 prior (points `[1 or num_ws, w_dim]`, rendered by
`render.synthesize`), as every jaxmia attack optimises w and the evaluation renders w; starting points are
random z of the prior mapped to w (`jaxmia.attack.run`). The official code searches the z space of GMI's DCGAN
(z ~ N(0, I_100), clamped to [-1.5, 1.5]), which a generator without a mapping network (`jaxmia.models.dcgan`,
configs/attack_brep_celeba64.py) reproduces: its points are z `[1, z_dim]`, the draws clamped to `point_clamp`
as the official draws. A StyleGAN2's w of a prior such as `numbers2_stylegan2` has a similar scale
(per-coordinate sd ~0.8, norm ~11 at w_dim 128, against ~10 for the DCGAN's z), so the official radius and step
apply unchanged, and the z clamp has no counterpart in w (`point_clamp` is off by default).

Per-latent independence: each latent has its own key (iteration t draws its sphere from `fold_in(key, t)`), all
its arithmetic is its own (vmapped) and a finished latent's state is frozen, so a latent's result does not
depend on the other latents of its batch, the batch size or the device count (up to the target's labels of
the same image computed in batches of other sizes).
"""
import dataclasses
import json
import math
import time
from typing import Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import jaxmia
from jaxmia import cli, files, parallel, report
from jaxmia.attack import layout, render
from jaxmia.attack.render import ViewSettings
from jaxmia.cli import number
from jaxmia.models import xla_cpu


@dataclasses.dataclass(frozen=True)
class BrepSettings:
  """The search's knobs (the BREP attack config's `attack` section; hashable: it keys compiled code)."""
  sphere_points: int = 32            # points sampled on the sphere per iteration (official 32)
  initial_radius: float = 2.0        # starting sphere radius (official 2)
  radius_expansion: float = 1.3      # radius growth factor (official 1.3)
  expansion_fraction: float = 0.75   # grow when more than this fraction of the sphere is in the class (official)
  step_size_ratio: float = 1 / 3     # step size = min(radius * ratio, max_step_size) (official r / 3)
  max_step_size: float = 3.0         # (official 3)
  max_iterations_at_radius: int = 1000  # stop after this many accepted moves without growth (official 1000)
  max_iterations: int = 100_000      # budget: sphere samplings per latent
  max_queries: int = 0               # budget: target queries per latent (0: only max_iterations limits them)
  max_radius: float = 0.0            # stop once the radius exceeds this (0: no limit, as the official code)
  repulsion_only: bool = True        # official True: only points outside the class move the point
  point_clamp: tuple[float, ...] = ()  # (low, high) clamp of every coordinate of the moved point; () none
  sphere_points_per_call: int = 0    # sphere points of each latent the target labels per call (0: all at once)

  @classmethod
  def from_config(cls, config) -> "BrepSettings":
    clamp = tuple(float(c) for c in (config.get("point_clamp") or ()))
    settings = cls(
        sphere_points=int(config.sphere_points), initial_radius=float(config.initial_radius),
        radius_expansion=float(config.radius_expansion), expansion_fraction=float(config.expansion_fraction),
        step_size_ratio=float(config.step_size_ratio), max_step_size=float(config.max_step_size),
        max_iterations_at_radius=int(config.max_iterations_at_radius), max_iterations=int(config.max_iterations),
        max_queries=int(config.max_queries), max_radius=float(config.max_radius),
        repulsion_only=bool(config.repulsion_only), point_clamp=clamp,
        sphere_points_per_call=int(config.get("sphere_points_per_call", 0)))
    settings.check()
    return settings

  def check(self) -> None:
    problems = []
    if self.sphere_points < 1:
      problems.append(f"sphere_points={self.sphere_points} must be >= 1")
    if not self.initial_radius > 0:
      problems.append(f"initial_radius={self.initial_radius} must be > 0")
    if not self.radius_expansion >= 1:
      problems.append(f"radius_expansion={self.radius_expansion} must be >= 1")
    if not 0 <= self.expansion_fraction < 1:
      problems.append(f"expansion_fraction={self.expansion_fraction} must be in [0, 1)")
    if not (self.step_size_ratio > 0 and self.max_step_size > 0):
      problems.append("step_size_ratio and max_step_size must be > 0")
    if self.sphere_points_per_call < 0:
      problems.append(f"sphere_points_per_call={self.sphere_points_per_call} must be >= 0 (0: all at once)")
    if self.max_iterations_at_radius < 1 or self.max_iterations < 0 or self.max_queries < 0:
      problems.append("max_iterations_at_radius must be >= 1, max_iterations and max_queries >= 0")
    if not self.max_radius >= 0:
      problems.append(f"max_radius={self.max_radius} must be >= 0 (0: no limit)")
    if self.point_clamp and not (len(self.point_clamp) == 2 and self.point_clamp[0] < self.point_clamp[1]):
      problems.append(f"point_clamp={self.point_clamp} must be () or (low, high) with low < high")
    if problems:
      raise ValueError("BREP-MI settings: " + "; ".join(problems) + ".")

  @property
  def queries_per_iteration(self) -> int:
    return self.sphere_points + 1


class BrepState(NamedTuple):
  """The search state of a batch of latents (leading axis B)."""
  w: jax.Array               # [B, *latent] current point (always labelled as its class)
  result_w: jax.Array        # [B, *latent] the point at the last radius growth (the official result)
  radius: jax.Array          # [B] float32
  iteration: jax.Array       # [B] int32: sphere samplings done (each costs sphere_points + 1 queries)
  accepted: jax.Array        # [B] int32: accepted moves that did not grow the radius (the official counter)
  last_growth: jax.Array     # [B] int32: `accepted` at the last radius growth
  growths: jax.Array         # [B] int32: radius growths
  rejected: jax.Array        # [B] int32: moves rejected because the moved point left the class
  queries: jax.Array         # [B] int32: target queries spent
  done: jax.Array            # [B] bool

  def result(self) -> jax.Array:
    """The latents `[B, *latent]` the attack returns: the point at the last radius growth, or the current point
    of a latent whose radius never grew."""
    grown = (self.growths > 0).reshape((-1,) + (1,) * (self.w.ndim - 1))
    return jnp.where(grown, self.result_w, self.w)


def _finished(state: BrepState, settings: BrepSettings) -> jax.Array:
  done = (state.accepted - state.last_growth >= settings.max_iterations_at_radius)
  done |= state.iteration >= settings.max_iterations
  if settings.max_queries:
    done |= state.queries + settings.queries_per_iteration > settings.max_queries
  if settings.max_radius:
    done |= state.radius > settings.max_radius
  return done


def init_state(w, active, settings: BrepSettings) -> BrepState:
  """The state before the first iteration: every latent at its start `w` `[B, *latent]`; latents where `active`
  (bool `[B]`) is False (no starting point inside the class) are done from the start and spend no queries."""
  w = jnp.asarray(w, jnp.float32)
  batch = w.shape[0]
  zeros = jnp.zeros(batch, jnp.int32)
  state = BrepState(w=w, result_w=w, radius=jnp.full(batch, settings.initial_radius, jnp.float32),
                    iteration=zeros, accepted=zeros, last_growth=zeros, growths=zeros, rejected=zeros,
                    queries=zeros, done=jnp.zeros(batch, bool))
  return state._replace(done=_finished(state, settings) | ~jnp.asarray(active, bool))


def sphere_directions(key, w, radius, num_points: int):
  """`[num_points, *w.shape]` Gaussian directions scaled to length `radius` (one latent)."""
  directions = jax.random.normal(key, (num_points, *w.shape), jnp.float32)
  axes = tuple(range(1, directions.ndim))
  return directions * (radius / jnp.sqrt(jnp.sum(directions ** 2, axis=axes, keepdims=True)))


def repulsion_step(w, directions, inside, radius, settings: BrepSettings):
  """One latent's proposal from its sphere: `(moved point, new radius, grew)`.

  `directions` `[N, *w.shape]` (length `radius`), `inside` bool `[N]`: whether the target labels each sphere
  point as the class.
  """
  step_size = jnp.minimum(radius * settings.step_size_ratio, settings.max_step_size)
  grew = jnp.sum(inside) > settings.expansion_fraction * settings.sphere_points
  new_radius = jnp.where(grew, radius * settings.radius_expansion, radius)
  sign = jnp.where(inside, 1.0, -1.0)
  weight = (sign - 1.0) / 2.0 if settings.repulsion_only else sign  # outside: -1; inside: 0 (or +1)
  weight = weight.reshape((-1,) + (1,) * w.ndim)
  direction = jnp.mean(weight * directions, axis=0) / new_radius
  moved = w + step_size * direction
  if settings.point_clamp:
    moved = jnp.clip(moved, settings.point_clamp[0], settings.point_clamp[1])
  return moved, new_radius, grew


def sphere_labels(points, labels_fn: Callable, per_call: int = 0):
  """The target's labels `[B, N]` of sphere points `[B, N, *latent]`, `labels_fn` called on `B * per_call`
  points at a time (0: all `B * N` at once).

  Why: the target's activations for all `B * N` images at once can exceed the host's memory (64 latents x 32
  points through a 64x64 VGG16-BN did). Calls go over the point axis, so the latents' axis B stays the leading
  (sharded) one; a last partial call repeats the last point and drops its labels.
  """
  batch, num = points.shape[:2]
  latent = points.shape[2:]
  if not per_call or per_call >= num:
    return labels_fn(points.reshape(batch * num, *latent)).reshape(batch, num)
  calls = -(-num // per_call)
  padded = jnp.concatenate([points, jnp.repeat(points[:, -1:], calls * per_call - num, axis=1)], axis=1)
  chunks = jnp.moveaxis(padded.reshape(batch, calls, per_call, *latent), 1, 0)  # [calls, B, per_call, *latent]
  labels = jax.lax.map(lambda chunk: labels_fn(chunk.reshape(batch * per_call, *latent)).reshape(batch, per_call),
                       chunks)
  return jnp.moveaxis(labels, 0, 1).reshape(batch, calls * per_call)[:, :num]


def search_iteration(state: BrepState, targets, keys, labels_fn: Callable, settings: BrepSettings) -> BrepState:
  """One BREP-MI iteration of every latent not done. `labels_fn(points [K, *latent]) -> int labels [K]` is the
  target's label of each point's image (the only access to the target); `keys` `[B]` are the latents' keys."""
  num_points = settings.sphere_points
  iteration_keys = jax.vmap(jax.random.fold_in)(keys, state.iteration)
  directions = jax.vmap(sphere_directions, in_axes=(0, 0, 0, None))(iteration_keys, state.w, state.radius,
                                                                     num_points)
  points = state.w[:, None] + directions                         # [B, N, *latent]
  inside = sphere_labels(points, labels_fn, settings.sphere_points_per_call) == targets[:, None]
  moved, radius, grew = jax.vmap(repulsion_step, in_axes=(0, 0, 0, 0, None))(
      state.w, directions, inside, state.radius, settings)
  accept = labels_fn(moved) == targets
  live = ~state.done
  keep = (live & accept).reshape((-1,) + (1,) * (state.w.ndim - 1))
  grown = (live & accept & grew).reshape(keep.shape)
  one = jnp.ones_like(state.iteration)
  new = BrepState(
      w=jnp.where(keep, moved, state.w),
      result_w=jnp.where(grown, moved, state.result_w),
      radius=jnp.where(live, radius, state.radius),
      iteration=state.iteration + jnp.where(live, one, 0),
      accepted=state.accepted + jnp.where(live & accept & ~grew, one, 0),
      last_growth=jnp.where(live & grew, state.accepted, state.last_growth),
      growths=state.growths + jnp.where(live & grew, one, 0),
      rejected=state.rejected + jnp.where(live & ~accept, one, 0),
      queries=state.queries + jnp.where(live, settings.queries_per_iteration, 0),
      done=state.done)
  return new._replace(done=state.done | _finished(new, settings))


def search(state: BrepState, targets, keys, labels_fn: Callable, settings: BrepSettings,
           max_iterations: int | None = None) -> BrepState:
  """Iterates until every latent is done, or (given `max_iterations`) for at most that many more iterations; one
  on-device loop (`lax.while_loop`). Jit it with `labels_fn` and `settings` fixed."""
  stop = max_iterations if max_iterations is not None else jnp.iinfo(jnp.int32).max

  def cond(carry):
    state, count = carry
    return jnp.any(~state.done) & (count < stop)

  def body(carry):
    state, count = carry
    return search_iteration(state, targets, keys, labels_fn, settings), count + 1

  state, _ = jax.lax.while_loop(cond, body, (state, jnp.int32(0)))
  return state


def class_keys(key, classes, restarts):
  """The key of each latent `[len(classes) * restarts]` (class-major): `fold_in(fold_in(key, class), restart)`,
  so a latent's search depends only on the seed, its class and its restart index."""
  classes = np.asarray(classes)
  latent_classes = jnp.asarray(np.repeat(classes, restarts), jnp.uint32)
  restart = jnp.asarray(np.tile(np.arange(restarts), len(classes)), jnp.uint32)
  return jax.vmap(lambda c, r: jax.random.fold_in(jax.random.fold_in(key, c), r))(latent_classes, restart)


# ------------------------------------------------------------------------------------------------------------
# The target's labels of generated images, and the searches of a batch of latents on the devices.

def image_labels(w, generator_variables, target_variables, *, generator, target_model, view: ViewSettings):
  """The target's predicted label `[K]` of the image of each latent `w` `[K, 1 or num_ws, w_dim]`."""
  images = render.synthesize(generator, generator_variables, w)
  inputs = render.target_view(images, clamp=view.clamp, center_crop=view.center_crop, resize=view.resize)
  return jnp.argmax(target_model.apply(target_variables, inputs).astype(jnp.float32), axis=-1).astype(jnp.int32)


def _compiled(generator, target_model, view: ViewSettings, settings: BrepSettings, chunk: int):
  def build():
    def run(state, targets, keys, generator_variables, target_variables):
      labels_fn = lambda w: image_labels(w, generator_variables, target_variables, generator=generator,
                                         target_model=target_model, view=view)
      return search(state, targets, keys, labels_fn, settings, max_iterations=chunk)

    init = jax.jit(lambda w, active: init_state(w, active, settings))
    return init, jax.jit(run, compiler_options=xla_cpu.compiler_options(view.xla_cpu_options))

  return render.cached_jit("brep", (generator, target_model), (view, settings, chunk), build)


def attack_latents(w_init, targets, keys, active=None, *, generator, generator_variables, target_model,
                   target_variables, settings: BrepSettings, view: ViewSettings, mesh=None,
                   iterations_per_call: int = 50, progress: Callable[[BrepState], None] | None = None) -> BrepState:
  """BREP-MI search of one batch of latents through the generator; returns the final `BrepState` on the host.

  Args:
    w_init: `[B, 1 or num_ws, w_dim]` starting points, each labelled by the target as its class.
    targets: int `[B]`; keys: `[B]` PRNG keys (`class_keys`); active: bool `[B]` (False: no search, no queries).
    mesh: a `('data',)` mesh to shard the batch over (B divisible by its devices); None runs where the inputs are.
    iterations_per_call: iterations per jitted call (`progress(state)` is called after each).
  """
  generator = render.with_compute_dtype(generator, view.dtype)
  target_model = render.with_compute_dtype(target_model, view.dtype)
  targets = jnp.asarray(targets, jnp.int32)
  active = np.ones(len(targets), bool) if active is None else np.asarray(active, bool)
  w_init = jnp.asarray(w_init, jnp.float32)
  variables = (generator_variables, target_variables)
  if mesh is not None:
    parallel.check_batch_size(w_init.shape[0], mesh, "BREP batch size")
    w_init, targets, keys, active = jax.device_put((w_init, targets, keys, jnp.asarray(active)),
                                                   parallel.data_sharding(mesh))
    variables = parallel.replicate(variables, mesh)
  init, run = _compiled(generator, target_model, view, settings, int(iterations_per_call))
  state = init(w_init, active)
  for _ in range(math.ceil(settings.max_iterations / int(iterations_per_call)) + 1):
    if not bool(jnp.any(~state.done)):
      break
    state = run(state, targets, keys, *variables)
    if progress is not None:
      progress(state)
  return BrepState(*parallel.to_host(tuple(state)))


# ------------------------------------------------------------------------------------------------------------
# Starting points: random latents of the prior that the target already labels as the class.

class Starts(NamedTuple):
  w: np.ndarray        # [M, 1 or num_ws, w_dim] starting point of each latent
  indices: np.ndarray  # [M] int64: the draw it comes from (-1: no draw was labelled as the class)
  found: np.ndarray    # [M] bool: indices >= 0 (the start is labelled as the class)
  num_draws: int       # random latents drawn and queried (one target query each, shared by all classes)


def assign_starts(labels, targets) -> np.ndarray:
  """Draw index `[M]` of each latent slot: the k-th slot of class c (slots in order) gets the k-th draw (in draw
  order) that the target labels c, or -1. A pure function of the draws' `labels` `[D]` and the slots' `targets`
  `[M]`, so a class's starts do not depend on which other classes are attacked."""
  labels, targets = np.asarray(labels), np.asarray(targets)
  indices = np.full(len(targets), -1, np.int64)
  for cls in np.unique(targets):
    slots, draws = np.flatnonzero(targets == cls), np.flatnonzero(labels == cls)
    count = min(len(slots), len(draws))
    indices[slots[:count]] = draws[:count]
  return indices


def draw_starts(key, targets, *, generator, generator_variables, target_model, target_variables, view: ViewSettings,
                max_draws: int, batch_size: int, truncation_psi: float = 1.0, truncation_cutoff=None,
                single_w: bool = True, point_clamp: tuple[float, ...] = (), mesh=None,
                progress: Callable[[int], None] | None = None) -> Starts:
  """Draws random latents in batches until every slot of `targets` `[M]` has a start labelled as its class, or
  `max_draws` are drawn. Draw i is `z_i ~ N(0, I)` from `fold_in(key, i)`, mapped to w (truncation as given;
  `single_w`: its first style vector, the point the search moves) and labelled by the target through the same
  rendering as the search (label only). A generator without a `mapping` method (GMI's DCGAN) searches z itself:
  the point is `z_i` `[1, z_dim]`, clamped to `point_clamp` (low, high) when given, as the official draws.
  Slots without a start get draw 0's w and `found=False`."""
  if generator.c_dim:
    raise ValueError(f"The generator is conditional (c_dim={generator.c_dim}); the attack needs an unconditional "
                     "StyleGAN2 generator.")
  generator_c = render.with_compute_dtype(generator, view.dtype)
  target_c = render.with_compute_dtype(target_model, view.dtype)
  layers = 1 if single_w else generator.num_ws
  variables = (generator_variables, target_variables)
  if mesh is not None:
    variables = parallel.replicate(variables, mesh)

  def build():
    def to_w(index, key, generator_variables):
      z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (generator.z_dim,)))(index)
      if not hasattr(generator, "mapping"):
        return (jnp.clip(z, *point_clamp) if point_clamp else z)[:, None]
      ws = generator_c.apply(generator_variables, z, None, truncation_psi=truncation_psi,
                             truncation_cutoff=truncation_cutoff, method="mapping")
      return ws[:, :layers].astype(jnp.float32)

    def labels(index, key, generator_variables, target_variables):
      return image_labels(to_w(index, key, generator_variables), generator_variables, target_variables,
                          generator=generator_c, target_model=target_c, view=view)

    return jax.jit(to_w), jax.jit(labels, compiler_options=xla_cpu.compiler_options(view.xla_cpu_options))

  to_w, labels = render.cached_jit(
      "brep_starts", (generator, target_model),
      (view, float(truncation_psi), truncation_cutoff, layers, tuple(point_clamp)), build)
  targets = np.asarray(targets)
  drawn = []
  while sum(len(d) for d in drawn) < max_draws:
    start = sum(len(d) for d in drawn)
    index = np.arange(start, min(start + batch_size, max_draws), dtype=np.uint32)
    drawn.append(parallel.map_arrays(lambda i: labels(i, key, *variables), (index,), batch_size, mesh=mesh))
    if progress is not None:
      progress(start + len(index))
    if (assign_starts(np.concatenate(drawn), targets) >= 0).all():
      break
  all_labels = np.concatenate(drawn) if drawn else np.zeros(0, np.int32)
  indices = assign_starts(all_labels, targets)
  found = indices >= 0
  w = parallel.map_arrays(lambda i: to_w(i, key, variables[0]), (np.maximum(indices, 0).astype(np.uint32),),
                          batch_size, mesh=mesh)
  return Starts(w=w, indices=indices, found=found, num_draws=len(all_labels))


# BREP-MI (config.kind = 'brep'): label-only boundary repulsion, one resumable file per batch of latents.

_STATE = ("initial.npz", "brep/*.npz", "latents.npz", "summary.json")
_OUTPUTS = _STATE + ("brep", "images", report.EVALUATION_DIR, "*.tmp")
_RESULTS = ("w", "final_w", "radius", "iteration", "accepted", "growths", "rejected", "queries")

CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("overwrite", "True or False", layout.flag),
    ("candidates.search_space_size", "a positive integer", layout.positive_int),
    ("candidates.batch_size", "a positive integer", layout.positive_int),
    ("candidates.truncation_psi", "a finite number", number()),
    ("candidates.truncation_cutoff", "None or an integer >= 0", lambda v: v is None or number(0, integer=True)(v)),
    *layout.view_rules("attack"),
    ("attack.single_w", "True or False", layout.flag),
    ("attack.restarts", "a positive integer", layout.positive_int),
    ("attack.iterations_per_call", "a positive integer", layout.positive_int),
    ("attack.sphere_points", "a positive integer", layout.positive_int),
    ("attack.initial_radius", "> 0", number(0, low_open=True)),
    ("attack.radius_expansion", ">= 1", number(1)),
    ("attack.expansion_fraction", "in [0, 1)", number(0, 1, high_open=True)),
    ("attack.step_size_ratio", "> 0", number(0, low_open=True)),
    ("attack.max_step_size", "> 0", number(0, low_open=True)),
    ("attack.max_iterations_at_radius", "a positive integer", layout.positive_int),
    ("attack.max_iterations", "an integer >= 0", number(0, integer=True)),
    ("attack.max_queries", "an integer >= 0 (0: no limit)", number(0, integer=True)),
    ("attack.max_radius", ">= 0 (0: no limit)", number(0)),
    ("attack.repulsion_only", "True or False", layout.flag),
    ("attack.sphere_points_per_call", "an integer >= 0 (0: all at once)", number(0, integer=True)),
    ("attack.point_clamp", "() or (low, high) with low < high",
     lambda v: len(v) == 0 or (len(v) == 2 and number()(v[0]) and number()(v[1]) and v[0] < v[1])),
    ("output.images_per_class", "an integer >= 0 (0: no grids)", number(0, integer=True)),
    ("output.image_size", "a positive integer", layout.positive_int),
)


def _search_progress(what: str):
  """A `attack_latents` progress callback: a log line at most every 30 s."""
  last = [time.monotonic()]

  def report_state(state) -> None:
    if time.monotonic() - last[0] >= 30.0:
      last[0] = time.monotonic()
      done = np.asarray(parallel.to_host(state.done))
      logging.info("%s: %d/%d latents done, iteration %d, %.3g queries per latent so far.", what, done.sum(),
                   len(done), int(np.max(parallel.to_host(state.iteration))),
                   float(np.mean(parallel.to_host(state.queries))))

  return report_state


def run_brep(config, workdir) -> dict:
  """Runs (or resumes) BREP-MI (`jaxmia.attack.brep`) as `config` (configs/attack_brep_numbers.py) describes.

  Starting points: random latents drawn from `fold_in(seed key, 1)` until each of the `attack.restarts` slots
  of every target class has one that the target labels as the class (at most `candidates.search_space_size`
  draws; a class without one is not searched and keeps draw 0, scored 0). The search of the latent of class c,
  restart k uses the key `fold_in(fold_in(fold_in(seed key, 2), c), k)`. Every latent is kept (selected): the
  result of the label-only attack is one image per latent, as the official code's.
  """
  cli.check_config(config, CONFIG_RULES)
  settings = BrepSettings.from_config(config.attack)
  workdir = files.check_workdir(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(int(config.candidates.batch_size), mesh, "candidates.batch_size")
  parallel.check_batch_size(int(config.attack.batch_size), mesh, "attack.batch_size")

  generator, generator_variables = layout.load_generator(config)
  target_model, target_variables = layout.load_weights(config.target, "Target model", "target")
  view = layout.view_of(config, "attack", generator.img_resolution)
  record = layout.fingerprint(config, generator_variables=generator_variables if config.generator else None,
                       target_variables=target_variables, discriminator_variables=None)
  generator_variables, target_variables = parallel.replicate((generator_variables, target_variables), mesh)
  num_classes = layout.count_classes(target_model, target_variables, view.resize)
  classes = layout.resolve_targets(config.targets, num_classes)
  restarts = int(config.attack.restarts)
  targets = np.repeat(classes, restarts)

  layout.claim_workdir(workdir, record, state=_STATE, outputs=_OUTPUTS, overwrite=bool(config.get("overwrite", False)))
  seed_key = jax.random.key(config.seed)
  logging.info("BREP-MI on %d classes (%d latents) on %d device(s); workdir %s.", len(classes), len(targets),
               mesh.devices.size, workdir)
  timings = {}

  # Starting points, labelled as their class by the target.
  t0 = time.monotonic()
  initial_path = workdir / "initial.npz"
  cached = layout.read_starts(initial_path, targets, {"w": None, "indices": targets.shape, "num_draws": ()})
  if cached is not None:
    starts = Starts(w=cached["w"], indices=cached["indices"], found=cached["indices"] >= 0,
                         num_draws=int(cached["num_draws"]))
  else:
    max_draws = int(config.candidates.search_space_size)
    starts = draw_starts(
        jax.random.fold_in(seed_key, 1), targets, generator=generator, generator_variables=generator_variables,
        target_model=target_model, target_variables=target_variables, view=view, max_draws=max_draws,
        batch_size=int(config.candidates.batch_size), truncation_psi=float(config.candidates.truncation_psi),
        truncation_cutoff=config.candidates.truncation_cutoff, single_w=bool(config.attack.single_w),
        point_clamp=settings.point_clamp, mesh=mesh,
        progress=layout.progress_bar(max_draws, "random latents", "Starting points"))
    layout.save_npz(initial_path, w=starts.w, indices=starts.indices, targets=targets, num_draws=starts.num_draws)
  missing = sorted({int(c) for c in targets[~starts.found]})
  if missing:
    logging.warning("No starting point labelled as class(es) %s among %d random latents: not searched (raise "
                    "candidates.search_space_size).", missing, starts.num_draws)
  timings["start_seconds"] = time.monotonic() - t0

  # The search, one saved file per finished batch of latents.
  t0 = time.monotonic()
  batch_size, num_latents = int(config.attack.batch_size), len(targets)
  num_batches = -(-num_latents // batch_size)
  keys = class_keys(jax.random.fold_in(seed_key, 2), classes, restarts)
  (workdir / "brep").mkdir(exist_ok=True)
  results = {name: [] for name in _RESULTS}
  search_progress = None
  for batch, start in enumerate(range(0, num_latents, batch_size)):
    stop = min(start + batch_size, num_latents)
    path = workdir / "brep" / f"batch_{batch:05d}.npz"
    shape = (stop - start,)
    expected = {name: (shape + starts.w.shape[1:] if name.endswith("w") else shape) for name in _RESULTS}
    cached = layout.read_cached(path, expected) if path.exists() else None
    if cached is None:
      if search_progress is None:
        logging.info("BREP-MI: searching latents %d-%d of %d in batches of %d (%d sphere points, at most %d "
                     "iterations each).", start, num_latents, num_latents, batch_size, settings.sphere_points,
                     settings.max_iterations)
        search_progress = layout.progress_bar(num_latents, "latents", "BREP-MI", done=start)
      rows = np.minimum(np.arange(start, start + batch_size), num_latents - 1)  # the last batch repeats its end
      state = attack_latents(
          starts.w[rows], targets[rows], keys[rows], starts.found[rows], generator=generator,
          generator_variables=generator_variables, target_model=target_model, target_variables=target_variables,
          settings=settings, view=view, mesh=mesh, iterations_per_call=int(config.attack.iterations_per_call),
          progress=_search_progress(f"BREP-MI batch {batch + 1}/{num_batches}"))
      values = {"w": state.result(), "final_w": state.w, **{name: getattr(state, name) for name in _RESULTS[2:]}}
      cached = {name: np.asarray(values[name])[:stop - start] for name in _RESULTS}
      layout.save_npz(path, start=start, stop=stop, **cached)
      search_progress(stop, f"batch {batch + 1}/{num_batches}: {np.mean(cached['queries']):,.0f} queries per "
                            f"latent, radius {np.mean(cached['radius']):.3g} (mean)")
    for name in _RESULTS:
      results[name].append(cached[name])
  results = {name: np.concatenate(parts) for name, parts in results.items()}
  timings["search_seconds"] = time.monotonic() - t0

  found = starts.found
  scores = found.astype(np.float32)  # label only: 1 where the target labels the result as its class
  kept = np.arange(num_latents)
  layout.save_npz(workdir / "latents.npz", targets=targets, initial_w=starts.w, initial_indices=starts.indices,
            initial_scores=scores, initial_found=found, optimized_w=results["w"], final_w=results["final_w"],
            final_scores=scores, selected_indices=kept, selected_w=results["w"], selected_targets=targets,
            selected_scores=scores, queries=results["queries"], iterations=results["iteration"],
            accepted=results["accepted"], growths=results["growths"], rejected=results["rejected"],
            radius=results["radius"])
  layout.write_grids(workdir, results["w"], targets, generator, generator_variables, config, mesh)
  per_class = {int(c): int(results["queries"][targets == c].sum()) for c in classes}
  class_queries = np.array(list(per_class.values()))
  summary = {
      "kind": "brep",
      "config": json.loads(config.to_json_best_effort()),
      "num_classes_attacked": len(classes),
      "num_latents": num_latents,
      "num_selected": len(kept),
      "num_start_draws": starts.num_draws,
      "classes_without_start": missing,
      "queries": {"total": int(results["queries"].sum()), "start_draws": starts.num_draws,
                  "per_class_mean": float(class_queries.mean()), "per_class_min": int(class_queries.min()),
                  "per_class_max": int(class_queries.max()), "per_class": per_class},
      "iterations": {"mean": float(results["iteration"].mean()), "max": int(results["iteration"].max()),
                     "growths_mean": float(results["growths"].mean()),
                     "rejected_mean": float(results["rejected"].mean())},
      "final_radius": {"mean": float(results["radius"].mean()), "max": float(results["radius"].max())},
      "timings": timings,
      "devices": [str(d) for d in mesh.devices.flat],
      "versions": {"jaxmia": jaxmia.__version__, "jax": jax.__version__},
  }
  layout.save_json(workdir / "summary.json", summary)
  logging.info("Done: BREP-MI searched %d latents with %s target queries (%.0f per class; %d for the starting "
               "points); results in %s.", int(found.sum()), f"{summary['queries']['total']:,}",
               summary["queries"]["per_class_mean"], starts.num_draws, workdir)
  return summary
