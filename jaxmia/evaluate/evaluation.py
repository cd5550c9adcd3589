"""`evaluate_attack`: one attack run's evaluation, from loading the networks to the report (see
`jaxmia.evaluate` for the metrics and the files)."""
import dataclasses
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxmia import classifier, data, files, metrics, parallel, report, student
from jaxmia.attack import render
from jaxmia.evaluate import writers
from jaxmia.evaluate.attack_run import AttackRun, load_attack_run
from jaxmia.evaluate.feature_cache import class_subset, dataset_cache_key, training_features
from jaxmia.evaluate.networks import load_network, load_weights, num_classes
from jaxmia.evaluate.scoring import GeneratedImages, nearest_training_distances, score_generated_images

OUTPUT_DIR = report.EVALUATION_DIR

# Metrics that need each network (n/a with the network's reason when it is not configured).
_NEEDS = {"evaluation": ("acc_top1", "acc_top5", "delta_eval"), "facenet": ("delta_face",),
          "fid": ("fid", "precision", "recall", "density", "coverage")}
_PRDC = ("precision", "recall", "density", "coverage")


@dataclasses.dataclass
class ReportNumbers:
  """What the evaluation's steps write for the report: its columns (`values`), the reasons of the columns that
  are n/a (`unavailable`), further numbers (`details`) and the per-class numbers."""
  values: dict = dataclasses.field(default_factory=dict)
  unavailable: dict = dataclasses.field(default_factory=dict)
  details: dict = dataclasses.field(default_factory=dict)
  per_class: dict = dataclasses.field(default_factory=dict)   # class -> {name: value}

  def add_per_class(self, cls, **values):
    self.per_class.setdefault(int(cls), {}).update(values)


def _attack_accuracy(numbers: ReportNumbers, run: AttackRun, per_row: dict, initial_per_row: dict | None = None
                     ) -> None:
  """Acc@1, Acc@5 and mean target confidence on the selected and on all optimised latents (and on the starting
  latents of stage 1, `_initial`, when scored), overall and per class."""
  everything = np.arange(len(run.targets))
  groups = {"": (run.selected, per_row), "_all_optimized": (everything, per_row)}
  if initial_per_row:
    groups["_initial"] = (everything, initial_per_row)
  for suffix, (rows, scores) in groups.items():
    for name, key in (("acc_top1", "top1"), ("acc_top5", "top5"), ("mean_target_confidence", "confidence")):
      value = float(scores[key][rows].mean())
      (numbers.values if name.startswith("acc") and not suffix else numbers.details)[name + suffix] = value
      for c in np.unique(run.targets[rows]):
        numbers.add_per_class(c, **{name + suffix: float(scores[key][rows[run.targets[rows] == c]].mean())})


def _feature_metrics(numbers: ReportNumbers, run: AttackRun, fake: dict, real: dict, *, prdc_k: int,
                     ppa_compat: bool) -> dict:
  """δ_face, δ_eval, FID and per-class PRDC; returns `{network: nearest training row of each selected image}`."""
  targets, nearest = run.selected_targets, {}
  for name, key in (("facenet", "delta_face"), ("evaluation", "delta_eval")):
    if name in real:
      distances = nearest_training_distances(fake[name], targets, real[name][0], real[name][1])
      numbers.values[key] = distances["mean"]
      nearest[name] = distances["nearest"]
      for c, value in distances["per_class"].items():
        numbers.add_per_class(c, **{key: value})
  if "fid" in real:
    real_features, real_labels, _ = real["fid"]
    if min(len(real_features), len(fake["fid"])) < 2:
      numbers.unavailable["fid"] = "FID needs at least 2 selected and 2 training images"
    else:
      numbers.values["fid"] = metrics.fid_from_features(real_features, fake["fid"])
    per_class = {}
    for c in np.unique(targets):
      real_c, fake_c = real_features[real_labels == c], fake["fid"][targets == c]
      if min(len(real_c), len(fake_c)) > prdc_k:
        per_class[int(c)] = metrics.prdc(real_c, fake_c, k=prdc_k, ppa_compat=ppa_compat)
        numbers.add_per_class(c, **per_class[int(c)])
    for key in _PRDC:
      if per_class:
        numbers.values[key] = float(np.mean([v[key] for v in per_class.values()]))
      else:
        numbers.unavailable[key] = f"no attacked class has more than k={prdc_k} selected and training images"
    numbers.details["prdc_classes"] = len(per_class)
  return nearest


