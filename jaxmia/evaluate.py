"""Attack evaluation: `python -m jaxmia.evaluate --config=configs/evaluate_faces.py --run_dir=runs/attack_x`.

Reads a finished attack run (`latents.npz`, `summary.json` from `jaxmia.attack`) and writes to
`<run_dir>/evaluation/` (or `--out_dir`):

  report.json   every metric (null with a reason in "unavailable" when a run cannot compute it)
  report.md     the same as a table, with settings and the image grid
  per_class.csv the per-class numbers
  nearest_neighbours.png  selected samples (top row of each class) above their nearest training images

Metrics (PPA, Struppek et al. 2022; the label-smoothing paper's Table 1):
  Acc@1 / Acc@5, mean target confidence: the evaluation model on the selected images and on all optimised ones.
  δ_face / δ_eval: squared L2 distance from each selected image to the nearest training image of its target
    class, in FaceNet embedding space / in the evaluation model's penultimate features, averaged over images.
  FID: pool3 features of the FID Inception, selected images vs the training images of the attacked classes.
  Precision, recall, density, coverage (k=3): per attacked class, averaged over classes.
  Test Acc, ECE (10 bins): the target on its test split.
  ξ_train / ξ_test: knowledge extraction score (a student trained on the selected images, `jaxmia.student`).

Images are generated from the latents batch by batch inside one jitted function (synthesis -> clamp to
[-1, 1] -> the attack's centre crop -> antialiased resize to each network's input), sharded over the
`('data',)` mesh; only features leave the devices. Training-image features are computed once per class and
network and cached as npz files under `feature_cache_dir/<network>-<hash of weights + preprocessing>/
<hash of the dataset config>/`. `ppa_compat=True` reproduces PPA's numbers: unclamped generated images,
the FID network fed images in [-1, 1] where it expects [0, 1] (so it sees [-3, 1]), and PPA's
precision / recall / density definitions (`metrics.prdc`).
"""
import csv
import dataclasses
import hashlib
import io
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from PIL import Image

from jaxmia import classifier, cli, convert, data, files, metrics, parallel, report, student
from jaxmia.attack import render
from jaxmia.convert.inception import fid_inception_from_torch
from jaxmia.data import augment, image_ops
from jaxmia.data.pipeline import IndexedSource
from jaxmia.models.inception import FID_RESOLUTION

OUTPUT_DIR = report.EVALUATION_DIR
NETWORK_NAMES = ("evaluation", "facenet", "fid")


# ------------------------------------------------------------------------------------------------ attack run


@dataclasses.dataclass(frozen=True)
class AttackRun:
  """The parts of a finished attack run the evaluation reads."""
  run_dir: pathlib.Path
  config: dict               # the attack config (summary.json)
  targets: np.ndarray        # int [N]: target class of each optimised latent
  optimized_w: np.ndarray    # [N, 1 or num_ws, w_dim]
  selected: np.ndarray       # int [M]: rows of optimized_w kept by the final selection
  initial_w: np.ndarray | None = None  # [N, ...]: stage 1's starting latents (None in runs that lack them)

  @property
  def selected_w(self) -> np.ndarray:
    return self.optimized_w[self.selected]

  @property
  def selected_targets(self) -> np.ndarray:
    return self.targets[self.selected]


