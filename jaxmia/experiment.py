"""The end-to-end label-smoothing study: `python -m jaxmia.experiment --config=configs/digits_study.py
--workdir=runs/digits_study`.

For every seed and every variant of the target, one cell

    train the target (jaxmia.train, only the variant differs between a seed's cells) -> PPA attack through the
    StyleGAN2 prior (jaxmia.attack) -> evaluation (jaxmia.evaluate: Acc@k and δ_eval with the evaluation model,
    FID and PRDC in its feature space, test accuracy, ECE, ξ) [-> membership inference (jaxmia.membership)]

after the shared stages (the prior: shipped, or retrained with `jaxmia.gan`; the evaluation model, another
architecture trained once). A variant (`Variant`) is a label-smoothing factor α of `config.alphas`, or a
training-time defense of `config.defenses` ('mid', 'bido', 'calor', with the settings of `config.target.defense`)
at the baseline α; every comparison is to the same seed's baseline-α cell. With `config.run_membership` each cell
also gets the membership attacks of `config.membership` (offline LiRA's shadows are trained once, like the
baseline target without a defense, and shared by every cell). Workdir layout:

    prior/                       only with retrain_prior=True (a jaxmia.gan workdir; numbers/: the number prior
                                 of its digit generator when prior_num_digits > 0)
    evaluation_model/            jaxmia.train workdir; model/ is the exported classifier
    seed_<s>/alpha_<α>/target/   jaxmia.train workdir of the target
    seed_<s>/alpha_<α>/attack/   jaxmia.attack workdir; evaluation/report.json from jaxmia.evaluate
    seed_<s>/alpha_<α>/membership/
                                 jaxmia.membership workdir (run_membership=True)
    seed_<s>/defense_<name>/     the same folders for a defense's cell
    shadows/                     the LiRA shadows shared by every cell (run_membership=True)
    report.md, study.json        Table-1 columns per variant (mean ± sd over seeds, differences to the baseline
                                 α); Acc@1 of the starting, optimised and selected latents; paired per-class
                                 differences of Acc@1 to the baseline α with hierarchical bootstrap intervals;
                                 membership AUC and TPR@1 %FPR with t intervals over seeds (run_membership=True)
    per_class.csv                Acc@1 per class and variant (mean over seeds) and its difference to the baseline
    samples.png                  real training images and selected attack samples per class for each variant
    metrics.png                  Acc@1, δ_eval, ξ_train and ξ_test per variant (mean ± sd, seeds as dots)
    tradeoff.png                 model-inversion Acc@1 against membership AUC per variant, coloured by test
                                 accuracy (run_membership=True)

With `config.defenses = ()` (the default) the cells, their paths and the report are those of the α study.

A stage whose output exists (an exported model, `summary.json`, `report.json`) is skipped, so rerunning the
command continues an interrupted study; the stages themselves resume mid-way as well. The report is always
rebuilt from the evaluated cells.
"""
import csv
import dataclasses
import functools
import io
import json
import math
import pathlib

from absl import flags, logging
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict, config_flags
import numpy as np

from jaxmia import chain, cli, data, defenses, files, gan, membership, model_store, provenance, report, train
from jaxmia.analysis import statistics, tables
from jaxmia.attack import render

# Metrics plotted in metrics.png (keys of report.json's "metrics").
PLOTTED = ("acc_top1", "delta_eval", "xi_train", "xi_test")
MAX_FIGURE_ROWS = 12  # classes shown in samples.png (config.figure.classes, else the first attacked ones)
DEFENSE_LABELS = {"mid": "MID", "bido": "BiDO", "calor": "CALoR"}
# Membership columns of the report: (section of jaxmia.membership's report.json, metric, header).
MEMBERSHIP_COLUMNS = (("lira_offline", "auc", "LiRA AUC"), ("lira_offline", "tpr_at_0.01_fpr", "LiRA TPR@1%FPR"),
                      ("loss_attack", "auc", "loss AUC"))


def resolve(config: ConfigDict) -> ConfigDict:
  """A copy of `config` with `quick_settings` applied when `quick` is set."""
  config = ConfigDict(config.to_dict())
  if config.quick:
    config.update(config.quick_settings)
  if config.baseline_alpha not in config.alphas:
    raise ValueError(f"config.baseline_alpha={config.baseline_alpha} is not one of config.alphas "
                     f"{tuple(config.alphas)}.")
  if not config.seeds:
    raise ValueError("config.seeds is empty; give at least one seed, e.g. --config.seeds='(0,)'.")
  known = tuple(d for d in defenses.DEFENSES if d != "none")
  if any(d not in known for d in config.defenses) or len(set(config.defenses)) != len(config.defenses):
    raise ValueError(f"config.defenses={tuple(config.defenses)} must name distinct defenses of {known}.")
  return config


def alpha_name(alpha: float) -> str:
  return f"alpha_{alpha:+.3f}"


