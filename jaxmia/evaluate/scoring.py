"""The jitted scoring cores: an attack's latents rendered and scored by every network in one jitted function,
training images to features, and distances to the nearest training image.

Generated images are made batch by batch inside the jitted function (synthesis -> clamp to [-1, 1] -> the
attack's centre crop -> antialiased resize to each network's input), sharded over the `('data',)` mesh; only
scores and features leave the devices.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxmia import metrics, parallel
from jaxmia.attack import render
from jaxmia.data import augment, image_ops
from jaxmia.evaluate.attack_run import AttackRun


@dataclasses.dataclass(frozen=True)
class GeneratedImages:
  """An attack run's latents and how they become images for the evaluation (its generator, the attack's
  centre crop, clamping), with where they are computed (mesh, batch size)."""
  run: AttackRun
  generator: Any
  generator_variables: Any     # replicated over the mesh
  crop: int
  clamp: bool
  mesh: Any
  batch_size: int
  ppa_compat: bool

  def view(self, generator_variables, w):
    """Generated images as the attack's target saw them before resizing: synthesis, clamp, centre crop."""
    images = render.synthesize(self.generator, generator_variables, w).astype(jnp.float32)
    return image_ops.center_crop(jnp.clip(images, -1.0, 1.0) if self.clamp else images, self.crop)

  def render_fn(self, size: int):
    """`render(generator_variables, w) -> [B, size, size, 3]`: `view`, then an antialiased resize."""
    return lambda generator_variables, w: image_ops.resize(self.view(generator_variables, w), size)


def jit_sharded_batch(fn, mesh, *, batch_args: int, replicated_args: int):
  """`jax.jit(fn)` over `mesh`: its first `batch_args` arguments split along the batch axis over the devices,
  the next `replicated_args` (network variables) on every device, its outputs replicated."""
  replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(fn, in_shardings=(sharded,) * batch_args + (replicated,) * replicated_args,
                 out_shardings=replicated)


def fake_scores_fn(view, networks: tuple, *, ppa_compat: bool, num_classes: int):
  """To be jitted: `(w [B, ...], targets [B], generator_variables, network_variables) -> dict of [B, ...]`.

  `view(generator_variables, w)` renders the latents (`GeneratedImages.view`); each image is rendered once and
  resized to every network's input. For the evaluation model: `top1`, `top5` (bool), `confidence` (softmax at
  the target) and its features under `'evaluation'`; other networks: their features.
  """
  top_k = min(5, num_classes)

  def scores(w, targets, generator_variables, network_variables):
    images = view(generator_variables, w)
    resized, out = {}, {}
    for net in networks:
      if net.image_size not in resized:
        resized[net.image_size] = image_ops.resize(images, net.image_size, antialias=True)
      outputs = net.outputs(network_variables[net.name], resized[net.image_size], ppa_compat)
      out[net.name] = outputs["features"]
      if "logits" in outputs:
        logits = outputs["logits"]
        out["top1"] = metrics.topk_correct(logits, targets, 1)
        out["top5"] = metrics.topk_correct(logits, targets, top_k)
        out["confidence"] = jnp.take_along_axis(jax.nn.softmax(logits), targets[:, None], axis=1)[:, 0]
    return out

  return scores


def real_features_fn(networks: tuple, *, ppa_compat: bool):
  """To be jitted: `(images uint8 [B, S, S, 3], network_variables) -> {network name: features [B, D]}`."""
  def features(images, network_variables):
    x = augment.normalize(augment.to_unit_range(images))
    return {net.name: net.outputs(network_variables[net.name],
                                  x if x.shape[1] == net.image_size else image_ops.resize(x, net.image_size),
                                  ppa_compat)["features"]
            for net in networks}
  return features


def _latent_batches(w, targets, batch_size):
  for start in range(0, len(w), batch_size):
    yield w[start:start + batch_size], targets[start:start + batch_size]


def score_generated_images(generated: GeneratedImages, networks: tuple, network_variables: dict, num_classes: int,
                           w: np.ndarray | None = None, feature_rows: np.ndarray | None = None):
  """`(per_row, features)`: per-latent evaluation-model results (`top1`, `top5`, `confidence`, `[N]`) for every
  latent of `w` (default: the optimised ones) and each network's features of `feature_rows` (default: the
  selected latents; `[M, D]` in that order)."""
  run = generated.run
  w = run.optimized_w if w is None else w
  feature_rows = run.selected if feature_rows is None else feature_rows
  settings = (generated.crop, generated.clamp, generated.ppa_compat, num_classes,
              tuple((n.name, n.kind, n.image_size) for n in networks), generated.mesh)
  scores = render.cached_jit(
      "evaluate_scores", (generated.generator, *(n.module for n in networks)), settings,
      lambda: jit_sharded_batch(fake_scores_fn(generated.view, networks, ppa_compat=generated.ppa_compat,
                                               num_classes=num_classes),
                                generated.mesh, batch_args=2, replicated_args=2))
  keep = np.zeros(len(run.targets), bool)
  keep[feature_rows] = True
  per_row, features, start = {}, {net.name: [] for net in networks}, 0
  variables = parallel.replicate(network_variables, generated.mesh)
  batches = _latent_batches(w, run.targets, generated.batch_size)
  for out in parallel.map_batches(lambda w, t: scores(w, t, generated.generator_variables, variables), batches,
                                  generated.batch_size, mesh=generated.mesh):
    n = len(jax.tree.leaves(out)[0])
    for key in ("top1", "top5", "confidence"):
      if key in out:
        per_row.setdefault(key, []).append(out[key])
    for name in features:   # only the selected rows leave this loop
      features[name].append(out[name][keep[start:start + n]])
    start += n
    logging.log_every_n_seconds(logging.INFO, "Scored %d of %d generated images.", 60, start, len(keep))
  order = np.searchsorted(np.flatnonzero(keep), feature_rows)   # kept rows are in index order
  return ({k: np.concatenate(v) for k, v in per_row.items()},
          {name: np.concatenate(parts)[order] for name, parts in features.items()})


def nearest_training_distances(fake_features, fake_labels, real_features, real_labels) -> dict:
  """Squared L2 distance from each fake to the nearest real of its own class.

  Returns `{'distances' [Q], 'nearest' [Q] (row of real_features), 'per_class' {class: mean}, 'mean'}`;
  `mean` averages over all fakes. Every fake's class needs at least one real.
  """
  fake_labels, real_labels = np.asarray(fake_labels), np.asarray(real_labels)
  missing = np.setdiff1d(fake_labels, real_labels)
  if len(missing):
    raise ValueError(f"No training images for classes {missing[:10].tolist()}; the dataset does not match the "
                     "attacked model's classes.")
  distances, nearest = metrics.nearest_neighbours(jnp.asarray(fake_features), jnp.asarray(real_features),
                                                  fake_labels, real_labels)
  distances, nearest = np.asarray(distances, np.float64), np.asarray(nearest)
  per_class = {int(c): float(distances[fake_labels == c].mean()) for c in np.unique(fake_labels)}
  return {"distances": distances, "nearest": nearest, "per_class": per_class, "mean": float(distances.mean())}
