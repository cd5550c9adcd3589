"""`run_attack(config, workdir)`: the three Plug & Play Attack stages with their outputs, resumable.

Workdir layout:
  run.json                  the settings that determine stages 1-2 (a resumed run must match them)
  initial.npz               stage 1: starting latents, their search-space indices and scores
  stage2/batch_00000.npz    stage 2: the optimised latents of each finished batch
  latents.npz               everything: initial, optimised and selected latents, targets, scores
  images/class_0000.png     a grid of the selected images of each target class
  summary.json              the full config, timings and scores

Every file is written to a temporary name and renamed, so an interrupted run never leaves a half-written
file; a rerun with the same workdir skips what is done. Randomness comes from the config seed: stage 1 draws
the search space from `fold_in(seed key, 1)`, and latent i gets `fold_in(fold_in(seed key, 2), i)` in stage 2
and `fold_in(fold_in(seed key, 3), i)` in stage 3, so a resumed run equals an uninterrupted one.
"""
import ast
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import jaxmia
from jaxmia import convert, files, parallel
from jaxmia.attack import final_selection, initial_selection, optimize, render
from jaxmia.models import stylegan2

# Config sections whose values decide the results of stages 1 and 2 (checked when resuming).
_RESUME_KEYS = ("seed", "generator", "random_generator", "discriminator", "target", "targets", "candidates",
                "attack")


def resolve_targets(spec, num_classes: int) -> np.ndarray:
  """Target classes from `spec`: 'all', an int N (the first N classes), a list, or such a value as a string."""
  if isinstance(spec, str) and spec.strip() != "all":
    try:
      spec = ast.literal_eval(spec.strip())
    except (ValueError, SyntaxError):
      raise ValueError(f"targets={spec!r} is not 'all', an int or a list of class indices such as '[0, 5, 7]'.")
  if isinstance(spec, str) and spec.strip() == "all":
    classes = np.arange(num_classes)
  elif isinstance(spec, int):
    if not 0 < spec <= num_classes:
      raise ValueError(f"targets={spec} asks for the first {spec} classes, but the target model has {num_classes}.")
    classes = np.arange(spec)
  else:
    classes = np.asarray(list(spec), np.int64)
    if classes.ndim != 1 or not len(classes) or classes.min() < 0 or classes.max() >= num_classes:
      raise ValueError(f"targets={list(spec)} must be a non-empty list of class indices in "
                       f"[0, {num_classes}) (the target model's classes).")
  return classes.astype(np.int32)


def _save_npz(path: pathlib.Path, **arrays) -> None:
  if jax.process_index() == 0:
    files.atomic_write(path, lambda f: np.savez(f, **arrays))


def _save_json(path: pathlib.Path, value) -> None:
  if jax.process_index() == 0:
    files.atomic_write(path, lambda f: f.write(json.dumps(value, indent=2, default=str).encode()))


def _load(path: str, what: str, config_field: str):
  if not path or not pathlib.Path(path).exists():
    raise FileNotFoundError(f"{what} not found at {path!r}; set --config.{config_field} to a directory written by "
                            "jaxmia.convert.save_converted (converted PyTorch weights or a jaxmia training export).")
  return convert.load_converted(path)


def load_generator(config):
  """The configured generator, or (`generator = ""`) the seeded random StyleGAN2 of `config.random_generator`."""
  if config.generator or "random_generator" not in config:
    return _load(config.generator, "StyleGAN2 generator", "generator")
  generator = stylegan2.Generator(**config.random_generator.to_dict())
  logging.warning("config.generator is empty: the prior is a randomly initialised StyleGAN2 (seed %d), not a "
                  "trained one; set --config.generator for a real attack.", config.seed)
  z = jnp.zeros((1, generator.z_dim))
  return generator, jax.jit(generator.init)(jax.random.fold_in(jax.random.key(config.seed), 0), z, None)