def load_attack_run(run_dir) -> AttackRun:
  """Reads `latents.npz` and `summary.json` of a finished `jaxmia.attack` run."""
  run_dir = pathlib.Path(run_dir)
  latents_path, summary_path = run_dir / "latents.npz", run_dir / "summary.json"
  for path in (latents_path, summary_path):
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished attack run. Run (or resume) "
                              f"`python -m jaxmia.attack --workdir={run_dir}` to the end first.")
  with np.load(latents_path) as f:
    missing = {"targets", "optimized_w", "selected_indices"} - set(f.files)
    if missing:
      raise ValueError(f"{latents_path} lacks {sorted(missing)}; it was not written by jaxmia.attack.")
    targets, optimized_w, selected = (np.asarray(f["targets"], np.int32), np.asarray(f["optimized_w"], np.float32),
                                      np.asarray(f["selected_indices"], np.int64))
    initial_w = np.asarray(f["initial_w"], np.float32) if "initial_w" in f.files else None
  if initial_w is not None and initial_w.shape != optimized_w.shape:
    initial_w = None  # e.g. W+ starting latents broadcast differently: leave stage 1 unscored
  if optimized_w.ndim != 3 or len(optimized_w) != len(targets) or not len(selected) or (
      selected.min() < 0 or selected.max() >= len(targets)):
    raise ValueError(f"{latents_path} is inconsistent: optimized_w {optimized_w.shape}, targets {targets.shape}, "
                     f"{len(selected)} selected indices; rerun the attack's final stage.")
  config = json.loads(summary_path.read_text()).get("config")
  if not isinstance(config, dict) or "attack" not in config:
    raise ValueError(f"{summary_path} holds no attack config; it was not written by jaxmia.attack.")
  return AttackRun(run_dir, config, targets, optimized_w, selected, initial_w)


def class_subset(split, classes) -> tuple[Any, np.ndarray]:
  """`(split restricted to the given classes, positions of its examples in split)`, in split order."""
  positions = np.flatnonzero(np.isin(split.labels, np.asarray(classes)))
  subset = data.Split(IndexedSource(split.source, positions), num_classes=split.num_classes,
                      num_examples=len(positions), class_names=split.class_names, labels=split.labels[positions])
  return subset, positions


# ------------------------------------------------------------------------------------------------ networks


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
  """A frozen network scoring images, and how images reach it.

  kind: 'classifier' (logits and penultimate features), 'features' (a jaxmia model without head: FaceNet
  embeddings or pooled features) or 'pytorch_fid' (pool3 of the FID Inception, inputs [0, 1]).
  """
  name: str
  kind: str
  module: Any
  image_size: int
  weights_id: str            # content hash of the weights (keys the feature cache)

  def outputs(self, variables, x, ppa_compat: bool) -> dict:
    """`x` `[B, image_size, image_size, 3]` in [-1, 1] -> `{'features' [B, D]}` (+ `'logits'` for classifiers)."""
    if self.kind == "classifier":
      logits, features = self.module.apply(variables, x, return_features=True)
      return {"logits": logits.astype(jnp.float32), "features": features.astype(jnp.float32)}
    if self.kind == "pytorch_fid":
      # pytorch-fid expects [0, 1]; PPA passes its [-1, 1] images unchanged.
      x = x if ppa_compat else augment.denormalize(x)
      return {"features": self.module.apply(variables, x, method="fid_features").astype(jnp.float32)}
    return {"features": self.module.apply(variables, x).astype(jnp.float32)}

  def cache_key(self, ppa_compat: bool) -> str:
    settings = {"kind": self.kind, "image_size": self.image_size, "weights": self.weights_id,
                "ppa_input": ppa_compat and self.kind == "pytorch_fid"}
    return f"{self.name}-{_digest(settings)}"


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _num_classes(net: FeatureNetwork, variables) -> int:
  x = jax.ShapeDtypeStruct((1, net.image_size, net.image_size, 3), jnp.float32)
  return jax.eval_shape(lambda v, x: net.module.apply(v, x), variables, x).shape[-1]


def _load_weights(path: str, what: str, field: str, **overrides):
  if not pathlib.Path(path).exists():
    raise FileNotFoundError(f"{what} not found at {path!r}; set --config.{field} to a weights folder written by "
                            "jaxmia.convert.save_converted (or a jaxmia training export), or to '' to skip the "
                            "metrics that need it.")
  module, variables = convert.load_converted(path, **overrides)
  return module, variables, _digest(convert.read_info(path))


