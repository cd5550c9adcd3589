"""The end-to-end label-smoothing study: `python -m jaxmia.experiment --config=configs/digits_study.py
--workdir=runs/digits_study`.

For every seed and every label-smoothing factor α of the config, one cell

    train the target (jaxmia.train, only α differs between a seed's cells) -> PPA attack through the StyleGAN2
    prior (jaxmia.attack) -> evaluation (jaxmia.evaluate: Acc@k and δ_eval with the evaluation model, FID and
    PRDC in its feature space, test accuracy, ECE, ξ)

after the shared stages (the prior: shipped, or retrained with `jaxmia.gan`; the evaluation model, another
architecture trained once). Workdir layout:

    prior/                       only with retrain_prior=True (a jaxmia.gan workdir; numbers/: the number prior
                                 of its digit generator when prior_num_digits > 0)
    evaluation_model/            jaxmia.train workdir; model/ is the exported classifier
    seed_<s>/alpha_<α>/target/   jaxmia.train workdir of the target
    seed_<s>/alpha_<α>/attack/   jaxmia.attack workdir; evaluation/report.json from jaxmia.evaluate
    report.md, study.json        Table-1 columns per α (mean ± sd over seeds, differences to the baseline α);
                                 Acc@1 of the starting, optimised and selected latents; paired per-class
                                 differences of Acc@1 to the baseline α with hierarchical bootstrap intervals
    per_class.csv                Acc@1 per class and α (mean over seeds) and its difference to the baseline
    samples.png                  real training images and selected attack samples per class for each α
    metrics.png                  Acc@1, δ_eval, ξ_train and ξ_test per α (mean ± sd, seeds as dots)

A stage whose output exists (an exported model, `summary.json`, `report.json`) is skipped, so rerunning the
command continues an interrupted study; the stages themselves resume mid-way as well. The report is always
rebuilt from the evaluated cells.
"""
import csv
import dataclasses
import io
import json
import math
import pathlib

from absl import flags, logging
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict, config_flags
import numpy as np

from jaxmia import chain, cli, data, files, gan, model_store, report, train
from jaxmia.analysis import statistics, tables
from jaxmia.attack import render

# Metrics plotted in metrics.png (keys of report.json's "metrics").
PLOTTED = ("acc_top1", "delta_eval", "xi_train", "xi_test")
MAX_FIGURE_ROWS = 12  # classes shown in samples.png (config.figure.classes, else the first attacked ones)


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
  return config


def alpha_name(alpha: float) -> str:
  return f"alpha_{alpha:+.3f}"


@dataclasses.dataclass(frozen=True)
class Cell:
  seed: int
  alpha: float
  root: pathlib.Path

  @property
  def target_dir(self) -> pathlib.Path:
    return self.root / "target"

  @property
  def attack_dir(self) -> pathlib.Path:
    return self.root / "attack"


def cell_at(workdir: pathlib.Path, seed, alpha) -> Cell:
  """The cell of (seed, α) in the study's `workdir`."""
  return Cell(int(seed), float(alpha), workdir / f"seed_{int(seed)}" / alpha_name(float(alpha)))


def cells(config: ConfigDict, workdir: pathlib.Path) -> list[Cell]:
  return [cell_at(workdir, s, a) for s in config.seeds for a in config.alphas]


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
  out.append(chain.Stage("evaluation model", chain.exported_model_info(evaluation_model),
                         lambda: train.train_and_evaluate(config.evaluation_model, workdir / "evaluation_model")))
  evaluate = evaluate_config(config, workdir, evaluation_model)
  for cell in cells(config, workdir):
    out += chain.target_chain(f"seed {cell.seed}, α = {cell.alpha:g}", target_config(config, cell), cell.target_dir,
                              attack_config(config, cell, prior), cell.attack_dir, evaluate)
  return out


def target_config(config: ConfigDict, cell: Cell) -> ConfigDict:
  target = ConfigDict(config.target.to_dict())
  target.seed, target.label_smoothing = cell.seed, cell.alpha
  return target


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


def _mean_sd(values: list) -> tuple[float | None, float | None]:
  """(mean, sd) of the finite values; None for what cannot be computed (no values; sd of one value)."""
  stats = files.mean_sd([v for v in values if v is not None and math.isfinite(v)])
  return (stats["mean"] if stats["n"] else None), (stats["sd"] if stats["n"] > 1 else None)