@dataclasses.dataclass(frozen=True)
class Variant:
  """What a cell's target changes: its label-smoothing factor `alpha`, or a training-time `defense` (at the
  study's baseline α). The names say where it is written and how the report shows it."""
  alpha: float
  defense: str = "none"

  @property
  def dirname(self) -> str:  # the cell's folder under seed_<s>/
    return alpha_name(self.alpha) if self.defense == "none" else f"defense_{self.defense}"

  @property
  def key(self) -> str:  # study.json keys
    return f"{self.alpha:g}" if self.defense == "none" else self.defense

  @property
  def column(self) -> str:  # per_class.csv column suffix
    return f"alpha{self.alpha:g}" if self.defense == "none" else self.defense

  @property
  def short(self) -> str:  # first column of the report's tables
    return f"{self.alpha:g}" if self.defense == "none" else DEFENSE_LABELS[self.defense]

  @property
  def label(self) -> str:  # run names in tables and figures
    return f"α = {self.alpha:g}" if self.defense == "none" else DEFENSE_LABELS[self.defense]


def variants(config: ConfigDict) -> list[Variant]:
  """Every α of the study, then every defense at the baseline α."""
  return [Variant(float(a)) for a in config.alphas] + [Variant(float(config.baseline_alpha), d)
                                                       for d in config.defenses]


@dataclasses.dataclass(frozen=True)
class Cell:
  seed: int
  variant: Variant
  root: pathlib.Path

  @property
  def alpha(self) -> float:
    return self.variant.alpha

  @property
  def target_dir(self) -> pathlib.Path:
    return self.root / "target"

  @property
  def attack_dir(self) -> pathlib.Path:
    return self.root / "attack"

  @property
  def membership_dir(self) -> pathlib.Path:
    return self.root / "membership"


def cell_at(workdir: pathlib.Path, seed, variant: Variant | float) -> Cell:
  """The cell of (seed, variant) in the study's `workdir`; a number is the variant of that α."""
  variant = variant if isinstance(variant, Variant) else Variant(float(variant))
  return Cell(int(seed), variant, workdir / f"seed_{int(seed)}" / variant.dirname)


def cells(config: ConfigDict, workdir: pathlib.Path) -> list[Cell]:
  return [cell_at(workdir, s, v) for s in config.seeds for v in variants(config)]


