"""Stage 1 of the Plug & Play Attack: start each target class from the random latents it already likes best.

`search_space_size` latents z are drawn from the seed, mapped to w with truncation, rendered, and scored by the
target model (mean softmax over the image and its mirror image). Each target class then takes its
`num_candidates` highest-scoring latents.
"""
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import parallel
from jaxmia.attack import render
from jaxmia.models import xla_cpu


class InitialLatents(NamedTuple):
  w: np.ndarray        # [M, 1 or num_ws, w_dim] float32, the starting point of each target slot
  indices: np.ndarray  # [M] int, index of the chosen latent in the search space
  scores: np.ndarray   # [M] float32, its target-class confidence


def top_candidates_per_class(confidences, targets) -> np.ndarray:
  """Indices `[M]` of the candidate assigned to each target slot; a pure function of its inputs.

  `confidences` `[N, C]` are the candidates' class confidences and `targets` `[M]` the class of each slot.
  Slots of the same class get that class's candidates in order of decreasing confidence (ties: lower index
  first), so a candidate is never used twice for one class, yet may serve several classes.
  """
  confidences = np.asarray(confidences)
  targets = np.asarray(targets)
  indices = np.empty(len(targets), np.int64)
  for cls in np.unique(targets):
    slots = np.flatnonzero(targets == cls)
    if len(slots) > len(confidences):
      raise ValueError(f"class {cls} needs {len(slots)} candidates but the search space holds only "
                       f"{len(confidences)}; raise candidates.search_space_size or lower num_candidates.")
    ranking = np.argsort(-confidences[:, cls], kind="stable")
    indices[slots] = ranking[:len(slots)]
  return indices


@dataclasses.dataclass(frozen=True)
class CandidateSettings:
  """Stage 1's knobs (the `candidates` config section), resolved for one generator (hashable)."""
  truncation_psi: float
  truncation_cutoff: int
  clamp: bool
  center_crop: int
  resize: int
  horizontal_flip: bool
  dtype: str
  xla_cpu_options: str

  @classmethod
  def from_config(cls, config, resolution: int) -> "CandidateSettings":
    return cls(truncation_psi=float(config.truncation_psi), truncation_cutoff=int(config.truncation_cutoff),
               horizontal_flip=bool(config.horizontal_flip), **render.view_settings(config, resolution))


def _mapping(generator, generator_variables, z, settings: CandidateSettings):
  return generator.apply(generator_variables, z, None, truncation_psi=settings.truncation_psi,
                         truncation_cutoff=settings.truncation_cutoff, method="mapping")


def candidate_confidences(z, generator_variables, target_variables, *, generator, target_model,
                          settings: CandidateSettings):
  """Target softmax `[b, C]` of the images of latents `z` `[b, z_dim]`, averaged with their mirror images."""
  ws = _mapping(generator, generator_variables, z, settings)
  images = render.synthesize(generator, generator_variables, ws)
  view = render.target_view(images, clamp=settings.clamp, center_crop=settings.center_crop,
                              resize=settings.resize)
  if settings.horizontal_flip:
    # [b, 2, S, S, C] -> [2b, ...]: each latent's two views stay on the device that holds the latent.
    view = jnp.stack([view, jnp.flip(view, axis=2)], axis=1).reshape(-1, *view.shape[1:])
  probs = jax.nn.softmax(target_model.apply(target_variables, view).astype(jnp.float32), axis=-1)
  return probs.reshape(z.shape[0], -1, probs.shape[-1]).mean(axis=1)


def select_initial_latents(key, targets, *, generator, generator_variables, target_model, target_variables,
                           config, single_w: bool = True, mesh=None, progress=None) -> InitialLatents:
  """Samples the search space from `key` and picks the starting latent of every target slot.

  Args:
    key: PRNG key for the `search_space_size` latents z `[N, z_dim]` (standard normal).
    targets: int `[M]`, the class of each slot (a class repeated `num_candidates` times).
    config: the attack config's `candidates` section (search_space_size, batch_size, truncation_psi,
      truncation_cutoff, clamp, center_crop, resize, horizontal_flip, dtype).
    single_w: return only the first of the `num_ws` style vectors (`[M, 1, w_dim]`, as the attack optimises
      one w per image); else all of them (`[M, num_ws, w_dim]`).
    mesh: a `('data',)` mesh to shard each batch over; `progress(candidates_done)` is called per batch.
  """
  if generator.c_dim:
    raise ValueError(f"The generator is conditional (c_dim={generator.c_dim}); the attack needs an unconditional "
                     "StyleGAN2 generator.")
  settings = CandidateSettings.from_config(config, generator.img_resolution)
  generator, target_model, variables = render.cast_and_replicate(
      generator, target_model, generator_variables, target_variables, settings.dtype, mesh)

  z = np.asarray(jax.random.normal(key, (int(config.search_space_size), generator.z_dim), jnp.float32))
  score = render.cached_jit("candidate_confidences", (generator, target_model), settings, lambda: jax.jit(
      functools.partial(candidate_confidences, generator=generator, target_model=target_model, settings=settings),
      compiler_options=xla_cpu.compiler_options(settings.xla_cpu_options)))
  confidences = parallel.map_arrays(lambda z: score(z, *variables), (z,), int(config.batch_size),
                                    mesh=mesh, progress=progress)
  indices = top_candidates_per_class(confidences, targets)

  layers = 1 if single_w else generator.num_ws
  to_w = render.cached_jit("mapping", (generator,), (settings, layers), lambda: jax.jit(
      lambda z, generator_variables: _mapping(generator, generator_variables, z, settings)[:, :layers]))
  w = parallel.map_arrays(lambda z: to_w(z, variables[0]), (z[indices],), int(config.batch_size), mesh=mesh)
  scores = confidences[indices, np.asarray(targets)]
  return InitialLatents(w=w, indices=indices, scores=scores)