def _target_utility(numbers: ReportNumbers, generated: GeneratedImages, config, test_split) -> None:
  """Test accuracy, top-5 accuracy and ECE (10 bins) of the target on its whole test split."""
  target, variables, _ = load_weights(config.target or generated.run.config["target"], "Target model", "target")
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  size = int(config.target_image_size) or int(generated.run.config["attack"]["resize"])
  eval_step = classifier.make_eval_step(target.apply, size, generated.mesh)
  utility = classifier.evaluate_split(eval_step, parallel.replicate(variables, generated.mesh), test_split,
                                      generated.batch_size, generated.mesh, "test")
  numbers.values["test_accuracy"], numbers.values["ece"] = utility["test_accuracy"], utility["test_ece"]
  numbers.details["test_top5_accuracy"] = utility["test_top5_accuracy"]


def _per_class_rows(numbers: ReportNumbers, run: AttackRun, split, classes) -> list[dict]:
  keys = ("acc_top1", "acc_top5", "mean_target_confidence", "acc_top1_all_optimized", "acc_top5_all_optimized",
          "mean_target_confidence_all_optimized", "acc_top1_initial", "acc_top5_initial",
          "mean_target_confidence_initial", "delta_face", "delta_eval") + _PRDC
  rows = []
  for c in classes:
    row = {"class": int(c), "class_name": split.class_names[c] if c < len(split.class_names) else "",
           "num_selected": int(np.sum(run.selected_targets == c)), "num_optimized": int(np.sum(run.targets == c)),
           "num_training_images": int(np.sum(split.labels == c))}
    values = numbers.per_class.get(int(c), {})
    rows.append(row | {key: "" if values.get(key) is None else f"{float(values[key]):.6g}" for key in keys})
  return rows


def _finite_or_none(value):
  return None if value is None or not np.isfinite(value) else float(value)


