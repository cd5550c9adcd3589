"""The paper's low-resolution attacks beside label smoothing (its Table 8) on the α study's targets:
`python -m jaxmia.lowres_study --config=configs/lowres_study.py --workdir=runs/numbers_study`.

The α study (`jaxmia.experiment`, configs/numbers_study.py) trains for every seed one target per α and an
evaluation model; this program attacks those same targets with GMI, KED-MI, RLB-MI and BREP-MI
(`config.lowres.attacks`) and evaluates each attack with the study's evaluation model. Run in the α study's
workdir it reuses its targets and evaluation model (their stages are skipped); in an empty workdir it trains them
first with the α study's settings. Stages, in run order:

    gan_gmi/                            jaxmia.gan_gmi workdir: GMI's WGAN-GP GAN on the public data, shared by
                                        GMI, RLB-MI and BREP-MI (as in their official code)
    seed_<s>/alpha_<α>/gan_kedmi/       jaxmia.gan_kedmi workdir: KED-MI's GAN of this target (its discriminator
                                        learns the target's soft labels, so every target gets its own)
    seed_<s>/alpha_<α>/attack_<kind>/   jaxmia.attack workdir; evaluation/report.json from jaxmia.evaluate
    lowres_report.md, lowres_study.json Acc@1 per attack and α (mean ± sd over seeds), paired per-class
                                        differences to the baseline α with hierarchical bootstrap intervals,
                                        the paper's Table 8 beside them, target queries of the black-box and
                                        label-only attacks
    lowres.png                          Acc@1 per attack and α with the paper's values
    lowres_samples.png                  a real image and each attack's first result image per class and α

Every attack seed is the cell's seed; the KED-MI GANs are seeded with it too, the shared GMI GAN with its own.
Stages whose outputs exist are skipped and the stages resume mid-way, so rerunning continues the study.
"""
import json
import pathlib

from absl import flags, logging
from ml_collections import ConfigDict, config_flags
import numpy as np
from PIL import Image

from jaxmia import chain, cli, data, experiment, files, gan_gmi, gan_kedmi, provenance, report
from jaxmia.attack import layout
from jaxmia.analysis import tables

KINDS = ("gmi", "kedmi", "rlb", "brep")
NAMES = {"gmi": "GMI", "kedmi": "KED-MI", "rlb": "RLB-MI", "brep": "BREP-MI"}
ACCESS = {"gmi": "white-box", "kedmi": "white-box", "rlb": "black-box", "brep": "label-only"}
# The paper's Table 8 (Appendix C.5): Acc@1 (%) on 64x64 CelebA against VGG-16 targets, by α.
PAPER_TABLE8 = {"gmi": {0.1: 25.4, 0.0: 16.0, -0.05: 5.9}, "kedmi": {0.1: 68.9, 0.0: 43.6, -0.05: 24.1},
                "rlb": {0.1: 65.0, 0.0: 52.0, -0.05: 19.0}, "brep": {0.1: 56.3, 0.0: 49.0, -0.05: 48.7}}
# A difference of the paper's means below this (pp) is reported as "about the same" (its BREP-MI: -0.3).
PAPER_NO_CHANGE = 1.0
REPORT_FILE, STUDY_FILE, FIGURE_FILE = "lowres_report.md", "lowres_study.json", "lowres.png"
SAMPLES_FILE = "lowres_samples.png"
MAX_SAMPLE_CLASSES = 12  # columns of lowres_samples.png


def resolve(config: ConfigDict) -> ConfigDict:
  """`experiment.resolve` (quick settings) plus the checks of `config.lowres`."""
  config = experiment.resolve(config)
  if config.defenses:
    raise ValueError(f"config.defenses={tuple(config.defenses)}: the low-resolution study attacks the α targets "
                     "only; set --config.defenses='()'.")
  unknown = [k for k in config.lowres.attacks if k not in KINDS]
  if unknown or not config.lowres.attacks:
    raise ValueError(f"config.lowres.attacks={tuple(config.lowres.attacks)} must name attacks of {KINDS}.")
  return config


