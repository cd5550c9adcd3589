"""Stage ablation of the attack (the paper's Tables 5-7): one stage run against another model than the others.

Models are trained with different α. A combination `(m1, m2, m3)` runs stage 1 (sampling the starting latents),
stage 2 (optimisation) and stage 3 (final selection) against models m1, m2, m3. All combinations share one
search space of latents and the per-latent keys of `jaxmia.attack.run_attack`, so `(m, m, m)` reproduces a
plain attack on m. Stage outputs are cached in the workdir (stage 1 per model, stage 2 per model pair), and
each combination is written as an attack run directory (`latents.npz`, `summary.json`) that
`jaxmia.evaluate` reads.
"""
import json
import pathlib
from typing import Sequence

import jax
import numpy as np

from jaxmia import files, model_store, parallel
from jaxmia.attack import final_selection, initial_selection, optimize, run

STAGES = ("sampling", "optimization", "selection")


def stage_combinations(num_models: int, stages: Sequence[int] = (1, 2, 3)) -> list[tuple[int, int, int]]:
  """The combinations to run: every model alone `(m, m, m)`, then for each stage in `stages` (1-based), each
  main model m and each other model o, the combination with model o in that stage and m in the other two."""
  combos = [(m, m, m) for m in range(num_models)]
  for stage in stages:
    if stage not in (1, 2, 3):
      raise ValueError(f"stages are 1 (sampling), 2 (optimization) or 3 (selection), got {stage}.")
    for main in range(num_models):
      for other in range(num_models):
        if other != main:
          combo = [main] * 3
          combo[stage - 1] = other
          combos.append(tuple(combo))
  return combos


def describe(combo: tuple[int, int, int]) -> tuple[int, int | None, int | None]:
  """`(main model, swapped stage (1-3) or None, model used in it or None)` of a combination."""
  values, counts = np.unique(combo, return_counts=True)
  if len(values) == 1:
    return combo[0], None, None
  if len(values) != 2:
    raise ValueError(f"combination {combo} mixes three models; an ablation swaps one stage.")
  main = int(values[np.argmax(counts)])
  stage = next(i for i, m in enumerate(combo) if m != main)
  return main, stage + 1, combo[stage]


def combo_name(combo) -> str:
  return "stages_" + "_".join(f"m{m}" for m in combo)


def _cached(path: pathlib.Path, compute):
  """`compute()` (a dict of arrays), saved to / loaded from the npz file `path`."""
  if path.exists():
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  arrays = compute()
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, lambda f: np.savez(f, **arrays))
  return arrays


def run_stage_ablation(config, model_dirs: Sequence[str], workdir, *, stages: Sequence[int] = (1, 2, 3),
                       mesh=None) -> dict[tuple[int, int, int], pathlib.Path]:
  """Runs every combination of `stage_combinations` and returns `{combination: attack run directory}`.

  `config` is an attack config (its `target` is ignored: the models are `model_dirs`, which must share their
  classes). Resumable: finished stage outputs and combinations in `workdir` are reused.
  """
  workdir = pathlib.Path(workdir)
  mesh = mesh or parallel.make_mesh()
  generator, generator_variables = run.load_generator(config)
  generator_variables = parallel.replicate(generator_variables, mesh)
  targets_models = [model_store.load_model(d) for d in model_dirs]
  size = int(config.attack.resize)
  class_counts = {jax.eval_shape(lambda v, m=m: m.apply(v, jax.numpy.zeros((1, size, size, 3))), v).shape[-1]
                  for m, v in targets_models}
  if len(class_counts) != 1:
    raise ValueError(f"the models have different numbers of classes {sorted(class_counts)}; an ablation needs "
                     "models of one label set.")
  targets = np.repeat(run.resolve_targets(config.targets, class_counts.pop()), int(config.candidates.num_candidates))
  indices = np.arange(len(targets))
  seed_key = jax.random.key(config.seed)
  models = [dict(target_model=m, target_variables=parallel.replicate(v, mesh)) for m, v in targets_models]
  common = dict(generator=generator, generator_variables=generator_variables, mesh=mesh)

  def stage1(m):
    initial = initial_selection.select_initial_latents(
        jax.random.fold_in(seed_key, 1), targets, config=config.candidates, single_w=bool(config.attack.single_w),
        **common, **models[m])
    return {"w": initial.w, "indices": initial.indices, "scores": initial.scores}

  def stage2(w_init, m):
    keys = optimize.latent_keys(jax.random.fold_in(seed_key, 2), indices)
    optimise = lambda w, t, k: optimize.optimize_latents(w, t, k, config=config.attack, **common, **models[m])
    return {"w": parallel.map_arrays(optimise, (w_init, targets, keys), int(config.attack.batch_size))}

  def stage3(w, m):
    selection = final_selection.select_final_latents(
        w, targets, optimize.latent_keys(jax.random.fold_in(seed_key, 3), indices), config=config.final_selection,
        **common, **models[m])
    return {"indices": selection.indices, "scores": selection.scores}

  run_dirs = {}
  for combo in stage_combinations(len(model_dirs), stages):
    m1, m2, m3 = combo
    run_dir = workdir / combo_name(combo)
    run_dirs[combo] = run_dir
    if (run_dir / "summary.json").exists():
      continue
    initial = _cached(workdir / "stage1" / f"m{m1}.npz", lambda: stage1(m1))
    optimized = _cached(workdir / "stage2" / f"m{m1}_m{m2}.npz", lambda: stage2(initial["w"], m2))["w"]
    selection = _cached(workdir / "stage3" / f"m{m1}_m{m2}_m{m3}.npz", lambda: stage3(optimized, m3))
    kept = selection["indices"]
    main, stage, other = describe(combo)
    if jax.process_index() == 0:
      run_dir.mkdir(parents=True, exist_ok=True)
      np.savez(run_dir / "latents.npz", targets=targets, initial_w=initial["w"], initial_scores=initial["scores"],
               optimized_w=optimized, final_scores=selection["scores"], selected_indices=kept,
               selected_w=optimized[kept], selected_targets=targets[kept])
      run_config = json.loads(config.to_json_best_effort())
      run_config["target"] = model_dirs[main]
      summary = {"config": run_config, "stage_models": [model_dirs[m] for m in combo], "main_model": main,
                 "swapped_stage": stage, "swapped_model": other, "num_latents": len(targets),
                 "num_selected": len(kept)}
      (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
  return run_dirs