def aggregate(config: ConfigDict, workdir: pathlib.Path) -> list[dict]:
  """Per α: {'alpha', 'reports' (one per seed), 'mean', 'sd'} with metrics keyed as in report.json."""
  rows = []
  for alpha in config.alphas:
    reports = [report.load_report(cell.attack_dir) for cell in cells(config, workdir) if cell.alpha == alpha]
    mean, sd = {}, {}
    for key in report.COLUMN_KEYS:
      mean[key], sd[key] = _mean_sd([r["metrics"].get(key) for r in reports])
    reasons = {k: v for r in reports for k, v in r["unavailable"].items() if mean[k] is None}
    rows.append({"alpha": float(alpha), "reports": reports, "mean": mean, "sd": sd, "unavailable": reasons})
  return rows


# Acc@1 at the three points of the attack (keys of report.json's details / metrics, per_class.csv columns).
ATTACK_POINTS = (("start (stage 1)", "acc_top1_initial"), ("optimised (stage 2)", "acc_top1_all_optimized"),
                 ("selected (stage 3)", "acc_top1"))


def _per_class_values(run: Cell, key: str) -> dict[int, float]:
  """`{class: value}` of column `key` in a cell's evaluation/per_class.csv (empty cells left out)."""
  path = run.attack_dir / report.EVALUATION_DIR / "per_class.csv"
  with path.open() as f:
    return {int(row["class"]): float(row[key]) for row in csv.DictReader(f) if row.get(key)}


def per_class_matrix(config: ConfigDict, workdir: pathlib.Path, alpha: float, key: str = "acc_top1"):
  """(classes `[C]`, values `[S, C]` of per-class column `key` for α, one row per seed; NaN where missing)."""
  per_seed = [_per_class_values(cell_at(workdir, s, alpha), key) for s in config.seeds]
  classes = np.array(sorted(set().union(*per_seed)), int)
  return classes, np.array([[t.get(int(c), np.nan) for c in classes] for t in per_seed])


def per_class_matrices(config: ConfigDict, workdir: pathlib.Path, key: str = "acc_top1") -> dict:
  """`{α: per_class_matrix(..., α, key)}` for every α of the study (each cell's per_class.csv read once)."""
  return {float(a): per_class_matrix(config, workdir, a, key) for a in config.alphas}


def paired_differences(config: ConfigDict, matrices: dict) -> dict:
  """Per α ≠ baseline: mean per-class difference to the baseline α with its bootstrap interval.

  `matrices`: `per_class_matrices` of the study. Returns `{alpha: {'mean', 'low', 'high', 'num_seeds',
  'num_classes', 'classes', 'per_class' [C]}}`; classes are those attacked in both runs of a seed (paired by
  seed and class).
  """
  classes, base = matrices[float(config.baseline_alpha)]
  boot = config.bootstrap
  out = {}
  for alpha in config.alphas:
    if float(alpha) == float(config.baseline_alpha):
      continue
    other_classes, other = matrices[float(alpha)]
    common = np.intersect1d(classes, other_classes)
    d = other[:, np.searchsorted(other_classes, common)] - base[:, np.searchsorted(classes, common)]
    out[float(alpha)] = {**statistics.hierarchical_bootstrap(d, int(boot.num_resamples), int(boot.seed),
                                                             float(boot.confidence)),
                         "classes": common.tolist(), "per_class": np.nanmean(d, axis=0).tolist()}
  return out


def attack_points(rows: list[dict]) -> list[dict]:
  """Per α: `{label: (mean, sd)}` of Acc@1 at the start, after stage 2 and after the final selection."""
  out = []
  for row in rows:
    points = {}
    for label, key in ATTACK_POINTS:
      values = [r["metrics"].get(key) if key in r["metrics"] else r.get("details", {}).get(key) for r in row["reports"]]
      points[label] = _mean_sd(values)
    out.append(points)
  return out