def attack_dir(cell: experiment.Cell, kind: str) -> pathlib.Path:
  return cell.root / f"attack_{kind}"


def gmi_gan_dir(workdir: pathlib.Path) -> pathlib.Path:
  return workdir / "gan_gmi"


def kedmi_gan_dir(cell: experiment.Cell) -> pathlib.Path:
  return cell.root / "gan_kedmi"


def kedmi_gan_config(config: ConfigDict, cell: experiment.Cell) -> ConfigDict:
  gan = ConfigDict(config.lowres.kedmi_gan.to_dict())
  gan.seed, gan.target = cell.seed, str(cell.target_dir / "model")
  return gan


def attack_config(config: ConfigDict, cell: experiment.Cell, kind: str, workdir: pathlib.Path) -> ConfigDict:
  """The attack `kind`'s config pointed at the cell's target and its GAN, seeded with the cell's seed."""
  attack = ConfigDict(config.lowres[kind].to_dict())
  gan = kedmi_gan_dir(cell) if kind == "kedmi" else gmi_gan_dir(workdir)
  attack.seed, attack.target, attack.targets = cell.seed, str(cell.target_dir / "model"), config.lowres.targets
  attack.generator = str(gan / "generator")
  if kind in ("gmi", "kedmi"):
    attack.discriminator = str(gan / "discriminator")
  return attack


def stages(config: ConfigDict, workdir: pathlib.Path) -> list[chain.Stage]:
  """Shared stages (evaluation model, the targets, GMI's GAN), then attack by attack (`config.lowres.attacks`
  order) every cell's stages, so each attack's row of the study is complete before the next attack starts."""
  kinds = tuple(config.lowres.attacks)
  cells = [(cell, f"seed {cell.seed}, {cell.variant.label}") for cell in experiment.cells(config, workdir)]
  out = [experiment.evaluation_model_stage(config, workdir)]
  out += [chain.target_stage(label, experiment.target_config(config, cell), cell.target_dir) for cell, label in cells]
  if set(kinds) - {"kedmi"}:
    out.append(chain.Stage("GMI GAN", chain.exported_model_info(gmi_gan_dir(workdir) / "generator"),
                           lambda: gan_gmi.train(config.lowres.gmi_gan, gmi_gan_dir(workdir))))
  evaluate = experiment.evaluate_config(config, workdir, workdir / "evaluation_model" / "model")
  for kind in kinds:
    for cell, label in cells:
      if kind == "kedmi":
        gan_config = kedmi_gan_config(config, cell)
        out.append(chain.Stage(f"KED-MI GAN ({label})", chain.exported_model_info(kedmi_gan_dir(cell) / "generator"),
                               lambda c=gan_config, d=kedmi_gan_dir(cell): gan_kedmi.train(c, d)))
      out.append(chain.attack_stage(label, attack_config(config, cell, kind, workdir), attack_dir(cell, kind),
                                    kind=f"{NAMES[kind]} attack"))
      out.append(chain.evaluation_stage(label, evaluate, attack_dir(cell, kind), kind=f"{NAMES[kind]} evaluation"))
  return out


# ----------------------------------------------------------------------------------------------- report


def _load_json(path: pathlib.Path) -> dict:
  return json.loads(path.read_text())


