"""The run layout every attack kind shares: its resume fingerprint, target classes, atomic result files,
cached stage files, weights loading, progress and image grids.

An attack kind's module (`jaxmia.attack.brep`, `gmi`, `kedmi`, `rlb`) and the PPA driver (`jaxmia.attack.run`)
build on these, so every kind writes the same `run.json`, `latents.npz`, `summary.json` and `images/` that
`jaxmia.evaluate` and `jaxmia.report` read, and this module imports none of them (no import loop).
"""
import ast
import json
import pathlib

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxmia import files, model_store, parallel, progress
from jaxmia.attack import render
from jaxmia.cli import number, one_of
from jaxmia.models import stylegan2, xla_cpu

# Config fields left out of the resume fingerprint: stage 3 and the grids (recomputed by every run), the weight
# paths (represented by the digests of their content) and overwrite itself. Everything else decides stages 1-2.
NOT_IN_FINGERPRINT = ("final_selection", "output", "overwrite", "generator", "target", "discriminator")
DTYPES = tuple(render.DTYPES)
positive_int = number(1, integer=True)
flag = one_of(True, False)


def view_rules(section: str) -> list:
  return [(f"{section}.center_crop", "an integer >= 0 (0: automatic)", number(0, integer=True)),
          (f"{section}.resize", "a positive integer", positive_int),
          (f"{section}.dtype", f"one of {DTYPES}", one_of(*DTYPES)),
          (f"{section}.clamp", "True or False", flag),
          (f"{section}.xla_cpu_options", f"one of {xla_cpu.COMPILATIONS}", one_of(*xla_cpu.COMPILATIONS)),
          (f"{section}.batch_size", "a positive integer", positive_int)]


def fingerprint(config, *, generator_variables, target_variables, discriminator_variables) -> dict:
  """What defines stages 1-2 of an attack: the config minus `NOT_IN_FINGERPRINT` and the content digests
  (`files.tree_digest`) of the weights read from files (None for a seeded random generator or an unused
  discriminator)."""
  values = json.loads(config.to_json_best_effort())
  digest = lambda variables: None if variables is None else files.tree_digest(variables)
  return {"config": {k: v for k, v in values.items() if k not in NOT_IN_FINGERPRINT},
          "weights": {"generator": digest(generator_variables), "target": digest(target_variables),
                      "discriminator": digest(discriminator_variables)}}


def view_of(config, section: str, resolution: int) -> render.ViewSettings:
  """The target's view of generated images of `resolution` pixels from `config.<section>`; a centre crop that
  does not fit is named with its config field."""
  try:
    return render.ViewSettings(**render.view_settings(config[section], resolution))
  except ValueError as e:
    raise ValueError(f"config.{section}.{e}") from e


def count_classes(target_model, target_variables, size: int) -> int:
  """The number of classes of a target that takes `[B, size, size, 3]` images (shapes only, nothing computed)."""
  images = jnp.zeros((1, size, size, 3))
  return jax.eval_shape(lambda v: target_model.apply(v, images), target_variables).shape[-1]


def claim_workdir(workdir: pathlib.Path, record: dict, *, state: tuple, outputs: tuple, overwrite: bool) -> None:
  """Once everything is checked, before anything is written: `workdir` is this run's (its `run.json` equals
  `record`, or it is new, or `overwrite` deleted the kind's `outputs`; another run's `state` stops it, see
  `files.check_run_record`), every host agreeing, and it exists."""
  files.check_run_record(workdir, record, program="jaxmia.attack", state=state, outputs=outputs,
                         overwrite=overwrite, primary=jax.process_index() == 0)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxmia_attack_run_record")
  workdir.mkdir(parents=True, exist_ok=True)


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


def save_npz(path: pathlib.Path, **arrays) -> None:
  if jax.process_index() == 0:
    files.atomic_write(path, lambda f: np.savez(f, **arrays))


def save_json(path: pathlib.Path, value) -> None:
  if jax.process_index() == 0:
    files.atomic_write(path, lambda f: f.write(json.dumps(value, indent=2, default=str).encode()))


def load_weights(path: str, what: str, config_field: str):
  if not path or not pathlib.Path(path).exists():
    raise FileNotFoundError(f"{what} not found at {path!r}; set --config.{config_field} to a directory written by "
                            "jaxmia.model_store.save_model (converted PyTorch weights or a jaxmia training export).")
  return model_store.load_model(path)


def load_generator(config):
  """The configured generator, or (`generator = ""`) the seeded random StyleGAN2 of `config.random_generator`."""
  if config.generator or "random_generator" not in config:
    return load_weights(config.generator, "StyleGAN2 generator", "generator")
  generator = stylegan2.Generator(**config.random_generator.to_dict())
  logging.warning("config.generator is empty: the prior is a randomly initialised StyleGAN2 (seed %d), not a "
                  "trained one; set --config.generator for a real attack.", config.seed)
  z = jnp.zeros((1, generator.z_dim))
  return generator, jax.jit(generator.init)(jax.random.fold_in(jax.random.key(config.seed), 0), z, None)


def read_cached(path: pathlib.Path, expected: dict, optional: tuple[str, ...] = ()) -> dict | None:
  """The arrays of a cached stage file, or None (after a warning naming it, so that it is recomputed) when it
  does not read (truncated, corrupt) or its arrays are not the `expected` {name: shape, or None for any}
  (names in `optional` may be absent)."""
  try:
    with np.load(path) as f:
      arrays = {name: f[name] for name in expected if name not in optional or name in f.files}
  except Exception as e:  # zipfile, zlib, numpy and OS errors all mean "unreadable"
    logging.warning("%s is unreadable (%s: %s); recomputing it.", path, type(e).__name__, e)
    return None
  wrong = [f"{name} {arrays[name].shape} != {shape}" for name, shape in expected.items()
           if name in arrays and shape is not None and arrays[name].shape != tuple(shape)]
  if wrong:
    logging.warning("%s does not belong to this run (%s); recomputing it.", path, ", ".join(wrong))
    return None
  return arrays


def read_starts(path: pathlib.Path, targets: np.ndarray, expected: dict, *, targets_optional: bool = False):
  """The cached starting points of `targets` `[N]` (`read_cached` of `expected` plus their stored `targets`), or
  None when the file is absent, unreadable or holds the starts of other targets (named in a warning).
  `targets_optional`: files of older runs without `targets` are taken as they are."""
  if not path.exists():
    return None
  cached = read_cached(path, {**expected, "targets": targets.shape}, optional=("targets",) if targets_optional else ())
  if cached is not None and "targets" in cached and not np.array_equal(cached["targets"], targets):
    logging.warning("%s holds the starting latents of other targets; recomputing it.", path)
    return None
  return cached


def progress_bar(total: int, unit: str, what: str, done: int = 0) -> progress.Progress:
  report_progress = progress.Progress(total, unit=unit, what=what, every_secs=30.0)
  report_progress(done)
  return report_progress


def write_grids(workdir, w, targets, generator, generator_variables, config, mesh) -> None:
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
  batch_size = int((config.final_selection if "final_selection" in config else config.attack).batch_size)
  images = parallel.map_arrays(lambda w: render_views(w, gv), (w[rows],), batch_size, mesh=mesh)
  if jax.process_index() != 0:
    return
  (workdir / "images").mkdir(exist_ok=True)
  for cls in np.unique(targets):
    class_images = images[targets[rows] == cls]
    grid = files.image_grid(class_images, columns=min(len(class_images), per_class, 10))
    files.save_png(grid, workdir / "images" / f"class_{int(cls):04d}.png")