def _check_resume(workdir: pathlib.Path, config) -> None:
  """Records the stage 1-2 settings, or checks that a resumed run uses the same ones."""
  values = config.to_dict()
  current = {k: json.loads(json.dumps(values.get(k), default=str)) for k in _RESUME_KEYS}
  path = workdir / "run.json"
  if path.exists():
    previous = json.loads(path.read_text())
    changed = sorted(k for k in _RESUME_KEYS if previous.get(k) != current[k])
    if changed:
      raise ValueError(f"{workdir} holds an attack run with different settings ({', '.join(changed)}); "
                       "use a new --workdir, or restore the settings to resume it.")
  else:
    _save_json(path, current)


def _progress(total: int):
  from clu import periodic_actions  # imports TensorFlow, so only when a run starts
  report = periodic_actions.ReportProgress(num_train_steps=total, every_secs=30.0)
  report(0)
  return report


def _write_grids(workdir, w, targets, generator, generator_variables, config, mesh) -> None:
  """Writes `images/class_XXXX.png`: the first `output.images_per_class` selected images of each class."""
  per_class = int(config.output.images_per_class)
  if per_class <= 0:
    return
  rows = np.concatenate([np.flatnonzero(targets == c)[:per_class] for c in np.unique(targets)])
  crop = render.resolve_center_crop(int(config.attack.center_crop), generator.img_resolution)
  size = int(config.output.image_size)

  def view(w, gv):
    return render.target_view(render.synthesize(generator, gv, w), clamp=True, center_crop=crop, resize=size)

  render_views = render.cached_jit("render", (generator,), (crop, size), lambda: jax.jit(view))
  gv = generator_variables if mesh is None else parallel.replicate(generator_variables, mesh)
  images = parallel.map_arrays(lambda w: render_views(w, gv), (w[rows],), int(config.final_selection.batch_size),
                               mesh=mesh)
  if jax.process_index() != 0:
    return
  (workdir / "images").mkdir(exist_ok=True)
  for cls in np.unique(targets):
    class_images = images[targets[rows] == cls]
    grid = files.image_grid(class_images, columns=min(len(class_images), per_class, 10))
    files.save_png(grid, workdir / "images" / f"class_{int(cls):04d}.png")


