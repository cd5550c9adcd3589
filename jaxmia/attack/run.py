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

`config.kind` selects the attack: 'ppa' (the default, also when the field is absent, run here), or another kind
whose module holds its jitted core and its `run_<kind>`: 'brep' (label-only BREP-MI, `jaxmia.attack.brep`),
'gmi' (`jaxmia.attack.gmi`), 'kedmi' (`jaxmia.attack.kedmi`) and 'rlb' (black-box RLB-MI, `jaxmia.attack.rlb`).
All write the run layout of `jaxmia.attack.layout` (`run.json`, `latents.npz`, `summary.json`, `images/`), so
`jaxmia.evaluate` and `jaxmia.report` read every kind unchanged; each keeps its own resumable batch files.
"""
import json
import pathlib
import time

import jax
import numpy as np
from absl import logging

import jaxmia
from jaxmia import cli, files, parallel, report, writers
from jaxmia.cli import interval, number, one_of
from jaxmia.attack import brep, final_selection, gmi, initial_selection, kedmi, layout, optimize, rlb
from jaxmia.attack.layout import load_generator, resolve_targets  # noqa: F401 (public API of jaxmia.attack.run)

# What a started run leaves in its workdir, and everything it writes (deleted by config.overwrite).
_STATE = ("initial.npz", "stage2/*.npz", "latents.npz", "summary.json", "telemetry.npz", "events.out.tfevents.*")
_OUTPUTS = _STATE + ("stage2", "images", report.EVALUATION_DIR, "*.tmp")

CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("overwrite", "True or False", layout.flag),
    *layout.view_rules("candidates"),
    ("candidates.search_space_size", "a positive integer", layout.positive_int),
    ("candidates.num_candidates", "a positive integer", layout.positive_int),
    ("candidates.truncation_psi", "a finite number", number()),
    ("candidates.truncation_cutoff", "None or an integer >= 0", lambda v: v is None or number(0, integer=True)(v)),
    ("candidates.horizontal_flip", "True or False", layout.flag),
    *layout.view_rules("attack"),
    ("attack.num_steps", "an integer >= 0", number(0, integer=True)),
    ("attack.single_w", "True or False", layout.flag),
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
    *layout.view_rules("final_selection"),
    ("final_selection.samples_per_target", "a positive integer", layout.positive_int),
    ("final_selection.iterations", "a positive integer", layout.positive_int),
    ("final_selection.crop_scale", "a pair (a, b) with 0 < a <= b <= 1", interval(0, 1)),
    ("final_selection.crop_ratio", "a pair (a, b) with 0 < a <= b", interval(0, None)),
    ("final_selection.horizontal_flip", "True or False", layout.flag),
    ("output.images_per_class", "an integer >= 0 (0: no grids)", number(0, integer=True)),
    ("output.image_size", "a positive integer", layout.positive_int),
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
  layout.save_npz(workdir / TELEMETRY_FILE, batch_start=starts, batch_latents=counts, **per_batch,
            **{f"all_{name}": values for name, values in combined.items()})
  writers.write_event_file(workdir / TELEMETRY_EVENTS,
                           writers.curves({f"stage2/{name}": values for name, values in combined.items()}))
  return combined


# The other attack kinds: each module holds its jitted core and its run_<kind>, on the shared `layout`.
_OTHER_KINDS = {"brep": brep.run_brep, "gmi": gmi.run_gmi, "kedmi": kedmi.run_kedmi, "rlb": rlb.run_rlb}
KINDS = ("ppa", *_OTHER_KINDS)


def run_attack(config, workdir) -> dict:
  """Runs (or resumes) the attack described by `config` in `workdir`; returns the summary dict. `config.kind`
  ('ppa' when absent, or 'brep') selects the attack."""
  kind = config.get("kind", "ppa")
  if kind not in KINDS:
    raise ValueError(f"config.kind={kind!r} is not an attack; use one of {KINDS}.")
  if kind != "ppa":
    return _OTHER_KINDS[kind](config, workdir)
  validate_config(config)
  workdir = files.check_workdir(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(int(config.candidates.batch_size), mesh, "candidates.batch_size")
  parallel.check_batch_size(int(config.attack.batch_size), mesh, "attack.batch_size")
  parallel.check_batch_size(int(config.final_selection.batch_size), mesh, "final_selection.batch_size")

  generator, generator_variables = layout.load_generator(config)
  target_model, target_variables = layout.load_weights(config.target, "Target model", "target")
  discriminator = discriminator_variables = None
  if config.attack.discriminator_loss_weight > 0:
    discriminator, discriminator_variables = layout.load_weights(config.discriminator, "StyleGAN2 discriminator",
                                                                 "discriminator")
  for section in ("candidates", "attack", "final_selection"):
    layout.view_of(config, section, generator.img_resolution)  # a centre crop that does not fit stops here
  record = layout.fingerprint(config, generator_variables=generator_variables if config.generator else None,
                       target_variables=target_variables, discriminator_variables=discriminator_variables)
  generator_variables, target_variables, discriminator_variables = parallel.replicate(
      (generator_variables, target_variables, discriminator_variables), mesh)
  size = int(config.attack.resize)
  num_classes = layout.count_classes(target_model, target_variables, size)
  classes = layout.resolve_targets(config.targets, num_classes)
  targets = np.repeat(classes, int(config.candidates.num_candidates))

  # Everything is checked: now the workdir may change.
  layout.claim_workdir(workdir, record, state=_STATE, outputs=_OUTPUTS, overwrite=bool(config.get("overwrite", False)))
  seed_key = jax.random.key(config.seed)
  logging.info("Attacking %d classes with %d latents on %d device(s); workdir %s.", len(classes), len(targets),
               mesh.devices.size, workdir)
  timings = {}

  # Stage 1: starting latents.
  t0 = time.monotonic()
  initial_path = workdir / "initial.npz"
  cached = layout.read_starts(initial_path, targets, {"w": None, "indices": targets.shape, "scores": targets.shape},
                              targets_optional=True)
  if cached is not None:
    initial = initial_selection.InitialLatents(w=cached["w"], indices=cached["indices"], scores=cached["scores"])
    logging.info("Stage 1: loaded %d starting latents from %s.", len(initial.w), initial_path)
  else:
    logging.info("Stage 1: scoring %d random latents.", config.candidates.search_space_size)
    initial = initial_selection.select_initial_latents(
        jax.random.fold_in(seed_key, 1), targets, generator=generator, generator_variables=generator_variables,
        target_model=target_model, target_variables=target_variables, config=config.candidates,
        single_w=bool(config.attack.single_w), mesh=mesh,
        progress=layout.progress_bar(int(config.candidates.search_space_size), "candidates", "Stage 1"))
    layout.save_npz(initial_path, w=initial.w, indices=initial.indices, scores=initial.scores, targets=targets)
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
    cached = (layout.read_cached(path, expected, optional=tuple(expected)[1:]) if path.exists() else None)
    if cached is not None:
      optimized[start:stop] = cached["w"]
      have = all(f"telemetry_{name}" in cached for name in _TELEMETRY_NAMES)
      curves.append({name: cached[f"telemetry_{name}"] for name in _TELEMETRY_NAMES} if have else None)
      continue
    if stage2_progress is None:
      logging.info("Stage 2: optimising latents %d-%d of %d in batches of %d, %d steps each.", start, num_latents,
                   num_latents, batch_size, num_steps)
      stage2_progress = layout.progress_bar(num_latents, "latents", "Stage 2", done=start)
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
    layout.save_npz(path, w=optimized[start:stop], start=start, stop=stop,
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
      progress=layout.progress_bar(num_latents, "latents", "Stage 3"))
  timings["stage3_seconds"] = time.monotonic() - t0
  kept = selection.indices

  layout.save_npz(workdir / "latents.npz", targets=targets, initial_w=initial.w, initial_indices=initial.indices,
            initial_scores=initial.scores, optimized_w=optimized, final_scores=selection.scores,
            selected_indices=kept, selected_w=optimized[kept], selected_targets=targets[kept],
            selected_scores=selection.scores[kept])
  layout.write_grids(workdir, optimized[kept], targets[kept], generator, generator_variables, config, mesh)
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
  layout.save_json(workdir / "summary.json", summary)
  logging.info("Done: kept %d of %d latents (mean robustness score %.4f); results in %s.", len(kept),
               num_latents, summary["mean_final_score_selected"], workdir)
  return summary


# ------------------------------------------------------------------------------------------------------------