def _pct(mean_sd: tuple) -> str:
  mean, sd = mean_sd
  if mean is None:
    return "n/a"
  return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def paired_section(config: ConfigDict, workdir: pathlib.Path, rows: list[dict], paired: dict) -> list[str]:
  """report.md lines: Acc@1 through the attack per α and the paired differences with their intervals."""
  points = attack_points(rows)
  conf = int(round(100 * float(config.bootstrap.confidence)))
  header = ["α", "Test Acc (%)"] + [f"Acc@1 {label} (%)" for label, _ in ATTACK_POINTS] + \
      [f"Δ Acc@1 to α = {config.baseline_alpha:g} (pp) [{conf}% CI]"]
  lines = []
  for row, point in zip(rows, points):
    diff = paired.get(row["alpha"])
    delta = "baseline" if diff is None else (f"{100 * diff['mean']:+.1f} [{100 * diff['low']:+.1f}, "
                                             f"{100 * diff['high']:+.1f}]")
    test = _pct((row["mean"].get("test_accuracy"), row["sd"].get("test_accuracy")))
    lines.append([f"{row['alpha']:g}", test, *(_pct(point[label]) for label, _ in ATTACK_POINTS), delta])
  n_classes = max((d["num_classes"] for d in paired.values()), default=0)
  return [
      f"## Attack success and paired differences ({len(config.seeds)} seed{'s' if len(config.seeds) > 1 else ''} × "
      f"{n_classes} classes)", "",
      "Mean ± sd over seeds. Acc@1: the evaluation model's top-1 accuracy on the attack's starting latents "
      "(stage 1), on all optimised latents (stage 2) and on the final selection (stage 3, the paper's Acc@1). "
      f"Δ: the mean over seeds and classes of (Acc@1 of a class under α) − (Acc@1 of the same class and seed "
      f"under α = {config.baseline_alpha:g}), with a {conf}% percentile interval from "
      f"{int(config.bootstrap.num_resamples)} hierarchical bootstrap resamples "
      "(seeds, then classes, with replacement).", "",
      tables.markdown_table(header, lines), ""]