def prior_path(config: ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """The attack's generator: `config.prior`, or with `retrain_prior` the GAN trained in the workdir (written k
  digits at a time, `workdir/prior/numbers`, when `config.prior_num_digits` = k > 0)."""
  if not config.retrain_prior:
    return pathlib.Path(config.prior)
  return workdir / "prior" / ("numbers" if config.get("prior_num_digits") else "generator")


def stages(config: ConfigDict, workdir: pathlib.Path) -> list[chain.Stage]:
  """Every stage of the study in run order (shared stages first, then each cell's `chain.target_chain`)."""
  prior = prior_path(config, workdir)
  evaluation_model = workdir / "evaluation_model" / "model"
  out = []
  if config.retrain_prior:
    generator = workdir / "prior" / "generator"
    out.append(chain.Stage("prior (jaxmia.gan)", chain.exported_model_info(generator),
                           lambda: gan.train(config.gan, workdir / "prior")))
    if config.get("prior_num_digits"):
      out.append(chain.Stage("number prior", chain.exported_model_info(prior), lambda: model_store.save_number_prior(
          generator, prior, num_digits=config.prior_num_digits, image_size=config.target.dataset.image_size)))
  elif not chain.exported_model_info(prior).exists():
    raise FileNotFoundError(f"No StyleGAN2 prior at {prior} (config.prior). Point config.prior at one "
                            "(converted_weights/README.md lists the shipped priors) or train it in the workdir "
                            "with --config.retrain_prior=True.")
  out.append(evaluation_model_stage(config, workdir))
  evaluate = evaluate_config(config, workdir, evaluation_model)
  for cell in cells(config, workdir):
    label = f"seed {cell.seed}, {cell.variant.label}"
    out += chain.target_chain(label, target_config(config, cell), cell.target_dir,
                              attack_config(config, cell, prior), cell.attack_dir, evaluate)
    if config.run_membership:
      out.append(chain.Stage(f"membership ({label})", cell.membership_dir / "report.json", functools.partial(
          membership.evaluate_membership, membership_config(config, cell, workdir), cell.membership_dir,
          shadow_config=shadow_config(config, workdir))))
  return out


def evaluation_model_stage(config: ConfigDict, workdir: pathlib.Path) -> chain.Stage:
  """Trains the study's evaluation model once (`workdir/evaluation_model`; its export is `evaluation_model/model`)."""
  return chain.Stage("evaluation model", chain.exported_model_info(workdir / "evaluation_model" / "model"),
                     lambda: train.train_and_evaluate(config.evaluation_model, workdir / "evaluation_model"))


def target_config(config: ConfigDict, cell: Cell) -> ConfigDict:
  """The study's target config with the cell's seed, α and (for a defense's cell) `defense.name`."""
  target = ConfigDict(config.target.to_dict())
  target.seed, target.label_smoothing = cell.seed, cell.alpha
  if cell.variant.defense != "none":
    target.defense.name = cell.variant.defense
  return target


def shadow_config(config: ConfigDict, workdir: pathlib.Path) -> ConfigDict:
  """The training config of the LiRA shadows every cell shares: the baseline-α target without a defense, on
  `config.membership.seed` (the attacker knows the architecture and the recipe, not the defense or α)."""
  return target_config(config, cell_at(workdir, config.membership.seed, Variant(float(config.baseline_alpha))))


def membership_config(config: ConfigDict, cell: Cell, workdir: pathlib.Path) -> ConfigDict:
  """`config.membership` pointed at the cell's target, with the study's shared shadow folder."""
  out = ConfigDict(config.membership.to_dict())
  out.target_workdir = str(cell.target_dir)
  out.lira.shadow_workdir = str(workdir / "shadows")
  return out


def attack_config(config: ConfigDict, cell: Cell, prior: pathlib.Path) -> ConfigDict:
  attack = ConfigDict(config.attack.to_dict())
  attack.seed, attack.generator, attack.target = cell.seed, str(prior), str(cell.target_dir / "model")
  return attack


def evaluate_config(config: ConfigDict, workdir: pathlib.Path, evaluation_model: pathlib.Path) -> ConfigDict:
  evaluate = ConfigDict(config.evaluate.to_dict())
  evaluate.dataset = ConfigDict(config.target.dataset.to_dict())  # distances to the images the targets saw
  evaluate.evaluation_model.weights = str(evaluation_model)
  evaluate.fid.weights = str(evaluation_model)  # no Inception weights offline: FID in the evaluation model's features
  evaluate.fid.image_size = evaluate.evaluation_model.image_size
  evaluate.feature_cache_dir = str(workdir / "feature_cache")
  return evaluate


# ----------------------------------------------------------------------------------------------- report


def mean_sd(values: list) -> tuple[float | None, float | None]:
  """(mean, sd) of the finite values; None for what cannot be computed (no values; sd of one value)."""
  stats = files.mean_sd([v for v in values if v is not None and math.isfinite(v)])
  return (stats["mean"] if stats["n"] else None), (stats["sd"] if stats["n"] > 1 else None)


def aggregate(config: ConfigDict, workdir: pathlib.Path) -> list[dict]:
  """Per variant: {'variant', 'alpha', 'reports' (one per seed), 'mean', 'sd', 'unavailable', 'membership'} with
  metrics keyed as in report.json; 'membership' (run_membership only, else None) is `membership_summary`'s."""
  rows = []
  for variant in variants(config):
    runs = [cell_at(workdir, s, variant) for s in config.seeds]
    reports = [report.load_report(cell.attack_dir) for cell in runs]
    mean, sd = {}, {}
    for key in report.COLUMN_KEYS:
      mean[key], sd[key] = mean_sd([r["metrics"].get(key) for r in reports])
    reasons = {k: v for r in reports for k, v in r["unavailable"].items() if mean[k] is None}
    rows.append({"variant": variant, "alpha": variant.alpha, "reports": reports, "mean": mean, "sd": sd,
                 "unavailable": reasons,
                 "membership": membership_summary(config, runs) if config.run_membership else None})
  return rows


def membership_summary(config: ConfigDict, runs: list[Cell]) -> dict:
  """`{'<section>.<metric>': statistics.seed_interval(...) + {'per_seed'}}` for MEMBERSHIP_COLUMNS, read from the
  membership report of each of a variant's cells (one per seed; None where a report lacks the attack)."""
  reports = [json.loads((cell.membership_dir / "report.json").read_text()) for cell in runs]
  out = {}
  for section, metric, _ in MEMBERSHIP_COLUMNS:
    values = [r.get(section, {}).get(metric) for r in reports]
    out[f"{section}.{metric}"] = {**statistics.seed_interval(values, float(config.bootstrap.confidence)),
                                  "per_seed": values}
  return out


# Acc@1 at the three points of the attack (keys of report.json's details / metrics, per_class.csv columns).
ATTACK_POINTS = (("start (stage 1)", "acc_top1_initial"), ("optimised (stage 2)", "acc_top1_all_optimized"),
                 ("selected (stage 3)", "acc_top1"))


def per_class_values(attack_dir: pathlib.Path, key: str) -> dict[int, float]:
  """`{class: value}` of column `key` in an attack's evaluation/per_class.csv (empty cells left out)."""
  path = pathlib.Path(attack_dir) / report.EVALUATION_DIR / "per_class.csv"
  with path.open() as f:
    return {int(row["class"]): float(row[key]) for row in csv.DictReader(f) if row.get(key)}


def per_seed_matrix(attack_dirs: list[pathlib.Path], key: str = "acc_top1"):
  """(classes `[C]`, values `[S, C]` of per-class column `key`), one row per attack dir (seed); NaN where missing."""
  per_seed = [per_class_values(d, key) for d in attack_dirs]
  classes = np.array(sorted(set().union(*per_seed)), int)
  return classes, np.array([[t.get(int(c), np.nan) for c in classes] for t in per_seed])


def per_class_matrix(config: ConfigDict, workdir: pathlib.Path, variant: Variant | float, key: str = "acc_top1"):
  """`per_seed_matrix` of a variant's (or α's) attacks, one row per seed of the study."""
  return per_seed_matrix([cell_at(workdir, s, variant).attack_dir for s in config.seeds], key)


def per_class_matrices(config: ConfigDict, workdir: pathlib.Path, key: str = "acc_top1") -> dict:
  """`{variant: per_class_matrix(..., variant, key)}` for every variant of the study (each cell's per_class.csv
  read once)."""
  return {v: per_class_matrix(config, workdir, v, key) for v in variants(config)}


def paired_difference(baseline: tuple, other: tuple, bootstrap: ConfigDict) -> dict:
  """Mean per-class difference `other - baseline` of two `per_seed_matrix` results (same seeds, paired by seed
  and class on the classes both have) with its hierarchical bootstrap interval (`config.bootstrap` settings):
  `{'mean', 'low', 'high', 'num_seeds', 'num_classes', 'classes', 'per_class' [C]}`."""
  (classes, base), (other_classes, values) = baseline, other
  common = np.intersect1d(classes, other_classes)
  d = values[:, np.searchsorted(other_classes, common)] - base[:, np.searchsorted(classes, common)]
  return {**statistics.hierarchical_bootstrap(d, int(bootstrap.num_resamples), int(bootstrap.seed),
                                              float(bootstrap.confidence)),
          "classes": common.tolist(), "per_class": np.nanmean(d, axis=0).tolist()}


def paired_differences(config: ConfigDict, matrices: dict) -> dict:
  """Per variant other than the baseline α: `paired_difference` to the baseline α.

  `matrices`: `per_class_matrices` of the study. Returns `{variant: paired_difference(...)}`.
  """
  baseline = Variant(float(config.baseline_alpha))
  return {variant: paired_difference(matrices[baseline], matrices[variant], config.bootstrap)
          for variant in variants(config) if variant != baseline}


def attack_points(rows: list[dict]) -> list[dict]:
  """Per variant: `{label: (mean, sd)}` of Acc@1 at the start, after stage 2 and after the final selection."""
  out = []
  for row in rows:
    points = {}
    for label, key in ATTACK_POINTS:
      values = [r["metrics"].get(key) if key in r["metrics"] else r.get("details", {}).get(key) for r in row["reports"]]
      points[label] = mean_sd(values)
    out.append(points)
  return out


def format_mean_sd(stats: tuple) -> str:
  """`(mean, sd)` of fractions as percent: '52.4 ± 1.3', 'n/a' without a mean."""
  mean, sd = stats
  if mean is None:
    return "n/a"
  return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def _first_column(config: ConfigDict) -> str:
  return "α / defense" if config.defenses else "α"


def format_delta(diff: dict | None) -> str:
  """A `paired_difference` in pp with its interval ('+3.1 [-0.4, +6.5]'), 'baseline' for None."""
  if diff is None:
    return "baseline"
  return f"{100 * diff['mean']:+.1f} [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"


def paired_section(config: ConfigDict, workdir: pathlib.Path, rows: list[dict], paired: dict) -> list[str]:
  """report.md lines: Acc@1 through the attack per variant and the paired differences with their intervals."""
  points = attack_points(rows)
  conf = int(round(100 * float(config.bootstrap.confidence)))
  header = [_first_column(config), "Test Acc (%)"] + [f"Acc@1 {label} (%)" for label, _ in ATTACK_POINTS] + \
      [f"Δ Acc@1 to α = {config.baseline_alpha:g} (pp) [{conf}% CI]"]
  lines = []
  for row, point in zip(rows, points):
    test = format_mean_sd((row["mean"].get("test_accuracy"), row["sd"].get("test_accuracy")))
    lines.append([row["variant"].short, test, *(format_mean_sd(point[label]) for label, _ in ATTACK_POINTS),
                  format_delta(paired.get(row["variant"]))])
  n_classes = max((d["num_classes"] for d in paired.values()), default=0)
  return [
      f"## Attack success and paired differences ({len(config.seeds)} seed{'s' if len(config.seeds) > 1 else ''} × "
      f"{n_classes} classes)", "",
      "Mean ± sd over seeds. Acc@1: the evaluation model's top-1 accuracy on the attack's starting latents "
      "(stage 1), on all optimised latents (stage 2) and on the final selection (stage 3, the paper's Acc@1). "
      f"Δ: the mean over seeds and classes of (Acc@1 of a class under α) − (Acc@1 of the same class and seed "
      f"under α = {config.baseline_alpha:g}), with a {conf}% percentile interval from "
      f"{int(config.bootstrap.num_resamples)} hierarchical bootstrap resamples "
      "(seeds, then classes, with replacement)." + (
          f" A defense's targets are trained at α = {config.baseline_alpha:g} and paired with the same seed's "
          f"α = {config.baseline_alpha:g} targets." if config.defenses else ""), "",
      tables.markdown_table(header, lines), ""]


def per_class_section(paired: dict, config: ConfigDict, matrices: dict) -> tuple[list[str], list[dict]]:
  """report.md lines (per-class Acc@1 per variant and differences) and the rows of per_class.csv."""
  study_variants = variants(config)
  classes = sorted(set().union(*(set(c.tolist()) for c, _ in matrices.values())))
  rows = []
  for c in classes:
    row = {"class": c}
    for v in study_variants:
      cls, values = matrices[v]
      where = np.flatnonzero(cls == c)
      row[f"acc_top1_{v.column}"] = float(np.nanmean(values[:, where[0]])) if len(where) else float("nan")
    for v, diff in paired.items():
      where = np.flatnonzero(np.array(diff["classes"]) == c)
      row[f"delta_{v.column}"] = diff["per_class"][where[0]] if len(where) else float("nan")
    rows.append(row)
  compact = lambda v: v.label.replace(" ", "")  # noqa: E731 (α=0.1, MID)
  header = ["class"] + [f"Acc@1 {compact(v)} (%)" for v in study_variants] + [f"Δ {compact(v)} (pp)" for v in paired]
  lines = [[row["class"], *(f"{100 * row[f'acc_top1_{v.column}']:.0f}" for v in study_variants),
            *(f"{100 * row[f'delta_{v.column}']:+.0f}" for v in paired)] for row in rows]
  counts = []
  for v, diff in paired.items():
    per_class = np.asarray(diff["per_class"])
    counts.append(f"{v.label}: higher in {int(np.sum(per_class > 0))}, equal in {int(np.sum(per_class == 0))}, "
                  f"lower in {int(np.sum(per_class < 0))} of {len(per_class)} classes")
  return (["## Per class (mean over seeds; also per_class.csv)", "", "; ".join(counts) + ".", "",
           tables.markdown_table(header, lines), ""], rows)


def _named(name: str, metrics: dict, unavailable: dict | None = None) -> dict:
  return {"name": name, "metrics": metrics, "unavailable": unavailable or {}}


def table(reports: list[dict], baseline: int, notes: bool = True) -> str:
  """`report.comparison_table` with its n/a notes merged across runs (or dropped)."""
  text = report.comparison_table(reports, baseline).rstrip()
  body, _, note_text = text.partition("\n\nn/a:\n")
  if not notes or not note_text:
    return body
  merged: dict[str, list[str]] = {}
  for line in note_text.splitlines():
    for r in reports:  # "- <run name>, <column>: <reason>"
      prefix = f"- {r['name']}, "
      if line.startswith(prefix):
        merged.setdefault(line[len(prefix):], []).append(r["name"])
        break
  return body + "\n\nn/a:\n" + "\n".join(
      f"- {note}" + ("" if len(names) == len(reports) else f" ({', '.join(names)})")
      for note, names in merged.items())


def sd_table(rows: list[dict], first_column: str = "α") -> str:
  """Markdown table of the standard deviations over seeds (units as in the main table)."""
  lines = [f"| {first_column} | " + " | ".join(c.header for c in report.COLUMNS) + " |",
           "| --- | " + " | ".join("---:" for _ in report.COLUMNS) + " |"]
  for row in rows:
    sd = _named("", row["sd"])
    lines.append(f"| {row['variant'].short} | " + " | ".join(report.format_value(sd, c) for c in report.COLUMNS)
                 + " |")
  return "\n".join(lines) + "\n"


def _generated_images(generator, variables, w: np.ndarray) -> np.ndarray:
  images = jax.jit(lambda v, w: jnp.clip(render.synthesize(generator, v, w), -1.0, 1.0))(variables, w)
  return np.asarray(images)


def samples_figure(config: ConfigDict, workdir: pathlib.Path, prior: pathlib.Path, path: pathlib.Path) -> None:
  """Real training images of each attacked class beside the first selected attack samples for each α."""
  plt = files.pyplot()
  k = int(config.figure.samples_per_class)
  seed = int(config.seeds[0])
  generator, variables = model_store.load_model(prior)
  columns = []
  for variant in variants(config):
    with np.load(cell_at(workdir, seed, variant).attack_dir / "latents.npz") as f:
      w, targets = f["selected_w"], f["selected_targets"]
    columns.append((variant.label, w, targets))
  classes = np.unique(columns[0][2])
  if config.figure.get("classes"):
    classes = np.intersect1d(classes, np.asarray(config.figure.classes))
  classes = classes[:MAX_FIGURE_ROWS]
  train_split = data.load_split(config.target.dataset, "train")
  real_images, real_labels = data.load_arrays(train_split)
  size = real_images.shape[1]

  def grid(images_per_class: list[np.ndarray]) -> np.ndarray:   # a row of k cells per class, white where empty
    return np.concatenate([files.image_grid(images[:k], k, fill=255) for images in images_per_class])

  panels = [("real (training)", grid([real_images[real_labels == c] for c in classes]))]
  for title, w, targets in columns:
    rows = [np.flatnonzero(targets == c)[:k] for c in classes]
    images = _generated_images(generator, variables, w[np.concatenate(rows)])
    pixels = files.to_uint8(images)
    if pixels.shape[1] != size:
      pixels = np.asarray(jax.image.resize(pixels.astype(np.float32), (len(pixels), size, size, 3), "linear"))
      pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    split_at = np.cumsum([len(r) for r in rows])[:-1]
    panels.append((title, grid(np.split(pixels, split_at))))
  fig, axes = plt.subplots(1, len(panels), figsize=(0.45 * k * len(panels) + 1.5, 0.45 * len(classes) + 1.2))
  for ax, (title, image) in zip(np.atleast_1d(axes), panels):
    ax.imshow(image)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks((np.arange(len(classes)) + 0.5) * size, [str(c) for c in classes], fontsize=8)
  fig.suptitle(f"Selected attack samples per class (seed {seed})", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _colour(variant: Variant) -> str:
  if variant.defense != "none":
    return "tab:green"
  return "tab:red" if variant.alpha > 0 else "tab:blue" if variant.alpha < 0 else "tab:gray"


def metrics_figure(rows: list[dict], path: pathlib.Path) -> None:
  """Bar plot of PLOTTED metrics per variant: mean with ± sd error bars and each seed as a dot."""
  plt = files.pyplot()
  columns = {c.key: c for c in report.COLUMNS}
  fig, axes = plt.subplots(1, len(PLOTTED), figsize=(3.2 * len(PLOTTED), 3.2))
  x = np.arange(len(rows))
  for ax, key in zip(axes, PLOTTED):
    column, scale = columns[key], 100.0 if columns[key].percent else 1.0
    means = [scale * row["mean"][key] if row["mean"][key] is not None else np.nan for row in rows]
    sds = [scale * row["sd"][key] if row["sd"][key] is not None else 0.0 for row in rows]
    colors = [_colour(row["variant"]) for row in rows]
    ax.bar(x, means, yerr=sds, capsize=4, color=colors, alpha=0.8)
    for i, row in enumerate(rows):
      seeds = [scale * r["metrics"][key] for r in row["reports"] if r["metrics"].get(key) is not None]
      ax.plot([i] * len(seeds), seeds, "k.", markersize=5)
    ax.set_xticks(x, [row["variant"].label.replace(" ", "") for row in rows])
    ax.set_title(column.header + (" (%)" if column.percent else ""))
  fig.suptitle(f"Mean ± sd over {len(rows[0]['reports'])} seed(s); dots: single seeds", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _interval(stats: dict, scale: float = 1.0, digits: int = 3) -> str:
  """'mean ± sd [low, high]' of a `statistics.seed_interval` (parts that cannot be computed left out)."""
  if stats["mean"] is None:
    return "n/a"
  fmt = lambda key: f"{scale * stats[key]:.{digits}f}"  # noqa: E731
  return fmt("mean") if stats["sd"] is None else f"{fmt('mean')} ± {fmt('sd')} [{fmt('low')}, {fmt('high')}]"


def tradeoff_x(rows: list[dict]) -> str:
  """The membership metric of tradeoff.png's x axis: offline LiRA's AUC, or the loss attack's without shadows."""
  has_lira = any(row["membership"]["lira_offline.auc"]["mean"] is not None for row in rows)
  return "lira_offline.auc" if has_lira else "loss_attack.auc"


def tradeoff_section(config: ConfigDict, rows: list[dict], paired: dict) -> list[str]:
  """report.md lines: per variant, test accuracy, model-inversion Acc@1 and the membership columns side by side."""
  conf = int(round(100 * float(config.bootstrap.confidence)))
  m = config.membership
  header = [_first_column(config), "Test Acc (%)", "Acc@1 (%)", f"Δ Acc@1 (pp) [{conf}% CI]"] + \
      [f"{title}{' (%)' if 'tpr' in metric else ''}" for _, metric, title in MEMBERSHIP_COLUMNS]
  lines = []
  for row in rows:
    per_seed = lambda key: [r["metrics"].get(key) for r in row["reports"]]  # noqa: E731
    lines.append([row["variant"].short,
                  _interval(statistics.seed_interval(per_seed("test_accuracy"), conf / 100), 100, 1),
                  _interval(statistics.seed_interval(per_seed("acc_top1"), conf / 100), 100, 1),
                  format_delta(paired.get(row["variant"])),
                  *(_interval(row["membership"][f"{section}.{metric}"], *((100, 1) if "tpr" in metric else ()))
                    for section, metric, _ in MEMBERSHIP_COLUMNS)])
  shadows = (f"offline LiRA with {m.lira.num_shadows} shadow model(s) trained like the α = {config.baseline_alpha:g} "
             "target without a defense on public data (the attacker knows the architecture and the recipe, not α "
             "or the defense) and shared by all cells" if m.lira.num_shadows else "no LiRA (lira.num_shadows = 0)")
  return [
      "## Model inversion and membership inference", "",
      f"Mean ± sd over seeds [{conf}% Student t interval over seeds] per target; Δ Acc@1 as above (paired "
      "bootstrap). Membership: members are each target's training images, non-members its test images "
      f"({'all' if not m.max_examples else f'up to {m.max_examples}'} per group); {shadows}; the loss attack "
      "thresholds the target's loss (Yeom et al.). AUC 0.5 and TPR = FPR are chance. The t interval covers the "
      "variation between trained targets, not the sampling of the evaluated examples.", "",
      tables.markdown_table(header, lines), "", "![trade-off](tradeoff.png)", ""]


def tradeoff_figure(rows: list[dict], path: pathlib.Path) -> None:
  """Model-inversion Acc@1 against membership AUC per variant (mean ± sd over seeds), coloured by test accuracy."""
  plt = files.pyplot()
  x_key = tradeoff_x(rows)
  fig, ax = plt.subplots(figsize=(6.4, 4.8))
  test = [100 * row["mean"]["test_accuracy"] if row["mean"]["test_accuracy"] is not None else np.nan for row in rows]
  norm = plt.Normalize(np.nanmin(test) - 0.5, np.nanmax(test) + 0.5)
  points = [(row["membership"][x_key]["mean"], row["mean"]["acc_top1"]) for row in rows]
  points = np.asarray([(x, 100 * y) for x, y in points if x is not None and y is not None]).reshape(-1, 2)
  spread = np.ptp(points, axis=0) + 1e-9 if len(points) else np.ones(2)
  for row, accuracy in zip(rows, test):
    x = row["membership"][x_key]
    y_mean, y_sd = row["mean"]["acc_top1"], row["sd"]["acc_top1"]
    if x["mean"] is None or y_mean is None:
      continue
    # A label goes left of its point when another point sits close on its right (where labels go by default).
    dx, dy = (points[:, 0] - x["mean"]) / spread[0], np.abs(points[:, 1] - 100 * y_mean) / spread[1]
    left = bool(np.any((dx > 0) & (dx < 0.35) & (dy < 0.15)))
    colour = plt.cm.viridis(norm(accuracy))
    ax.errorbar(x["mean"], 100 * y_mean, xerr=x["sd"] or 0.0, yerr=100 * (y_sd or 0.0), fmt="none",
                ecolor=colour, capsize=3)
    ax.scatter([x["mean"]], [100 * y_mean], s=70, color=colour, edgecolors="k", zorder=3,
               marker="o" if row["variant"].defense == "none" else "s")
    ax.annotate(f"{row['variant'].label}\ntest {accuracy:.1f}%", (x["mean"], 100 * y_mean), fontsize=8,
                xytext=(-6, 4) if left else (6, 4), textcoords="offset points", ha="right" if left else "left")
  colourbar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax)
  colourbar.set_label("test accuracy (%)")
  ax.set_xlabel(("offline LiRA" if x_key.startswith("lira") else "loss-threshold") + " membership AUC")
  ax.set_ylabel("model inversion Acc@1 (%)")
  ax.set_title(f"Leakage trade-off: mean ± sd over {len(rows[0]['reports'])} seed(s); squares: defenses",
               fontsize=10)
  ax.grid(alpha=0.3)
  ax.margins(x=0.2, y=0.15)  # room for the labels beside the points
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def defense_description(config: ConfigDict) -> str:
  """The defenses of the study with their settings (from `config.target.defense`), for the report's header."""
  d = config.target.defense
  settings = {"mid": f"bottleneck {d.mid.bottleneck_dim}, β = {d.mid.beta:g}",
              "bido": f"HSIC, λ_x = {d.bido.lambda_x:g}, λ_y = {d.bido.lambda_y:g}, σ = {d.bido.sigma:g}",
              "calor": f"rank {d.calor.rank}, {d.calor.activation}, γ = {d.calor.gamma:g}, scale {d.calor.scale:g}"}
  return ", ".join(f"{DEFENSE_LABELS[name]} ({settings[name]})" for name in config.defenses)


def provenance_folders(config: ConfigDict, workdir: pathlib.Path) -> list[pathlib.Path]:
  """The run folders behind the study's results: the evaluation model, the prior if trained here, every cell's
  target, attack and membership runs (other programs' folders in the same workdir are not the study's)."""
  prior = [workdir / "prior"] if config.retrain_prior else []
  runs = [run for cell in cells(config, workdir) for run in (cell.target_dir, cell.attack_dir, cell.membership_dir)]
  return [workdir / "evaluation_model", *prior, *runs]


def write_report(config: ConfigDict, workdir: pathlib.Path, timings: dict) -> dict:
  """Builds report.md, study.json, samples.png and metrics.png (and tradeoff.png) from the evaluated cells."""
  rows = aggregate(config, workdir)
  matrices = per_class_matrices(config, workdir)
  paired = paired_differences(config, matrices)
  class_lines, class_rows = per_class_section(paired, config, matrices)
  alphas = [float(a) for a in config.alphas]
  baseline = [row["variant"] for row in rows].index(Variant(float(config.baseline_alpha)))
  n = len(config.seeds)
  means = [_named(row["variant"].label, row["mean"], row["unavailable"]) for row in rows]
  prior = prior_path(config, workdir)
  samples_figure(config, workdir, prior, workdir / "samples.png")
  metrics_figure(rows, workdir / "metrics.png")
  if config.run_membership:
    tradeoff_figure(rows, workdir / "tradeoff.png")
  defended = (f"; defenses at α = {config.baseline_alpha:g}: {defense_description(config)}" if config.defenses
              else "")
  lines = [
      f"# Label smoothing and model inversion: {config.target.dataset.name} study", "",
      f"Targets: {config.target.model.arch} on the private {config.target.dataset.name} training split "
      f"({config.target.dataset.get('samples_per_class') or 'all'} images per class), "
      f"α ∈ {{{', '.join(f'{a:g}' for a in alphas)}}}{defended}; "
      f"attack: PPA through the StyleGAN2 prior `{prior}`; evaluation model: {config.evaluation_model.model.arch}. "
      f"Seeds: {', '.join(str(s) for s in config.seeds)}{' (quick run)' if config.quick else ''}.", "",
      provenance.summary_line(provenance_folders(config, workdir)), "",
      *paired_section(config, workdir, rows, paired),
      *(tradeoff_section(config, rows, paired) if config.run_membership else []),
      f"## Mean over {n} seed{'s' if n > 1 else ''} (differences to α = {config.baseline_alpha:g})", "",
      "FID, precision, recall, density and coverage use the evaluation model's penultimate features (no "
      "Inception network offline); δ_face is n/a for digits.", "",
      table(means, baseline), "",
      "## Standard deviation over seeds", "",
      sd_table(rows, _first_column(config)).rstrip() if n > 1 else "One seed: no standard deviation.", "",
      "## Figures", "", "![attack samples](samples.png)", "", "![metrics per alpha](metrics.png)", "",
      "## Per seed", ""]
  for seed in config.seeds:
    seed_reports = [_named(row["variant"].label, r["metrics"], r["unavailable"])
                    for row in rows for r, s in zip(row["reports"], config.seeds) if s == seed]
    lines += [f"### Seed {seed}", "", table(seed_reports, baseline, notes=False), ""]
  lines += class_lines
  lines += ["## Stage times (this invocation)", ""]
  lines += [f"- {name}: {seconds:.0f} s" for name, seconds in timings.items()] or ["- nothing was run"]
  files.atomic_write(workdir / "report.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=list(class_rows[0]) if class_rows else ["class"])
  writer.writeheader()
  writer.writerows(class_rows)
  files.atomic_write(workdir / "per_class.csv", lambda f: f.write(text.getvalue().encode()))
  keys = [row["variant"].key for row in rows]
  study = {"alphas": alphas, "seeds": list(config.seeds), "baseline_alpha": float(config.baseline_alpha),
           **({"defenses": list(config.defenses)} if config.defenses else {}),
           "mean": {k: row["mean"] for k, row in zip(keys, rows)},
           "sd": {k: row["sd"] for k, row in zip(keys, rows)},
           "per_seed": {k: [r["metrics"] for r in row["reports"]] for k, row in zip(keys, rows)},
           "attack_points": dict(zip(keys, attack_points(rows))),
           "paired_differences": {v.key: {k: x for k, x in d.items() if k != "classes"} for v, d in paired.items()},
           **({"membership": {k: row["membership"] for k, row in zip(keys, rows)}} if config.run_membership else {}),
           "timings": timings, "config": json.loads(config.to_json_best_effort())}
  files.atomic_write(workdir / "study.json", lambda f: f.write(json.dumps(study, indent=2).encode()))
  return study


# ----------------------------------------------------------------------------------------------- driver


def run_study(config: ConfigDict, workdir) -> dict:
  """Runs the missing stages of the study in `workdir`, then writes the report; returns study.json's dict."""
  config = resolve(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  files.atomic_write(workdir / "config.json", lambda f: f.write(config.to_json_best_effort(indent=2).encode()))
  timings = chain.run_stages(stages(config, workdir))
  study = write_report(config, workdir, timings)
  logging.info("Study report: %s", workdir / "report.md")
  return study


def main(argv):
  cli.start(argv)
  run_study(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Study config (configs/digits_study.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Study directory (stages already done there are skipped).")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
