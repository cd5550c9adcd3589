"""`run_attack(config, workdir)`: the three Plug & Play Attack stages with their outputs, resumable.

Workdir layout:
  run.json                  the settings that determine stages 1-2 (a resumed run must match them)
  initial.npz               stage 1: starting latents, their search-space indices and scores
  stage2/batch_00000.npz    stage 2: the optimised latents of each finished batch and its telemetry
  telemetry.npz             stage 2's per-step identity loss and target confidence (mean, min, max), per batch
                            and over all latents
  events.out.tfevents.stage2  the same curves over all latents for TensorBoard (`tensorboard --logdir <workdir>`)
  latents.npz               everything: initial, optimised and selected latents, targets, scores
  images/class_0000.png     a grid of the selected images of each target class
  summary.json              the full config, timings and scores

Every file is written to a temporary name and renamed, so an interrupted run never leaves a half-written
file; a rerun with the same workdir skips what is done (a cached stage file that does not read, e.g. truncated
by a copy, is named in a warning and recomputed). Before anything is written, the config is validated
(`validate_config`), the weights are loaded and the targets resolved; then the resume fingerprint
(`fingerprint`: the config without presentation fields, content digests of the target, generator and
discriminator weights) is compared with `run.json`: a workdir holding another run stops with the differing
fields, unless `config.overwrite` discards it. Randomness comes from the config seed: stage 1 draws
the search space from `fold_in(seed key, 1)`, and latent i gets `fold_in(fold_in(seed key, 2), i)` in stage 2
and `fold_in(fold_in(seed key, 3), i)` in stage 3, so a resumed run equals an uninterrupted one.

`config.kind` selects the attack: 'ppa' (the default, also when the field is absent) or 'brep', the label-only
BREP-MI (`jaxmia.attack.brep`, `run_brep`), which writes the same `run.json`, `latents.npz`, `summary.json` and
`images/` (so `jaxmia.evaluate` and `jaxmia.report` read it unchanged), with `initial.npz` holding its starting
points and `brep/batch_00000.npz` the searched latents of each finished batch.
"""
import ast
import json
import pathlib
import time

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from absl import logging

import jaxmia
from jaxmia import cli, files, model_store, parallel, progress, report, writers
from jaxmia.cli import interval, number, one_of
from jaxmia.attack import brep, final_selection, initial_selection, optimize, render
from jaxmia.models import stylegan2

# Config fields left out of the resume fingerprint: stage 3 and the grids (recomputed by every run), the weight
# paths (represented by the digests of their content) and overwrite itself. Everything else decides stages 1-2.
NOT_IN_FINGERPRINT = ("final_selection", "output", "overwrite", "generator", "target", "discriminator")
# What a started run leaves in its workdir, and everything it writes (deleted by config.overwrite).
_STATE = ("initial.npz", "stage2/*.npz", "latents.npz", "summary.json", "telemetry.npz", "events.out.tfevents.*")
_OUTPUTS = _STATE + ("stage2", "images", report.EVALUATION_DIR, "*.tmp")

_DTYPES = tuple(render.DTYPES)
_positive_int = number(1, integer=True)
_flag = one_of(True, False)


def _view_rules(section: str) -> list:
  return [(f"{section}.center_crop", "an integer >= 0 (0: automatic)", number(0, integer=True)),
          (f"{section}.resize", "a positive integer", _positive_int),
          (f"{section}.dtype", f"one of {_DTYPES}", one_of(*_DTYPES)),
          (f"{section}.clamp", "True or False", _flag),
          (f"{section}.batch_size", "a positive integer", _positive_int)]


CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("overwrite", "True or False", _flag),
    *_view_rules("candidates"),
    ("candidates.search_space_size", "a positive integer", _positive_int),
    ("candidates.num_candidates", "a positive integer", _positive_int),
    ("candidates.truncation_psi", "a finite number", number()),
    ("candidates.truncation_cutoff", "None or an integer >= 0", lambda v: v is None or number(0, integer=True)(v)),
    ("candidates.horizontal_flip", "True or False", _flag),
    *_view_rules("attack"),
    ("attack.num_steps", "an integer >= 0", number(0, integer=True)),
    ("attack.single_w", "True or False", _flag),
    ("attack.identity_loss", f"one of {tuple(optimize.IDENTITY_LOSSES)}", one_of(*optimize.IDENTITY_LOSSES)),
    ("attack.learning_rate", "> 0", number(0, low_open=True)),
    ("attack.b1", "in [0, 1)", number(0, 1, high_open=True)),
    ("attack.b2", "in [0, 1)", number(0, 1, high_open=True)),
    ("attack.eps", "> 0", number(0, low_open=True)),
    ("attack.lr_schedule", "'constant' or 'multistep'", one_of("constant", "multistep")),
    ("attack.lr_milestones", "a list of steps (integers >= 0)",
     lambda v: all(number(0, integer=True)(m) for m in v)),
    ("attack.lr_gamma", "> 0", number(0, low_open=True)),
    ("attack.discriminator_loss_weight", ">= 0", number(0)),
    ("attack.crop_scale", "a pair (a, b) with 0 < a <= b <= 1", interval(0, 1)),
    ("attack.crop_ratio", "a pair (a, b) with 0 < a <= b", interval(0, None)),
    ("attack.remat", f"one of {('none', *optimize.REMAT_POLICIES)}", one_of("none", *optimize.REMAT_POLICIES)),
    *_view_rules("final_selection"),
    ("final_selection.samples_per_target", "a positive integer", _positive_int),
    ("final_selection.iterations", "a positive integer", _positive_int),
    ("final_selection.crop_scale", "a pair (a, b) with 0 < a <= b <= 1", interval(0, 1)),
    ("final_selection.crop_ratio", "a pair (a, b) with 0 < a <= b", interval(0, None)),
    ("final_selection.horizontal_flip", "True or False", _flag),
    ("output.images_per_class", "an integer >= 0 (0: no grids)", number(0, integer=True)),
    ("output.image_size", "a positive integer", _positive_int),
)


def validate_config(config) -> None:
  """Every range-limited field of an attack config (`CONFIG_RULES`) and the limits between fields, checked
  before any work: one `ValueError` listing what is out of range. (Targets and centre crops depend on the
  target and generator: `run_attack` checks them once those are loaded, still before writing anything.)"""
  cli.check_config(config, CONFIG_RULES)
  candidates, kept = int(config.candidates.num_candidates), int(config.final_selection.samples_per_target)
  if candidates > int(config.candidates.search_space_size):
    raise ValueError(f"config.candidates.num_candidates={candidates} starting latents per class cannot come from "
                     f"config.candidates.search_space_size={config.candidates.search_space_size} random ones; "
                     "raise search_space_size or lower num_candidates.")
  if kept > candidates:
    raise ValueError(f"config.final_selection.samples_per_target={kept} exceeds the {candidates} latents optimised "
                     "per class (config.candidates.num_candidates); lower it or raise num_candidates.")


def fingerprint(config, *, generator_variables, target_variables, discriminator_variables) -> dict:
  """What defines stages 1-2 of an attack: the config minus `NOT_IN_FINGERPRINT` and the content digests
  (`files.tree_digest`) of the weights read from files (None for a seeded random generator or an unused
  discriminator)."""
  values = json.loads(config.to_json_best_effort())
  digest = lambda variables: None if variables is None else files.tree_digest(variables)
  return {"config": {k: v for k, v in values.items() if k not in NOT_IN_FINGERPRINT},
          "weights": {"generator": digest(generator_variables), "target": digest(target_variables),
                      "discriminator": digest(discriminator_variables)}}


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
                            "jaxmia.model_store.save_model (converted PyTorch weights or a jaxmia training export).")
  return model_store.load_model(path)


def load_generator(config):
  """The configured generator, or (`generator = ""`) the seeded random StyleGAN2 of `config.random_generator`."""
  if config.generator or "random_generator" not in config:
    return _load(config.generator, "StyleGAN2 generator", "generator")
  generator = stylegan2.Generator(**config.random_generator.to_dict())
  logging.warning("config.generator is empty: the prior is a randomly initialised StyleGAN2 (seed %d), not a "
                  "trained one; set --config.generator for a real attack.", config.seed)
  z = jnp.zeros((1, generator.z_dim))
  return generator, jax.jit(generator.init)(jax.random.fold_in(jax.random.key(config.seed), 0), z, None)


def _read_cached(path: pathlib.Path, expected: dict, optional: tuple[str, ...] = ()) -> dict | None:
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