def summarize(config: ConfigDict, workdir: pathlib.Path) -> dict:
  """`{kind: {'rows': [per α: {'alpha', 'acc_top1' (per seed), 'mean', 'sd', 'queries' (per-class mean per
  seed, or None), 'paired' (paired_difference to the baseline α, None for it)}], 'num_classes'}}` of the
  evaluated cells."""
  out = {}
  alphas = [float(a) for a in config.alphas]
  for kind in config.lowres.attacks:
    dirs = {a: [attack_dir(experiment.cell_at(workdir, s, a), kind) for s in config.seeds] for a in alphas}
    matrices = {a: experiment.per_seed_matrix(dirs[a]) for a in alphas}
    rows = []
    for a in alphas:
      acc = [report.load_report(d)["metrics"]["acc_top1"] for d in dirs[a]]
      queries = [query_count(_load_json(d / "summary.json")) for d in dirs[a]]
      mean, sd = experiment.mean_sd(acc)
      rows.append({"alpha": a, "acc_top1": acc, "mean": mean, "sd": sd,
                   "queries": None if None in queries else queries,
                   "paired": None if a == float(config.baseline_alpha) else experiment.paired_difference(
                       matrices[float(config.baseline_alpha)], matrices[a], config.bootstrap)})
    out[kind] = {"rows": rows, "num_classes": len(matrices[alphas[0]][0])}
  return out


def query_count(summary: dict) -> float | None:
  """Target queries per attacked class of a black-box or label-only attack's summary.json (None: white-box)."""
  queries = summary.get("queries")
  if not queries:
    return None
  return float(queries["per_class_mean"] if "per_class_mean" in queries else queries["per_class"])


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


def report_lines(config: ConfigDict, summary: dict, header: str) -> list[str]:
  """lowres_report.md: the Table-8 comparison per attack and α, then the paired differences per class."""
  conf = int(round(100 * float(config.bootstrap.confidence)))
  base = float(config.baseline_alpha)
  rows = []
  for kind, result in summary.items():
    for row in result["rows"]:
      paper = PAPER_TABLE8[kind].get(row["alpha"])
      paper_delta = (None if paper is None or row["alpha"] == base or base not in PAPER_TABLE8[kind]
                     else paper - PAPER_TABLE8[kind][base])
      queries = ("—" if row["queries"] is None else f"{np.mean(row['queries']):,.0f}")
      rows.append([f"{NAMES[kind]} ({ACCESS[kind]})", f"{row['alpha']:g}",
                   experiment.format_mean_sd((row["mean"], row["sd"])), experiment.format_delta(row["paired"]),
                   "n/a" if paper is None else f"{paper:.1f}",
                   "baseline" if row["alpha"] == base else ("n/a" if paper_delta is None else f"{paper_delta:+.1f}"),
                   queries])
  n_seeds = len(config.seeds)
  return [
      header, "",
      f"Acc@1: the evaluation model's top-1 accuracy on each attack's result images, mean ± sd over "
      f"{_count(n_seeds, 'seed')}. Δ: the mean over seeds and classes of (Acc@1 of a class under α) − (Acc@1 of the "
      f"same class and seed under α = {base:g}), with a {conf}% percentile interval from "
      f"{int(config.bootstrap.num_resamples)} hierarchical bootstrap resamples (seeds, then classes). The paper's "
      "columns are its Table 8 (64x64 CelebA, "
      "VGG-16 targets, 1,000 identities); its Δ is the difference of its means. Queries: target queries per "
      "attacked class (mean over seeds), for the attacks that see only outputs.", "",
      tables.markdown_table(["attack", "α", "Acc@1 (%)", f"Δ to α = {base:g} (pp) [{conf}% CI]",
                             "paper Acc@1 (%)", "paper Δ (pp)", "queries / class"], rows), ""]