def load_network(name: str, section: ml_collections.ConfigDict, field: str):
  """`(FeatureNetwork, variables)` for `section.weights`, or `(None, reason)` when it is ''."""
  weights = section.weights
  if not weights:
    return None, f"no {name} network configured (config.{field}.weights is '')"
  path = pathlib.Path(weights)
  if name == "fid" and path.is_file():
    module, variables = fid_inception_from_torch(path)   # pytorch-fid's pt_inception-*.pth
    return FeatureNetwork(name, "pytorch_fid", module, FID_RESOLUTION, files.file_digest(path)), variables
  if name == "evaluation":
    module, variables, weights_id = _load_weights(weights, "Evaluation model", f"{field}.weights")
    return FeatureNetwork(name, "classifier", module, int(section.image_size), weights_id), variables
  module, variables, weights_id = _load_weights(weights, f"{name} network", f"{field}.weights", num_classes=None)
  return FeatureNetwork(name, "features", module, int(section.image_size), weights_id), variables


# ------------------------------------------------------------------------------------------------ jitted cores


def fake_scores_fn(view, networks: tuple, *, ppa_compat: bool, num_classes: int):
  """To be jitted: `(w [B, ...], targets [B], generator_variables, network_variables) -> dict of [B, ...]`.

  `view(generator_variables, w)` renders the latents (`_Setup.view`); each image is rendered once and resized
  to every network's input. For the evaluation model: `top1`, `top5` (bool), `confidence` (softmax at the
  target) and its features under `'evaluation'`; other networks: their features.
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


def _jit(fn, mesh, num_sharded: int, num_replicated: int):
  repl, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(fn, in_shardings=(sharded,) * num_sharded + (repl,) * num_replicated, out_shardings=repl)


def _latent_batches(w, targets, batch_size):
  for start in range(0, len(w), batch_size):
    yield w[start:start + batch_size], targets[start:start + batch_size]


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


# ------------------------------------------------------------------------------------------------ feature cache


def _dataset_key(dataset_config) -> str:
  settings = {k: v for k, v in dataset_config.to_dict().items() if k not in ("manual_dir", "data_dir")}
  return f"{dataset_config.name}-{_digest(settings)}"


def training_features(networks, network_variables, split, classes, *, cache_dir: pathlib.Path, dataset_key: str,
                      batch_size: int, mesh, ppa_compat: bool) -> dict:
  """`{network name: (features [R, D], labels [R], positions [R])}` of the training images of `classes`.

  Rows are grouped by class in the order of `classes`; positions index `split`. Each (network, class) is
  read from `cache_dir/<network key>/<dataset_key>/class_XXXXX.npz` when that file matches the split's
  images of the class, else computed (one pass over the missing classes for all networks) and written there.
  """
  folders = {net.name: cache_dir / net.cache_key(ppa_compat) / dataset_key for net in networks}
  path = lambda name, c: folders[name] / f"class_{int(c):05d}.npz"
  per_class = {}   # (network name, class) -> (features, positions)
  for net in networks:
    for c in classes:
      if path(net.name, c).is_file():
        with np.load(path(net.name, c)) as f:
          if np.array_equal(f["positions"], np.flatnonzero(split.labels == c)):
            per_class[net.name, int(c)] = (f["features"], f["positions"])

  todo = {net.name: [int(c) for c in classes if (net.name, int(c)) not in per_class] for net in networks}
  computing = tuple(net for net in networks if todo[net.name])
  if computing:
    missing = sorted(set().union(*todo.values()))
    subset, positions = class_subset(split, missing)
    logging.info("Computing training-image features of %d classes (%d images) for %s.", len(missing),
                 len(positions), ", ".join(net.name for net in computing))
    fn = _jit(real_features_fn(computing, ppa_compat=ppa_compat), mesh, 1, 1)
    variables = parallel.replicate({net.name: network_variables[net.name] for net in computing}, mesh)
    batches = ((b["image"],) for b in data.batches(subset, batch_size, seed=0, epoch=0, shuffle=False,
                                                     drop_remainder=False, process_index=0, process_count=1))
    parts = list(parallel.map_batches(lambda images: fn(images, variables), batches, batch_size, mesh=mesh))
    for net in computing:
      features = np.concatenate([part[net.name] for part in parts])
      if jax.process_index() == 0:
        folders[net.name].mkdir(parents=True, exist_ok=True)
      for c in todo[net.name]:
        rows = subset.labels == c
        per_class[net.name, c] = (features[rows], positions[rows])
        if jax.process_index() == 0:
          files.atomic_write(path(net.name, c),
                             lambda f: np.savez(f, features=features[rows], positions=positions[rows]))
  result = {}
  for net in networks:
    parts = [per_class[net.name, int(c)] for c in classes]
    result[net.name] = (np.concatenate([f for f, _ in parts]),
                        np.concatenate([np.full(len(p), c, np.int32) for (_, p), c in zip(parts, classes)]),
                        np.concatenate([p for _, p in parts]))
  return result


# ------------------------------------------------------------------------------------------------ outputs


def nearest_neighbour_grid(fake_images: np.ndarray, real_images: np.ndarray, rows: int, gap: int = 4) -> Image.Image:
  """PNG grid: class blocks of two rows, fakes `[rows * k, S, S, 3]` uint8 above their nearest reals."""
  per_row = len(fake_images) // rows
  blocks = [files.image_grid(np.concatenate([fake_images[r * per_row:(r + 1) * per_row],
                                             real_images[r * per_row:(r + 1) * per_row]]), per_row)
            for r in range(rows)]
  spacer = np.full((gap, *blocks[0].shape[1:]), 255, np.uint8)
  return Image.fromarray(np.concatenate([part for block in blocks for part in (spacer, block)][1:]))


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  files.atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _finite_or_none(value):
  return None if value is None or not np.isfinite(value) else float(value)


# ------------------------------------------------------------------------------------------------ evaluation

# Metrics that need each network (n/a with the network's reason when it is not configured).
_NEEDS = {"evaluation": ("acc_top1", "acc_top5", "delta_eval"), "facenet": ("delta_face",),
          "fid": ("fid", "precision", "recall", "density", "coverage")}
_PRDC = ("precision", "recall", "density", "coverage")


@dataclasses.dataclass
class Results:
  """What the stages produce: report columns, n/a reasons, further numbers and per-class numbers."""
  values: dict = dataclasses.field(default_factory=dict)
  unavailable: dict = dataclasses.field(default_factory=dict)
  details: dict = dataclasses.field(default_factory=dict)
  per_class: dict = dataclasses.field(default_factory=dict)   # class -> {name: value}

  def add_per_class(self, cls, **values):
    self.per_class.setdefault(int(cls), {}).update(values)


@dataclasses.dataclass(frozen=True)
class _Setup:
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


def score_generated_images(setup: _Setup, networks: tuple, network_variables: dict, num_classes: int,
                           w: np.ndarray | None = None, feature_rows: np.ndarray | None = None):
  """`(per_row, features)`: per-latent evaluation-model results (`top1`, `top5`, `confidence`, `[N]`) for every
  latent of `w` (default: the optimised ones) and each network's features of `feature_rows` (default: the
  selected latents; `[M, D]` in that order)."""
  run = setup.run
  w = run.optimized_w if w is None else w
  feature_rows = run.selected if feature_rows is None else feature_rows
  settings = (setup.crop, setup.clamp, setup.ppa_compat, num_classes,
              tuple((n.name, n.kind, n.image_size) for n in networks), setup.mesh)
  scores = render.cached_jit(
      "evaluate_scores", (setup.generator, *(n.module for n in networks)), settings,
      lambda: _jit(fake_scores_fn(setup.view, networks, ppa_compat=setup.ppa_compat, num_classes=num_classes),
                   setup.mesh, 2, 2))
  keep = np.zeros(len(run.targets), bool)
  keep[feature_rows] = True
  per_row, features, start = {}, {net.name: [] for net in networks}, 0
  variables = parallel.replicate(network_variables, setup.mesh)
  batches = _latent_batches(w, run.targets, setup.batch_size)
  for out in parallel.map_batches(lambda w, t: scores(w, t, setup.generator_variables, variables), batches,
                                  setup.batch_size, mesh=setup.mesh):
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


def _attack_accuracy(results: Results, run: AttackRun, per_row: dict, initial_per_row: dict | None = None) -> None:
  """Acc@1, Acc@5 and mean target confidence on the selected and on all optimised latents (and on the starting
  latents of stage 1, `_initial`, when scored), overall and per class."""
  everything = np.arange(len(run.targets))
  groups = {"": (run.selected, per_row), "_all_optimized": (everything, per_row)}
  if initial_per_row:
    groups["_initial"] = (everything, initial_per_row)
  for suffix, (rows, scores) in groups.items():
    for name, key in (("acc_top1", "top1"), ("acc_top5", "top5"), ("mean_target_confidence", "confidence")):
      value = float(scores[key][rows].mean())
      (results.values if name.startswith("acc") and not suffix else results.details)[name + suffix] = value
      for c in np.unique(run.targets[rows]):
        results.add_per_class(c, **{name + suffix: float(scores[key][rows[run.targets[rows] == c]].mean())})


def _feature_metrics(results: Results, run: AttackRun, fake: dict, real: dict, *, prdc_k: int,
                     ppa_compat: bool) -> dict:
  """δ_face, δ_eval, FID and per-class PRDC; returns `{network: nearest training row of each selected image}`."""
  targets, nearest = run.selected_targets, {}
  for name, key in (("facenet", "delta_face"), ("evaluation", "delta_eval")):
    if name in real:
      distances = nearest_training_distances(fake[name], targets, real[name][0], real[name][1])
      results.values[key] = distances["mean"]
      nearest[name] = distances["nearest"]
      for c, value in distances["per_class"].items():
        results.add_per_class(c, **{key: value})
  if "fid" in real:
    real_features, real_labels, _ = real["fid"]
    if min(len(real_features), len(fake["fid"])) < 2:
      results.unavailable["fid"] = "FID needs at least 2 selected and 2 training images"
    else:
      results.values["fid"] = metrics.fid_from_features(real_features, fake["fid"])
    per_class = {}
    for c in np.unique(targets):
      real_c, fake_c = real_features[real_labels == c], fake["fid"][targets == c]
      if min(len(real_c), len(fake_c)) > prdc_k:
        per_class[int(c)] = metrics.prdc(real_c, fake_c, k=prdc_k, ppa_compat=ppa_compat)
        results.add_per_class(c, **per_class[int(c)])
    for key in _PRDC:
      if per_class:
        results.values[key] = float(np.mean([v[key] for v in per_class.values()]))
      else:
        results.unavailable[key] = f"no attacked class has more than k={prdc_k} selected and training images"
    results.details["prdc_classes"] = len(per_class)
  return nearest


def _target_utility(results: Results, setup: _Setup, config, test_split) -> None:
  """Test accuracy, top-5 accuracy and ECE (10 bins) of the target on its whole test split."""
  target, variables, _ = _load_weights(config.target or setup.run.config["target"], "Target model", "target")
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  size = int(config.target_image_size) or int(setup.run.config["attack"]["resize"])
  eval_step = classifier.make_eval_step(target.apply, size, setup.mesh)
  utility = classifier.evaluate_split(eval_step, parallel.replicate(variables, setup.mesh), test_split,
                                      setup.batch_size, setup.mesh, "test")
  results.values["test_accuracy"], results.values["ece"] = utility["test_accuracy"], utility["test_ece"]
  results.details["test_top5_accuracy"] = utility["test_top5_accuracy"]


def _write_grid(path: pathlib.Path, setup: _Setup, config, classes, split, real, nearest) -> str:
  """Writes the nearest-neighbour grid (FaceNet space if there is one, else the evaluation model's); returns
  its caption."""
  run, space = setup.run, ("facenet" if "facenet" in nearest else "evaluation")
  shown = classes[:int(config.num_classes)]
  per = min([int(config.samples_per_class)] + [int(np.sum(run.selected_targets == c)) for c in shown])
  rows = np.concatenate([np.flatnonzero(run.selected_targets == c)[:per] for c in shown])
  size = int(config.image_size)
  render_images = setup.render_fn(size)
  render_grid = render.cached_jit("evaluate_grid", (setup.generator,), (setup.crop, setup.clamp, size, setup.mesh),
                                  lambda: _jit(lambda w, gv: render_images(gv, w), setup.mesh, 1, 1))
  fakes = parallel.map_arrays(lambda w: render_grid(w, setup.generator_variables), (run.selected_w[rows],),
                              setup.batch_size, mesh=setup.mesh)
  positions = real[space][2][nearest[space][rows]]
  reals = np.stack([split.source[int(p)]["image"] for p in positions])
  reals = image_ops.resize(augment.normalize(augment.to_unit_range(reals)), size)
  grid = nearest_neighbour_grid(files.to_uint8(fakes), files.to_uint8(reals), rows=len(shown))
  if jax.process_index() == 0:
    files.atomic_write(path, lambda f: grid.save(f, format="PNG"))
  return (f"Classes {', '.join(str(int(c)) for c in shown)} (one block each, top to bottom): {per} selected "
          f"samples above the training image of the same class nearest to each in "
          f"{'FaceNet' if space == 'facenet' else 'evaluation-model'} feature space.")


def _per_class_rows(results: Results, run: AttackRun, split, classes) -> list[dict]:
  keys = ("acc_top1", "acc_top5", "mean_target_confidence", "acc_top1_all_optimized", "acc_top5_all_optimized",
          "mean_target_confidence_all_optimized", "acc_top1_initial", "acc_top5_initial",
          "mean_target_confidence_initial", "delta_face", "delta_eval") + _PRDC
  rows = []
  for c in classes:
    row = {"class": int(c), "class_name": split.class_names[c] if c < len(split.class_names) else "",
           "num_selected": int(np.sum(run.selected_targets == c)), "num_optimized": int(np.sum(run.targets == c)),
           "num_training_images": int(np.sum(split.labels == c))}
    values = results.per_class.get(int(c), {})
    rows.append(row | {key: "" if values.get(key) is None else f"{float(values[key]):.6g}" for key in keys})
  return rows


def evaluate_attack(config: ml_collections.ConfigDict, run_dir, out_dir=None, mesh=None) -> dict:
  """Evaluates the attack run in `run_dir` (see the module docstring); writes and returns the report dict."""
  t_start, timings = time.monotonic(), {}
  run = load_attack_run(run_dir)
  out_dir = pathlib.Path(out_dir) if out_dir else run.run_dir / OUTPUT_DIR
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_size(int(config.batch_size), mesh, "batch_size")
  generator, generator_variables, _ = _load_weights(config.generator or run.config["generator"],
                                                    "StyleGAN2 generator", "generator")
  setup = _Setup(run, generator, parallel.replicate(generator_variables, mesh),
                 crop=render.resolve_center_crop(int(run.config["attack"]["center_crop"]), generator.img_resolution),
                 clamp=not config.ppa_compat, mesh=mesh, batch_size=int(config.batch_size),
                 ppa_compat=bool(config.ppa_compat))
  results = Results()
  classes = np.unique(run.selected_targets)
  results.details.update(num_classes_attacked=len(classes), num_optimized=len(run.targets),
                         num_selected=len(run.selected))

  networks, network_variables = [], {}
  for name, field in (("evaluation", "evaluation_model"), ("facenet", "facenet"), ("fid", "fid")):
    net, variables = load_network(name, config[field], field)
    if net is None:
      results.unavailable.update({key: variables for key in _NEEDS[name]})   # `variables` is the reason
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
    num_classes = (_num_classes(networks[0], network_variables["evaluation"]) if networks[0].name == "evaluation"
                   else 1)
    per_row, fake = timed("generated_images", score_generated_images, setup, networks, network_variables,
                          num_classes)
    if "top1" in per_row:
      initial_per_row = None
      if run.initial_w is not None:  # Acc@1 before stage 2: what the starting latents already show
        initial_per_row, _ = timed("initial_images", score_generated_images, setup, networks, network_variables,
                                   num_classes, w=run.initial_w, feature_rows=np.zeros(0, np.int64))
      _attack_accuracy(results, run, per_row, initial_per_row)
    cache_dir = pathlib.Path(config.feature_cache_dir) if config.feature_cache_dir else out_dir / "feature_cache"
    real = timed("training_features", training_features, networks, network_variables, train_split, classes,
                 cache_dir=cache_dir, dataset_key=_dataset_key(config.dataset), batch_size=setup.batch_size,
                 mesh=mesh, ppa_compat=setup.ppa_compat)
    nearest = timed("feature_metrics", _feature_metrics, results, run, fake, real, prdc_k=int(config.fid.prdc_k),
                    ppa_compat=setup.ppa_compat)
  timed("target_utility", _target_utility, results, setup, config, test_split)

  student_config = config.knowledge_extraction
  if student_config.enabled:
    score = timed("knowledge_extraction", student.knowledge_extraction_score,
                  run.selected_w, run.selected_targets, render=setup.render_fn(int(student_config.image_size)),
                  render_variables=setup.generator_variables, train_split=class_subset(train_split, classes)[0],
                  test_split=class_subset(test_split, classes)[0], config=student_config, mesh=mesh)
    results.values.update(xi_train=score["xi_train"], xi_test=score["xi_test"])
  else:
    results.unavailable.update(dict.fromkeys(("xi_train", "xi_test"), "knowledge extraction disabled "
                                             "(config.knowledge_extraction.enabled is False)"))

  out_dir.mkdir(parents=True, exist_ok=True)
  output_files, caption = {"per_class": "per_class.csv"}, ""
  if nearest and int(config.grid.num_classes) > 0 and int(config.grid.samples_per_class) > 0:
    output_files["grid"] = "nearest_neighbours.png"
    caption = _write_grid(out_dir / output_files["grid"], setup, config.grid, classes, train_split, real, nearest)
  timings["total_seconds"] = time.monotonic() - t_start

  columns = {key: _finite_or_none(results.values.get(key)) for key in report.COLUMN_KEYS}
  unavailable = {key: results.unavailable.get(key, "not finite" if key in results.values else "not computed")
                 for key, value in columns.items() if value is None}
  result = {
      "name": run.run_dir.resolve().name,
      "run_dir": str(run.run_dir),
      "metrics": columns,
      "unavailable": unavailable,
      "details": results.details,
      "settings": {
          "ppa_compat": setup.ppa_compat, "clamp_generated_images": setup.clamp, "center_crop": setup.crop,
          "generator": config.generator or run.config["generator"],
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
    _write_csv(out_dir / output_files["per_class"], _per_class_rows(results, run, train_split, classes))
    files.atomic_write(out_dir / report.REPORT_FILE, lambda f: f.write(json.dumps(result, indent=2).encode()))
    files.atomic_write(out_dir / "report.md", lambda f: f.write(report.run_markdown(result).encode()))
  logging.info("Evaluation of %s written to %s:\n%s", run.run_dir, out_dir, report.comparison_table([result]))
  return result


# ------------------------------------------------------------------------------------------------ CLI


def main(argv):
  cli.start(argv)
  config, run_dir, out_dir = flags.FLAGS.config, flags.FLAGS.run_dir, flags.FLAGS.out_dir
  evaluate_attack(config, run_dir, out_dir)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Evaluation config (configs/evaluate_*.py[:variant]).",
                                  lock_config=True)
  flags.DEFINE_string("run_dir", None, "Attack run directory (written by python -m jaxmia.attack).")
  flags.DEFINE_string("out_dir", None, "Where to write the report; default <run_dir>/evaluation.")
  flags.mark_flags_as_required(["config", "run_dir"])
  app.run(main)