def evaluate_attack(config: ml_collections.ConfigDict, run_dir, out_dir=None, mesh=None) -> dict:
  """Evaluates the attack run in `run_dir` (see `jaxmia.evaluate`); writes and returns the report dict.

  `run_dir` is a `jaxmia.attack` run folder, or an `AttackRun` read otherwise (PPA's result file:
  `load_ppa_results`). The report goes to `out_dir`, default `<run_dir>/evaluation`.
  """
  t_start, timings = time.monotonic(), {}
  run = run_dir if isinstance(run_dir, AttackRun) else load_attack_run(run_dir)
  out_dir = pathlib.Path(out_dir) if out_dir else run.run_dir / OUTPUT_DIR
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(int(config.batch_size), mesh, "batch_size")
  generator, generator_variables, _ = load_weights(config.generator or run.config["generator"],
                                                   "StyleGAN2 generator", "generator")
  generated = GeneratedImages(
      run, generator, parallel.replicate(generator_variables, mesh),
      crop=render.resolve_center_crop(int(run.config["attack"]["center_crop"]), generator.img_resolution),
      clamp=not config.ppa_compat, mesh=mesh, batch_size=int(config.batch_size), ppa_compat=bool(config.ppa_compat))
  numbers = ReportNumbers()
  classes = np.unique(run.selected_targets)
  numbers.details.update(num_classes_attacked=len(classes), num_optimized=len(run.targets),
                         num_selected=len(run.selected))

  networks, network_variables = [], {}
  for name, field in (("evaluation", "evaluation_model"), ("facenet", "facenet"), ("fid", "fid")):
    net, variables = load_network(name, config[field], field)
    if net is None:
      numbers.unavailable.update({key: variables for key in _NEEDS[name]})   # `variables` is the reason
    else:
      networks.append(net)
      network_variables[name] = variables
  networks = tuple(networks)
  train_split = data.load_split(config.dataset, "train")
  test_split = data.load_split(config.dataset, "test")

  def timed(name, fn, *args, **kwargs):
    t0 = time.monotonic()
    out = fn(*args, **kwargs)
    timings[f"{name}_seconds"] = time.monotonic() - t0
    return out

  nearest, real = {}, {}
  if networks:
    evaluation_classes = (num_classes(networks[0], network_variables["evaluation"]) if networks[0].name == "evaluation"
                      else 1)
    per_row, fake = timed("generated_images", score_generated_images, generated, networks, network_variables,
                          evaluation_classes)
    if "top1" in per_row:
      initial_per_row = None
      if run.initial_w is not None:  # Acc@1 before stage 2: what the starting latents already show
        initial_per_row, _ = timed("initial_images", score_generated_images, generated, networks, network_variables,
                                   evaluation_classes, w=run.initial_w, feature_rows=np.zeros(0, np.int64))
      _attack_accuracy(numbers, run, per_row, initial_per_row)
    cache_dir = pathlib.Path(config.feature_cache_dir) if config.feature_cache_dir else out_dir / "feature_cache"
    real = timed("training_features", training_features, networks, network_variables, train_split, classes,
                 cache_dir=cache_dir, dataset_key=dataset_cache_key(config.dataset), batch_size=generated.batch_size,
                 mesh=mesh, ppa_compat=generated.ppa_compat)
    nearest = timed("feature_metrics", _feature_metrics, numbers, run, fake, real, prdc_k=int(config.fid.prdc_k),
                    ppa_compat=generated.ppa_compat)
  timed("target_utility", _target_utility, numbers, generated, config, test_split)

  student_config = config.knowledge_extraction
  if student_config.enabled:
    score = timed("knowledge_extraction", student.knowledge_extraction_score,
                  run.selected_w, run.selected_targets, render=generated.render_fn(int(student_config.image_size)),
                  render_variables=generated.generator_variables, train_split=class_subset(train_split, classes)[0],
                  test_split=class_subset(test_split, classes)[0], config=student_config, mesh=mesh)
    numbers.values.update(xi_train=score["xi_train"], xi_test=score["xi_test"])
  else:
    numbers.unavailable.update(dict.fromkeys(("xi_train", "xi_test"), "knowledge extraction disabled "
                                             "(config.knowledge_extraction.enabled is False)"))

  out_dir.mkdir(parents=True, exist_ok=True)
  output_files, caption = {"per_class": "per_class.csv"}, ""
  if nearest and int(config.grid.num_classes) > 0 and int(config.grid.samples_per_class) > 0:
    output_files["grid"] = "nearest_neighbours.png"
    caption = writers.write_grid(out_dir / output_files["grid"], generated, config.grid, classes, train_split, real,
                                 nearest)
  timings["total_seconds"] = time.monotonic() - t_start

  columns = {key: _finite_or_none(numbers.values.get(key)) for key in report.COLUMN_KEYS}
  unavailable = {key: numbers.unavailable.get(key, "not finite" if key in numbers.values else "not computed")
                 for key, value in columns.items() if value is None}
  result = {
      "name": run.run_dir.resolve().name,
      "run_dir": str(run.run_dir),
      "metrics": columns,
      "unavailable": unavailable,
      "details": numbers.details,
      "settings": {
          "ppa_compat": generated.ppa_compat, "clamp_generated_images": generated.clamp,
          "center_crop": generated.crop, "generator": config.generator or run.config["generator"],
          "target": config.target or run.config["target"], "dataset": config.dataset.name,
          "evaluation_model": config.evaluation_model.weights, "facenet": config.facenet.weights,
          "fid_network": config.fid.weights, "prdc_k": int(config.fid.prdc_k),
      },
      "files": output_files,
      "grid_caption": caption,
      "timings": timings,
      "config": json.loads(config.to_json_best_effort()),
  }
  if jax.process_index() == 0:
    writers.write_report(out_dir, result, _per_class_rows(numbers, run, train_split, classes))
    files.record_provenance(out_dir, "jaxmia.evaluate")
  logging.info("Evaluation of %s written to %s:\n%s", run.run_dir, out_dir, report.comparison_table([result]))
  return result
