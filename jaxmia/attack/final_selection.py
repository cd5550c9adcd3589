"""Stage 3 of the Plug & Play Attack: keep the optimised latents whose images stay convincing under augmentation.

Each latent's score is its mean target-class softmax over `iterations` random resized crops (with random
mirroring) of its image; each class keeps its `samples_per_target` best latents. Scores filter out latents
that only fool the target model from one exact crop (adversarial-looking solutions).
"""
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import parallel
from jaxmia.attack import render
from jaxmia.data import image_ops
from jaxmia.models import xla_cpu


class FinalSelection(NamedTuple):
  indices: np.ndarray  # [K] int, the kept latents (class by class in increasing class order, best first)
  scores: np.ndarray   # [M] float32, the robustness score of every latent


def top_per_class(scores, targets, samples_per_target: int) -> np.ndarray:
  """Indices of the `samples_per_target` highest `scores` of every class in `targets`; a pure function.

  Classes come in increasing order, each class's indices by decreasing score (ties: lower index first).
  A class with fewer latents keeps all of them.
  """
  scores = np.asarray(scores)
  targets = np.asarray(targets)
  kept = []
  for cls in np.unique(targets):
    members = np.flatnonzero(targets == cls)
    order = np.argsort(-scores[members], kind="stable")
    kept.append(members[order[:samples_per_target]])
  return np.concatenate(kept) if kept else np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class FinalSelectionSettings:
  """Stage 3's knobs (the `final_selection` config section), resolved for one generator (hashable)."""
  iterations: int
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  horizontal_flip: bool
  clamp: bool
  center_crop: int
  resize: int
  dtype: str
  xla_cpu_options: str

  @classmethod
  def from_config(cls, config, resolution: int) -> "FinalSelectionSettings":
    settings = cls(iterations=int(config.iterations), horizontal_flip=bool(config.horizontal_flip),
                   **render.view_settings(config, resolution), **render.random_crop_settings(config))
    if settings.iterations < 1:
      raise ValueError(f"final_selection.iterations must be >= 1, got {settings.iterations}.")
    return settings


def robustness_scores(w, targets, keys, generator_variables, target_variables, *, generator, target_model,
                      settings: FinalSelectionSettings):
  """Mean target-class softmax `[b]` of each latent's image over `iterations` random crops and flips.

  `w` `[b, 1 or num_ws, w_dim]`, `targets` int `[b]`, `keys` `[b]`: latent i's augmentation in iteration t
  uses `fold_in(keys[i], t)`, so its score does not depend on the batch it is scored in.
  """
  images = render.synthesize(generator, generator_variables, w)
  view = render.target_view(images, clamp=settings.clamp, center_crop=settings.center_crop,
                              resize=settings.resize)

  def add_iteration(t, total):
    crop_keys, flip_keys = jnp.moveaxis(
        jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, t)))(keys), 1, 0)
    x = image_ops.random_resized_crop(view, crop_keys, settings.resize, settings.crop_scale, settings.crop_ratio)
    if settings.horizontal_flip:
      x = image_ops.horizontal_flip(x, flip_keys)
    probs = jax.nn.softmax(target_model.apply(target_variables, x).astype(jnp.float32), axis=-1)
    return total + jnp.take_along_axis(probs, targets[:, None], axis=-1)[:, 0]

  total = jax.lax.fori_loop(0, settings.iterations, add_iteration, jnp.zeros(w.shape[0], jnp.float32))
  return total / settings.iterations


def select_final_latents(w, targets, keys, *, generator, generator_variables, target_model, target_variables,
                         config, mesh=None, progress=None) -> FinalSelection:
  """Scores all latents (in batches) and keeps the `samples_per_target` most robust ones of every class.

  Args:
    w: `[M, 1 or num_ws, w_dim]` optimised latents; targets: int `[M]`; keys: `[M]` PRNG keys, one per latent.
    config: the attack config's `final_selection` section (samples_per_target, iterations, crop_scale,
      crop_ratio, horizontal_flip, clamp, center_crop, resize, batch_size, dtype).
    mesh: a `('data',)` mesh to shard each batch over; `progress(latents_done)` is called per batch.
  """
  settings = FinalSelectionSettings.from_config(config, generator.img_resolution)
  generator, target_model, variables = render.cast_and_replicate(
      generator, target_model, generator_variables, target_variables, settings.dtype, mesh)
  score = render.cached_jit("robustness_scores", (generator, target_model), settings, lambda: jax.jit(
      functools.partial(robustness_scores, generator=generator, target_model=target_model, settings=settings),
      compiler_options=xla_cpu.compiler_options(settings.xla_cpu_options)))
  scores = parallel.map_arrays(
      lambda w, t, k: score(w, t, k, *variables),
      (np.asarray(w, np.float32), np.asarray(targets, np.int32), keys), int(config.batch_size),
      mesh=mesh, progress=progress)
  return FinalSelection(indices=top_per_class(scores, targets, int(config.samples_per_target)), scores=scores)