def run_attack(config, workdir) -> dict:
  """Runs (or resumes) the attack described by `config` in `workdir`; returns the summary dict."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _check_resume(workdir, config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(int(config.candidates.batch_size), mesh, "candidates.batch_size")
  parallel.check_batch_size(int(config.attack.batch_size), mesh, "attack.batch_size")
  parallel.check_batch_size(int(config.final_selection.batch_size), mesh, "final_selection.batch_size")

  generator, generator_variables = load_generator(config)
  target_model, target_variables = _load(config.target, "Target model", "target")
  discriminator = discriminator_variables = None
  if config.attack.discriminator_loss_weight > 0:
    discriminator, discriminator_variables = _load(config.discriminator, "StyleGAN2 discriminator", "discriminator")
  generator_variables, target_variables, discriminator_variables = parallel.replicate(
      (generator_variables, target_variables, discriminator_variables), mesh)
  size = int(config.attack.resize)
  num_classes = jax.eval_shape(lambda v: target_model.apply(v, jnp.zeros((1, size, size, 3))),
                               target_variables).shape[-1]
  classes = resolve_targets(config.targets, num_classes)
  targets = np.repeat(classes, int(config.candidates.num_candidates))
  seed_key = jax.random.key(config.seed)
  logging.info("Attacking %d classes with %d latents on %d device(s); workdir %s.", len(classes), len(targets),
               mesh.devices.size, workdir)
  timings = {}

  # Stage 1: starting latents.
  t0 = time.monotonic()
  initial_path = workdir / "initial.npz"
  if initial_path.exists():
    with np.load(initial_path) as f:
      initial = initial_selection.InitialLatents(w=f["w"], indices=f["indices"], scores=f["scores"])
    logging.info("Stage 1: loaded %d starting latents from %s.", len(initial.w), initial_path)
  else:
    logging.info("Stage 1: scoring %d random latents.", config.candidates.search_space_size)
    initial = initial_selection.select_initial_latents(
        jax.random.fold_in(seed_key, 1), targets, generator=generator, generator_variables=generator_variables,
        target_model=target_model, target_variables=target_variables, config=config.candidates,
        single_w=bool(config.attack.single_w), mesh=mesh,
        progress=_progress(int(config.candidates.search_space_size)))
    _save_npz(initial_path, w=initial.w, indices=initial.indices, scores=initial.scores, targets=targets)
  timings["stage1_seconds"] = time.monotonic() - t0

  # Stage 2: optimisation, one saved file per finished batch.
  t0 = time.monotonic()
  batch_size, num_latents = int(config.attack.batch_size), len(targets)
  (workdir / "stage2").mkdir(exist_ok=True)
  stage2_key = jax.random.fold_in(seed_key, 2)
  optimized = np.empty_like(initial.w)
  report = None
  for start in range(0, num_latents, batch_size):
    stop = min(start + batch_size, num_latents)
    path = workdir / "stage2" / f"batch_{start // batch_size:05d}.npz"
    if path.exists():
      with np.load(path) as f:
        optimized[start:stop] = f["w"]
      continue
    if report is None:
      logging.info("Stage 2: optimising latents %d-%d of %d in batches of %d.", start, num_latents, num_latents,
                   batch_size)
      report = _progress(num_latents)
      report(start)
    rows = np.minimum(np.arange(start, start + batch_size), num_latents - 1)  # the last batch repeats its end
    w = optimize.optimize_latents(
        initial.w[rows], targets[rows], optimize.latent_keys(stage2_key, rows), generator=generator,
        generator_variables=generator_variables, target_model=target_model, target_variables=target_variables,
        config=config.attack, discriminator=discriminator, discriminator_variables=discriminator_variables,
        mesh=mesh)
    optimized[start:stop] = parallel.to_host(w)[:stop - start]
    _save_npz(path, w=optimized[start:stop], start=start, stop=stop)
    report(stop)
  timings["stage2_seconds"] = time.monotonic() - t0

  # Stage 3: robust final selection.
  t0 = time.monotonic()
  logging.info("Stage 3: scoring %d optimised latents under %d random augmentations.", num_latents,
               config.final_selection.iterations)
  selection = final_selection.select_final_latents(
      optimized, targets, optimize.latent_keys(jax.random.fold_in(seed_key, 3), np.arange(num_latents)),
      generator=generator, generator_variables=generator_variables, target_model=target_model,
      target_variables=target_variables, config=config.final_selection, mesh=mesh,
      progress=_progress(num_latents))
  timings["stage3_seconds"] = time.monotonic() - t0
  kept = selection.indices

  _save_npz(workdir / "latents.npz", targets=targets, initial_w=initial.w, initial_indices=initial.indices,
            initial_scores=initial.scores, optimized_w=optimized, final_scores=selection.scores,
            selected_indices=kept, selected_w=optimized[kept], selected_targets=targets[kept],
            selected_scores=selection.scores[kept])
  _write_grids(workdir, optimized[kept], targets[kept], generator, generator_variables, config, mesh)
  summary = {
      "config": json.loads(config.to_json_best_effort()),
      "num_classes_attacked": len(classes),
      "num_latents": num_latents,
      "num_selected": len(kept),
      "mean_initial_score": float(np.mean(initial.scores)),
      "mean_final_score_all": float(np.mean(selection.scores)),
      "mean_final_score_selected": float(np.mean(selection.scores[kept])),
      "per_class_mean_selected_score": {int(c): float(np.mean(selection.scores[kept][targets[kept] == c]))
                                        for c in np.unique(targets[kept])},
      "timings": timings,
      "devices": [str(d) for d in mesh.devices.flat],
      "versions": {"jaxmia": jaxmia.__version__, "jax": jax.__version__},
  }
  _save_json(workdir / "summary.json", summary)
  logging.info("Done: kept %d of %d latents (mean robustness score %.4f); results in %s.", len(kept),
               num_latents, summary["mean_final_score_selected"], workdir)
  return summary