def _progress(total: int, unit: str, what: str, done: int = 0) -> progress.Progress:
  report_progress = progress.Progress(total, unit=unit, what=what, every_secs=30.0)
  report_progress(done)
  return report_progress


TELEMETRY_FILE = "telemetry.npz"
TELEMETRY_EVENTS = "events.out.tfevents.stage2"
_TELEMETRY_NAMES = tuple(f"{name}_{stat}" for name in optimize.Telemetry._fields for stat in optimize.STATISTICS)


def combine_telemetry(curves: list[dict | None], counts: np.ndarray, num_points: int) -> dict[str, np.ndarray]:
  """Stage 2's telemetry over all latents from the batches' curves (`Telemetry.as_dict()`, None for a batch
  cached without telemetry) and their counted latents `counts` `[num_batches]`: means weighted by the counts,
  min of the minima, max of the maxima, each `[num_points]` (NaN where no batch has telemetry)."""
  have = [i for i, c in enumerate(curves) if c is not None]
  combined = {}
  for name in _TELEMETRY_NAMES:
    if not have:
      combined[name] = np.full(num_points, np.nan)
      continue
    values = np.stack([curves[i][name] for i in have]).astype(np.float64)
    if name.endswith("_mean"):
      weights = counts[have].astype(np.float64)[:, None]
      combined[name] = np.sum(values * weights, axis=0) / np.sum(weights)
    else:
      combined[name] = values.min(axis=0) if name.endswith("_min") else values.max(axis=0)
  return combined


def _write_telemetry(workdir: pathlib.Path, curves: list[dict | None], starts: np.ndarray, counts: np.ndarray,
                     num_points: int) -> dict[str, np.ndarray]:
  """`telemetry.npz` (per batch `[num_batches, num_points]`, NaN for batches cached without telemetry, and over
  all latents `all_<name>` `[num_points]`) and the TensorBoard file of the curves over all latents (tags
  `stage2/<name>`, step = attack step); both rewritten whole, so a resumed run leaves one copy. Returns the
  curves over all latents."""
  combined = combine_telemetry(curves, counts, num_points)
  if jax.process_index() != 0:
    return combined
  missing = np.full(num_points, np.nan)
  per_batch = {name: np.stack([missing if c is None else c[name] for c in curves]) for name in _TELEMETRY_NAMES}
  _save_npz(workdir / TELEMETRY_FILE, batch_start=starts, batch_latents=counts, **per_batch,
            **{f"all_{name}": values for name, values in combined.items()})
  writers.write_event_file(workdir / TELEMETRY_EVENTS,
                           writers.curves({f"stage2/{name}": values for name, values in combined.items()}))
  return combined


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
  batch_size = int((config.final_selection if "final_selection" in config else config.attack).batch_size)
  images = parallel.map_arrays(lambda w: render_views(w, gv), (w[rows],), batch_size, mesh=mesh)
  if jax.process_index() != 0:
    return
  (workdir / "images").mkdir(exist_ok=True)
  for cls in np.unique(targets):
    class_images = images[targets[rows] == cls]
    grid = files.image_grid(class_images, columns=min(len(class_images), per_class, 10))
    files.save_png(grid, workdir / "images" / f"class_{int(cls):04d}.png")


KINDS = ("ppa", "brep", "rlb", "gmi", "kedmi")