def findings(config: ConfigDict, summary: dict) -> list[str]:
  """One line per attack and α: does the interval exclude zero, and is it the paper's direction?"""
  base = float(config.baseline_alpha)
  lines = []
  for kind, result in summary.items():
    for row in result["rows"]:
      if row["paired"] is None:
        continue
      paired, paper = row["paired"], PAPER_TABLE8[kind]
      paper_delta = paper.get(row["alpha"], np.nan) - paper.get(base, np.nan)
      paper_direction = ("about the same" if abs(paper_delta) < PAPER_NO_CHANGE else
                         "higher" if paper_delta > 0 else "lower")
      numbers = f"({experiment.format_delta(paired)} pp; paper {paper_delta:+.1f} pp)"
      if paired["low"] > 0 or paired["high"] < 0:
        found = "higher" if paired["low"] > 0 else "lower"
        verdict = "the paper's direction" if found == paper_direction else (
            "the reverse of the paper's direction" if paper_direction != "about the same" else
            "where the paper finds about the same")
        lines.append(f"- {NAMES[kind]}, α = {row['alpha']:g}: {found} than α = {base:g} {numbers}: {verdict}.")
      else:
        verdict = ("as the paper" if paper_direction == "about the same" else
                   f"where the paper finds it {paper_direction}")
        lines.append(f"- {NAMES[kind]}, α = {row['alpha']:g}: no difference to α = {base:g} resolved {numbers}, "
                     f"{verdict}.")
  return lines