def per_class_section(paired: dict, config: ConfigDict, matrices: dict) -> tuple[list[str], list[dict]]:
  """report.md lines (per-class Acc@1 per α and differences) and the rows of per_class.csv."""
  alphas = [float(a) for a in config.alphas]
  classes = sorted(set().union(*(set(c.tolist()) for c, _ in matrices.values())))
  rows = []
  for c in classes:
    row = {"class": c}
    for a in alphas:
      cls, values = matrices[a]
      where = np.flatnonzero(cls == c)
      row[f"acc_top1_alpha{a:g}"] = float(np.nanmean(values[:, where[0]])) if len(where) else float("nan")
    for a, diff in paired.items():
      where = np.flatnonzero(np.array(diff["classes"]) == c)
      row[f"delta_alpha{a:g}"] = diff["per_class"][where[0]] if len(where) else float("nan")
    rows.append(row)
  header = ["class"] + [f"Acc@1 α={a:g} (%)" for a in alphas] + [f"Δ α={a:g} (pp)" for a in paired]
  lines = [[row["class"], *(f"{100 * row[f'acc_top1_alpha{a:g}']:.0f}" for a in alphas),
            *(f"{100 * row[f'delta_alpha{a:g}']:+.0f}" for a in paired)] for row in rows]
  counts = []
  for a, diff in paired.items():
    per_class = np.asarray(diff["per_class"])
    counts.append(f"α = {a:g}: higher in {int(np.sum(per_class > 0))}, equal in {int(np.sum(per_class == 0))}, "
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


def sd_table(rows: list[dict]) -> str:
  """Markdown table of the standard deviations over seeds (units as in the main table)."""
  lines = ["| α | " + " | ".join(c.header for c in report.COLUMNS) + " |",
           "| --- | " + " | ".join("---:" for _ in report.COLUMNS) + " |"]
  for row in rows:
    sd = _named("", row["sd"])
    lines.append(f"| {row['alpha']:g} | " + " | ".join(report.format_value(sd, c) for c in report.COLUMNS) + " |")
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
  for alpha in config.alphas:
    with np.load(cell_at(workdir, seed, alpha).attack_dir /
                 "latents.npz") as f:
      w, targets = f["selected_w"], f["selected_targets"]
    columns.append((f"α = {alpha:g}", w, targets))
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


def metrics_figure(rows: list[dict], path: pathlib.Path) -> None:
  """Bar plot of PLOTTED metrics per α: mean with ± sd error bars and each seed as a dot."""
  plt = files.pyplot()
  columns = {c.key: c for c in report.COLUMNS}
  fig, axes = plt.subplots(1, len(PLOTTED), figsize=(3.2 * len(PLOTTED), 3.2))
  x = np.arange(len(rows))
  for ax, key in zip(axes, PLOTTED):
    column, scale = columns[key], 100.0 if columns[key].percent else 1.0
    means = [scale * row["mean"][key] if row["mean"][key] is not None else np.nan for row in rows]
    sds = [scale * row["sd"][key] if row["sd"][key] is not None else 0.0 for row in rows]
    colors = ["tab:red" if row["alpha"] > 0 else "tab:blue" if row["alpha"] < 0 else "tab:gray" for row in rows]
    ax.bar(x, means, yerr=sds, capsize=4, color=colors, alpha=0.8)
    for i, row in enumerate(rows):
      seeds = [scale * r["metrics"][key] for r in row["reports"] if r["metrics"].get(key) is not None]
      ax.plot([i] * len(seeds), seeds, "k.", markersize=5)
    ax.set_xticks(x, [f"α={row['alpha']:g}" for row in rows])
    ax.set_title(column.header + (" (%)" if column.percent else ""))
  fig.suptitle(f"Mean ± sd over {len(rows[0]['reports'])} seed(s); dots: single seeds", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(config: ConfigDict, workdir: pathlib.Path, timings: dict) -> dict:
  """Builds report.md, study.json, samples.png and metrics.png from the evaluated cells."""
  rows = aggregate(config, workdir)
  matrices = per_class_matrices(config, workdir)
  paired = paired_differences(config, matrices)
  class_lines, class_rows = per_class_section(paired, config, matrices)
  alphas = [row["alpha"] for row in rows]
  baseline = alphas.index(float(config.baseline_alpha))
  n = len(config.seeds)
  means = [_named(f"α = {row['alpha']:g}", row["mean"], row["unavailable"]) for row in rows]
  prior = prior_path(config, workdir)
  samples_figure(config, workdir, prior, workdir / "samples.png")
  metrics_figure(rows, workdir / "metrics.png")
  lines = [
      f"# Label smoothing and model inversion: {config.target.dataset.name} study", "",
      f"Targets: {config.target.model.arch} on the private {config.target.dataset.name} training split "
      f"({config.target.dataset.get('samples_per_class') or 'all'} images per class), "
      f"α ∈ {{{', '.join(f'{a:g}' for a in alphas)}}}; "
      f"attack: PPA through the StyleGAN2 prior `{prior}`; evaluation model: {config.evaluation_model.model.arch}. "
      f"Seeds: {', '.join(str(s) for s in config.seeds)}{' (quick run)' if config.quick else ''}.", "",
      *paired_section(config, workdir, rows, paired),
      f"## Mean over {n} seed{'s' if n > 1 else ''} (differences to α = {config.baseline_alpha:g})", "",
      "FID, precision, recall, density and coverage use the evaluation model's penultimate features (no "
      "Inception network offline); δ_face is n/a for digits.", "",
      table(means, baseline), "",
      "## Standard deviation over seeds", "",
      sd_table(rows).rstrip() if n > 1 else "One seed: no standard deviation.", "",
      "## Figures", "", "![attack samples](samples.png)", "", "![metrics per alpha](metrics.png)", "",
      "## Per seed", ""]
  for seed in config.seeds:
    seed_reports = [_named(f"α = {row['alpha']:g}", r["metrics"], r["unavailable"])
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
  study = {"alphas": alphas, "seeds": list(config.seeds), "baseline_alpha": float(config.baseline_alpha),
           "mean": {f"{row['alpha']:g}": row["mean"] for row in rows},
           "sd": {f"{row['alpha']:g}": row["sd"] for row in rows},
           "per_seed": {f"{row['alpha']:g}": [r["metrics"] for r in row["reports"]] for row in rows},
           "attack_points": {f"{row['alpha']:g}": point for row, point in zip(rows, attack_points(rows))},
           "paired_differences": {f"{a:g}": {k: v for k, v in d.items() if k != "classes"} for a, d in paired.items()},
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