def run_attack(config, workdir) -> dict:
  """Runs (or resumes) the attack described by `config` in `workdir`; returns the summary dict. `config.kind`
  ('ppa' when absent, or 'brep') selects the attack."""
  kind = config.get("kind", "ppa")
  if kind not in KINDS:
    raise ValueError(f"config.kind={kind!r} is not an attack; use one of {KINDS}.")
  if kind == "brep":
    return run_brep(config, workdir)
  if kind == "kedmi":
    from jaxmia.attack import kedmi  # noqa: PLC0415 (kedmi imports this module)
    return kedmi.run_kedmi(config, workdir)
  if kind == "gmi":
    from jaxmia.attack import gmi  # noqa: PLC0415 (gmi imports this module's run-layout helpers)
    return gmi.run_gmi(config, workdir)
  if kind == "rlb":
    from jaxmia.attack import rlb  # noqa: PLC0415 (rlb imports this module's run-layout helpers)
    return rlb.run_rlb(config, workdir)
  validate_config(config)
  workdir = files.check_workdir(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(int(config.candidates.batch_size), mesh, "candidates.batch_size")
  parallel.check_batch_size(int(config.attack.batch_size), mesh, "attack.batch_size")
  parallel.check_batch_size(int(config.final_selection.batch_size), mesh, "final_selection.batch_size")

  generator, generator_variables = load_generator(config)
  target_model, target_variables = _load(config.target, "Target model", "target")
  discriminator = discriminator_variables = None
  if config.attack.discriminator_loss_weight > 0:
    discriminator, discriminator_variables = _load(config.discriminator, "StyleGAN2 discriminator", "discriminator")
  for section in ("candidates", "attack", "final_selection"):
    try:
      render.resolve_center_crop(int(config[section].center_crop), generator.img_resolution)
    except ValueError as e:
      raise ValueError(f"config.{section}.{e}") from e
  record = fingerprint(config, generator_variables=generator_variables if config.generator else None,
                       target_variables=target_variables, discriminator_variables=discriminator_variables)
  generator_variables, target_variables, discriminator_variables = parallel.replicate(
      (generator_variables, target_variables, discriminator_variables), mesh)
  size = int(config.attack.resize)
  num_classes = jax.eval_shape(lambda v: target_model.apply(v, jnp.zeros((1, size, size, 3))),
                               target_variables).shape[-1]
  classes = resolve_targets(config.targets, num_classes)
  targets = np.repeat(classes, int(config.candidates.num_candidates))

  # Everything is checked: now the workdir may change.
  files.check_run_record(workdir, record, program="jaxmia.attack", state=_STATE, outputs=_OUTPUTS,
                         overwrite=bool(config.get("overwrite", False)), primary=jax.process_index() == 0)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxmia_attack_run_record")
  workdir.mkdir(parents=True, exist_ok=True)
  seed_key = jax.random.key(config.seed)
  logging.info("Attacking %d classes with %d latents on %d device(s); workdir %s.", len(classes), len(targets),
               mesh.devices.size, workdir)
  timings = {}

  # Stage 1: starting latents.
  t0 = time.monotonic()
  initial_path = workdir / "initial.npz"
  cached = None
  if initial_path.exists():
    cached = _read_cached(initial_path, {"w": None, "indices": targets.shape, "scores": targets.shape,
                                         "targets": targets.shape}, optional=("targets",))
  if cached is not None and "targets" in cached and not np.array_equal(cached["targets"], targets):
    logging.warning("%s holds the starting latents of other targets; recomputing it.", initial_path)
    cached = None
  if cached is not None:
    initial = initial_selection.InitialLatents(w=cached["w"], indices=cached["indices"], scores=cached["scores"])
    logging.info("Stage 1: loaded %d starting latents from %s.", len(initial.w), initial_path)
  else:
    logging.info("Stage 1: scoring %d random latents.", config.candidates.search_space_size)
    initial = initial_selection.select_initial_latents(
        jax.random.fold_in(seed_key, 1), targets, generator=generator, generator_variables=generator_variables,
        target_model=target_model, target_variables=target_variables, config=config.candidates,
        single_w=bool(config.attack.single_w), mesh=mesh,
        progress=_progress(int(config.candidates.search_space_size), "candidates", "Stage 1"))
    _save_npz(initial_path, w=initial.w, indices=initial.indices, scores=initial.scores, targets=targets)
  timings["stage1_seconds"] = time.monotonic() - t0

  # Stage 2: optimisation, one saved file per finished batch (its latents and telemetry).
  t0 = time.monotonic()
  batch_size, num_latents = int(config.attack.batch_size), len(targets)
  num_steps, num_batches = int(config.attack.num_steps), -(-num_latents // batch_size)
  (workdir / "stage2").mkdir(exist_ok=True)
  stage2_key = jax.random.fold_in(seed_key, 2)
  optimized = np.empty_like(initial.w)
  curves: list[dict | None] = []
  stage2_progress = None
  for batch, start in enumerate(range(0, num_latents, batch_size)):
    stop = min(start + batch_size, num_latents)
    path = workdir / "stage2" / f"batch_{batch:05d}.npz"
    expected = {"w": (stop - start, *initial.w.shape[1:]),
                **{f"telemetry_{name}": (num_steps + 1,) for name in _TELEMETRY_NAMES}}
    cached = (_read_cached(path, expected, optional=tuple(expected)[1:]) if path.exists() else None)
    if cached is not None:
      optimized[start:stop] = cached["w"]
      have = all(f"telemetry_{name}" in cached for name in _TELEMETRY_NAMES)
      curves.append({name: cached[f"telemetry_{name}"] for name in _TELEMETRY_NAMES} if have else None)
      continue
    if stage2_progress is None:
      logging.info("Stage 2: optimising latents %d-%d of %d in batches of %d, %d steps each.", start, num_latents,
                   num_latents, batch_size, num_steps)
      stage2_progress = _progress(num_latents, "latents", "Stage 2", done=start)
    rows = np.arange(start, start + batch_size)
    counted = rows < num_latents
    rows = np.minimum(rows, num_latents - 1)  # the last batch repeats its end (not counted by the telemetry)
    w, telemetry = optimize.optimize_latents(
        initial.w[rows], targets[rows], optimize.latent_keys(stage2_key, rows), generator=generator,
        generator_variables=generator_variables, target_model=target_model, target_variables=target_variables,
        config=config.attack, discriminator=discriminator, discriminator_variables=discriminator_variables,
        mesh=mesh, counted=counted, return_telemetry=True)
    optimized[start:stop] = parallel.to_host(w)[:stop - start]
    curves.append(telemetry.as_dict())
    _save_npz(path, w=optimized[start:stop], start=start, stop=stop,
              **{f"telemetry_{name}": values for name, values in curves[-1].items()})
    last = curves[-1]
    stage2_progress(stop, f"{(batch + 1) * num_steps:,}/{num_batches * num_steps:,} optimisation steps (batch "
                          f"{batch + 1}/{num_batches}); batch {batch + 1} at step {num_steps}: identity loss "
                          f"{last['identity_loss_mean'][-1]:.4g} (mean), target confidence "
                          f"{last['confidence_mean'][-1]:.3f} mean / {last['confidence_min'][-1]:.3f} min")
  counts = np.array([min(start + batch_size, num_latents) - start for start in range(0, num_latents, batch_size)])
  stage2_curves = _write_telemetry(workdir, curves, np.arange(0, num_latents, batch_size), counts, num_steps + 1)
  if any(c is None for c in curves):
    logging.info("Stage 2: %d of %d batches were optimised by an older jaxmia and have no telemetry.",
                 sum(c is None for c in curves), len(curves))
  timings["stage2_seconds"] = time.monotonic() - t0

  # Stage 3: robust final selection.
  t0 = time.monotonic()
  logging.info("Stage 3: scoring %d optimised latents under %d random augmentations.", num_latents,
               config.final_selection.iterations)
  selection = final_selection.select_final_latents(
      optimized, targets, optimize.latent_keys(jax.random.fold_in(seed_key, 3), np.arange(num_latents)),
      generator=generator, generator_variables=generator_variables, target_model=target_model,
      target_variables=target_variables, config=config.final_selection, mesh=mesh,
      progress=_progress(num_latents, "latents", "Stage 3"))
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
      "stage2_telemetry_last_step": {name: (float(values[-1]) if np.isfinite(values[-1]) else None)
                                     for name, values in stage2_curves.items()},
      "timings": timings,
      "devices": [str(d) for d in mesh.devices.flat],
      "versions": {"jaxmia": jaxmia.__version__, "jax": jax.__version__},
  }
  _save_json(workdir / "summary.json", summary)
  logging.info("Done: kept %d of %d latents (mean robustness score %.4f); results in %s.", len(kept),
               num_latents, summary["mean_final_score_selected"], workdir)
  return summary


# ------------------------------------------------------------------------------------------------------------
# BREP-MI (config.kind = 'brep'): label-only boundary repulsion, one resumable file per batch of latents.

_BREP_STATE = ("initial.npz", "brep/*.npz", "latents.npz", "summary.json")
_BREP_OUTPUTS = _BREP_STATE + ("brep", "images", report.EVALUATION_DIR, "*.tmp")
_BREP_RESULTS = ("w", "final_w", "radius", "iteration", "accepted", "growths", "rejected", "queries")

BREP_CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("overwrite", "True or False", _flag),
    ("candidates.search_space_size", "a positive integer", _positive_int),
    ("candidates.batch_size", "a positive integer", _positive_int),
    ("candidates.truncation_psi", "a finite number", number()),
    ("candidates.truncation_cutoff", "None or an integer >= 0", lambda v: v is None or number(0, integer=True)(v)),
    *_view_rules("attack"),
    ("attack.single_w", "True or False", _flag),
    ("attack.restarts", "a positive integer", _positive_int),
    ("attack.iterations_per_call", "a positive integer", _positive_int),
    ("attack.sphere_points", "a positive integer", _positive_int),
    ("attack.initial_radius", "> 0", number(0, low_open=True)),
    ("attack.radius_expansion", ">= 1", number(1)),
    ("attack.expansion_fraction", "in [0, 1)", number(0, 1, high_open=True)),
    ("attack.step_size_ratio", "> 0", number(0, low_open=True)),
    ("attack.max_step_size", "> 0", number(0, low_open=True)),
    ("attack.max_iterations_at_radius", "a positive integer", _positive_int),
    ("attack.max_iterations", "an integer >= 0", number(0, integer=True)),
    ("attack.max_queries", "an integer >= 0 (0: no limit)", number(0, integer=True)),
    ("attack.max_radius", ">= 0 (0: no limit)", number(0)),
    ("attack.repulsion_only", "True or False", _flag),
    ("attack.point_clamp", "() or (low, high) with low < high",
     lambda v: len(v) == 0 or (len(v) == 2 and number()(v[0]) and number()(v[1]) and v[0] < v[1])),
    ("output.images_per_class", "an integer >= 0 (0: no grids)", number(0, integer=True)),
    ("output.image_size", "a positive integer", _positive_int),
)