def figure(config: ConfigDict, summary: dict, path: pathlib.Path) -> None:
  """Grouped bars: Acc@1 per attack (groups) and α (bars, mean ± sd, seeds as dots); the paper's values as
  crosses."""
  plt = files.pyplot()
  alphas = [float(a) for a in config.alphas]
  kinds = list(summary)
  width = 0.8 / len(alphas)
  fig, ax = plt.subplots(figsize=(1.9 * len(kinds) + 3.2, 4.2))
  colours = plt.cm.coolwarm_r(np.linspace(0.0, 1.0, len(alphas)))
  for j, alpha in enumerate(alphas):
    x = np.arange(len(kinds)) + (j - (len(alphas) - 1) / 2) * width
    rows = [next(r for r in summary[k]["rows"] if r["alpha"] == alpha) for k in kinds]
    ax.bar(x, [100 * r["mean"] for r in rows], width, yerr=[100 * (r["sd"] or 0.0) for r in rows], capsize=3,
           color=colours[j], edgecolor="k", label=f"α = {alpha:g}")
    for xi, r in zip(x, rows):
      ax.scatter(np.full(len(r["acc_top1"]), xi), 100 * np.asarray(r["acc_top1"]), s=8, color="k", zorder=3)
    ax.scatter(x, [PAPER_TABLE8[k].get(alpha, np.nan) for k in kinds], marker="x", s=50, color="k", zorder=4,
               label="paper (Table 8)" if j == 0 else None)
  ax.set_xticks(np.arange(len(kinds)), [f"{NAMES[k]}\n({ACCESS[k]})" for k in kinds])
  ax.set_ylabel("Acc@1 (%)")
  ax.set_title(f"Low-resolution attacks on the {config.target.dataset.name} targets\n"
               f"({_count(len(config.seeds), 'seed')}; bars mean ± sd, dots seeds)", fontsize=10)
  ax.set_ylim(0, 103)  # Acc@1 is a percentage; a little room for the error bars' caps
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axes: never over a bar
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def samples_figure(config: ConfigDict, workdir: pathlib.Path, path: pathlib.Path) -> None:
  """A grid for the first seed: a real training image of each of the first attacked classes (columns), then one
  row per attack and α with its first result image of each class (the attacks' `images/class_XXXX.png`)."""
  plt = files.pyplot()
  seed = int(config.seeds[0])
  split = data.load_split(config.target.dataset, "train")
  real_images, real_labels = data.load_arrays(split)
  classes = layout.resolve_targets(config.lowres.targets, split.num_classes)[:MAX_SAMPLE_CLASSES]
  size = real_images.shape[1]

  def first_image(file: pathlib.Path) -> np.ndarray:  # white where an attack wrote no image for the class
    if not file.exists():
      return np.full((size, size, 3), 255, np.uint8)
    image = Image.open(file).convert("RGB")
    return np.asarray(image.crop((0, 0, image.height, image.height)).resize((size, size), Image.BILINEAR))

  rows = [("real (training)", [real_images[real_labels == c][0] for c in classes])]
  for kind in config.lowres.attacks:
    for alpha in config.alphas:
      images = attack_dir(experiment.cell_at(workdir, seed, float(alpha)), kind) / "images"
      rows.append((f"{NAMES[kind]}, α = {float(alpha):g}", [first_image(images / f"class_{int(c):04d}.png")
                                                            for c in classes]))
  grid = files.image_grid(np.stack([image for _, images in rows for image in images]), len(classes), fill=255)
  fig, ax = plt.subplots(figsize=(0.5 * len(classes) + 2.2, 0.5 * len(rows) + 0.8))
  ax.imshow(grid)
  ax.set_xticks((np.arange(len(classes)) + 0.5) * size, [str(c) for c in classes], fontsize=8)
  ax.set_yticks((np.arange(len(rows)) + 0.5) * size, [name for name, _ in rows], fontsize=8)
  ax.set_title(f"First result image per class (seed {seed})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def provenance_folders(config: ConfigDict, workdir: pathlib.Path) -> list[pathlib.Path]:
  """The run folders behind the report's rows: the evaluation model, the targets, GMI's GAN and each attack's
  runs (with KED-MI's GANs)."""
  kinds = tuple(config.lowres.attacks)
  folders = [workdir / "evaluation_model", gmi_gan_dir(workdir)]
  for cell in experiment.cells(config, workdir):
    folders += [cell.target_dir] + [attack_dir(cell, kind) for kind in kinds]
    folders += [kedmi_gan_dir(cell)] if "kedmi" in kinds else []
  return folders


def write_report(config: ConfigDict, workdir: pathlib.Path, timings: dict) -> dict:
  """Writes lowres_report.md, lowres_study.json and lowres.png from the evaluated cells; returns the summary."""
  summary = summarize(config, workdir)
  figure(config, summary, workdir / FIGURE_FILE)
  samples_figure(config, workdir, workdir / SAMPLES_FILE)
  n_classes = max(r["num_classes"] for r in summary.values())
  header = (f"# Low-resolution attacks and label smoothing: {config.target.dataset.name} "
            f"({_count(len(config.seeds), 'seed')} × {_count(n_classes, 'class')})\n\n"
            + provenance.summary_line(provenance_folders(config, workdir)))
  lines = report_lines(config, summary, header)
  lines += ["## Findings", "", *findings(config, summary), "", f"![Acc@1 per attack and α]({FIGURE_FILE})", "",
            f"![result images per attack and α]({SAMPLES_FILE})", "",
            "## Stage times (this invocation)", ""]
  lines += [f"- {name}: {seconds:.0f} s" for name, seconds in timings.items()] or ["- nothing was run"]
  files.atomic_write_text(workdir / REPORT_FILE, "\n".join(lines) + "\n")
  study = {"seeds": list(config.seeds), "alphas": [float(a) for a in config.alphas],
           "baseline_alpha": float(config.baseline_alpha), "paper_table8": PAPER_TABLE8,
           "attacks": {k: {**v, "rows": [{**r, "paired": None if r["paired"] is None else
                                         {x: y for x, y in r["paired"].items() if x != "classes"}}
                                        for r in v["rows"]]} for k, v in summary.items()},
           "timings": timings, "config": json.loads(config.to_json_best_effort())}
  files.atomic_write_text(workdir / STUDY_FILE, json.dumps(study, indent=2))
  return summary


def run_study(config: ConfigDict, workdir) -> dict:
  """Runs the missing stages in `workdir`, then writes the report; returns `summarize`'s dict."""
  config = resolve(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  files.atomic_write_text(workdir / "lowres_config.json", config.to_json_best_effort(indent=2))
  timings = chain.run_stages(stages(config, workdir), what="Low-resolution study")
  summary = write_report(config, workdir, timings)
  logging.info("Low-resolution study report: %s", workdir / REPORT_FILE)
  return summary


def main(argv):
  cli.start(argv)
  run_study(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Study config (configs/lowres_study.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Study directory (the α study's, to attack its targets).")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