def _search_progress(what: str):
  """A `brep.attack_latents` progress callback: a log line at most every 30 s."""
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
  cli.check_config(config, BREP_CONFIG_RULES)
  settings = brep.BrepSettings.from_config(config.attack)
  workdir = files.check_workdir(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(int(config.candidates.batch_size), mesh, "candidates.batch_size")
  parallel.check_batch_size(int(config.attack.batch_size), mesh, "attack.batch_size")

  generator, generator_variables = load_generator(config)
  target_model, target_variables = _load(config.target, "Target model", "target")
  try:
    view = brep.ViewSettings(**render.view_settings(config.attack, generator.img_resolution))
  except ValueError as e:
    raise ValueError(f"config.attack.{e}") from e
  record = fingerprint(config, generator_variables=generator_variables if config.generator else None,
                       target_variables=target_variables, discriminator_variables=None)
  generator_variables, target_variables = parallel.replicate((generator_variables, target_variables), mesh)
  num_classes = jax.eval_shape(lambda v: target_model.apply(v, jnp.zeros((1, view.resize, view.resize, 3))),
                               target_variables).shape[-1]
  classes = resolve_targets(config.targets, num_classes)
  restarts = int(config.attack.restarts)
  targets = np.repeat(classes, restarts)

  files.check_run_record(workdir, record, program="jaxmia.attack", state=_BREP_STATE, outputs=_BREP_OUTPUTS,
                         overwrite=bool(config.get("overwrite", False)), primary=jax.process_index() == 0)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxmia_attack_run_record")
  workdir.mkdir(parents=True, exist_ok=True)
  seed_key = jax.random.key(config.seed)
  logging.info("BREP-MI on %d classes (%d latents) on %d device(s); workdir %s.", len(classes), len(targets),
               mesh.devices.size, workdir)
  timings = {}

  # Starting points, labelled as their class by the target.
  t0 = time.monotonic()
  initial_path = workdir / "initial.npz"
  cached = None
  if initial_path.exists():
    cached = _read_cached(initial_path, {"w": None, "indices": targets.shape, "targets": targets.shape,
                                         "num_draws": ()})
  if cached is not None and not np.array_equal(cached["targets"], targets):
    cached = None
  if cached is not None:
    starts = brep.Starts(w=cached["w"], indices=cached["indices"], found=cached["indices"] >= 0,
                         num_draws=int(cached["num_draws"]))
  else:
    max_draws = int(config.candidates.search_space_size)
    starts = brep.draw_starts(
        jax.random.fold_in(seed_key, 1), targets, generator=generator, generator_variables=generator_variables,
        target_model=target_model, target_variables=target_variables, view=view, max_draws=max_draws,
        batch_size=int(config.candidates.batch_size), truncation_psi=float(config.candidates.truncation_psi),
        truncation_cutoff=config.candidates.truncation_cutoff, single_w=bool(config.attack.single_w), mesh=mesh,
        progress=_progress(max_draws, "random latents", "Starting points"))
    _save_npz(initial_path, w=starts.w, indices=starts.indices, targets=targets, num_draws=starts.num_draws)
  missing = sorted({int(c) for c in targets[~starts.found]})
  if missing:
    logging.warning("No starting point labelled as class(es) %s among %d random latents: not searched (raise "
                    "candidates.search_space_size).", missing, starts.num_draws)
  timings["start_seconds"] = time.monotonic() - t0

  # The search, one saved file per finished batch of latents.
  t0 = time.monotonic()
  batch_size, num_latents = int(config.attack.batch_size), len(targets)
  num_batches = -(-num_latents // batch_size)
  keys = brep.class_keys(jax.random.fold_in(seed_key, 2), classes, restarts)
  (workdir / "brep").mkdir(exist_ok=True)
  results = {name: [] for name in _BREP_RESULTS}
  search_progress = None
  for batch, start in enumerate(range(0, num_latents, batch_size)):
    stop = min(start + batch_size, num_latents)
    path = workdir / "brep" / f"batch_{batch:05d}.npz"
    shape = (stop - start,)
    expected = {name: (shape + starts.w.shape[1:] if name.endswith("w") else shape) for name in _BREP_RESULTS}
    cached = _read_cached(path, expected) if path.exists() else None
    if cached is None:
      if search_progress is None:
        logging.info("BREP-MI: searching latents %d-%d of %d in batches of %d (%d sphere points, at most %d "
                     "iterations each).", start, num_latents, num_latents, batch_size, settings.sphere_points,
                     settings.max_iterations)
        search_progress = _progress(num_latents, "latents", "BREP-MI", done=start)
      rows = np.minimum(np.arange(start, start + batch_size), num_latents - 1)  # the last batch repeats its end
      state = brep.attack_latents(
          starts.w[rows], targets[rows], keys[rows], starts.found[rows], generator=generator,
          generator_variables=generator_variables, target_model=target_model, target_variables=target_variables,
          settings=settings, view=view, mesh=mesh, iterations_per_call=int(config.attack.iterations_per_call),
          progress=_search_progress(f"BREP-MI batch {batch + 1}/{num_batches}"))
      values = {"w": state.result(), "final_w": state.w, **{name: getattr(state, name) for name in _BREP_RESULTS[2:]}}
      cached = {name: np.asarray(values[name])[:stop - start] for name in _BREP_RESULTS}
      _save_npz(path, start=start, stop=stop, **cached)
      search_progress(stop, f"batch {batch + 1}/{num_batches}: {np.mean(cached['queries']):,.0f} queries per "
                            f"latent, radius {np.mean(cached['radius']):.3g} (mean)")
    for name in _BREP_RESULTS:
      results[name].append(cached[name])
  results = {name: np.concatenate(parts) for name, parts in results.items()}
  timings["search_seconds"] = time.monotonic() - t0

  found = starts.found
  scores = found.astype(np.float32)  # label only: 1 where the target labels the result as its class
  kept = np.arange(num_latents)
  _save_npz(workdir / "latents.npz", targets=targets, initial_w=starts.w, initial_indices=starts.indices,
            initial_scores=scores, initial_found=found, optimized_w=results["w"], final_w=results["final_w"],
            final_scores=scores, selected_indices=kept, selected_w=results["w"], selected_targets=targets,
            selected_scores=scores, queries=results["queries"], iterations=results["iteration"],
            accepted=results["accepted"], growths=results["growths"], rejected=results["rejected"],
            radius=results["radius"])
  _write_grids(workdir, results["w"], targets, generator, generator_variables, config, mesh)
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
  _save_json(workdir / "summary.json", summary)
  logging.info("Done: BREP-MI searched %d latents with %s target queries (%.0f per class; %d for the starting "
               "points); results in %s.", int(found.sum()), f"{summary['queries']['total']:,}",
               summary["queries"]["per_class_mean"], starts.num_draws, workdir)
  return summary
