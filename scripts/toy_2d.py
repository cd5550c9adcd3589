"""Fig. 1 of the label-smoothing paper: a 2-D toy classifier per α and a gradient attack's path to class 2.

    python scripts/toy_2d.py --outdir=runs/toy_2d                # 5 seeds, α in {0, 0.05, -0.05}
    python scripts/toy_2d.py --num_seeds=1 --alphas=0,0.1,-0.1

Writes to `--outdir`: `toy_2d.json` and `toy_2d.md` (attack steps and distance to the nearest class-2 training
point, mean ± sd over seeds beside the paper's numbers, and whether the paper's ordering holds),
`toy_2d_alpha_<α>.png` (confidence map and attack path of the first seed, one per α) and
`toy_2d_all_seeds.png` (every seed and α). All randomness comes from `--seed`; the settings are the paper's
(`jaxmia.analysis.toy.ToySettings`).
"""
import dataclasses
import pathlib

import numpy as np
from absl import flags

from jaxmia import cli, files
from jaxmia.analysis import tables, toy


def _floats(values) -> bool:
  try:
    return all(np.isfinite(float(v)) for v in values) and len(values) > 0
  except ValueError:
    return False


flags.DEFINE_string("outdir", "runs/toy_2d", "Output directory.")
flags.DEFINE_integer("seed", 0, "Root seed of data and weights (per repetition s: fold_in(seed, s)).")
flags.DEFINE_integer("num_seeds", 5, "Independent repetitions.", lower_bound=1)
flags.DEFINE_list("alphas", ["0", "0.05", "-0.05"], "Label smoothing factors, comma-separated.")
flags.register_validator("alphas", _floats, "--alphas must be a comma-separated list of numbers")
flags.DEFINE_integer("train_steps", toy.ToySettings.train_steps, "Training steps of each toy classifier.",
                     lower_bound=1)
flags.DEFINE_integer("attack_max_steps", toy.ToySettings.attack_max_steps, "Step limit of the attack.",
                     lower_bound=1)
flags.DEFINE_integer("grid_size", 100, "Confidence map resolution.", lower_bound=2)
FLAGS = flags.FLAGS

CLASS_STYLES = (dict(c="#69c765", marker="o", s=20), dict(c="#5cd0f7", marker="s", s=20),
                dict(c="#fcc947", marker="p", s=40))


def draw_panel(ax, result: toy.ToyResult, seed_index: int, alpha_index: int, alpha: float, xs: np.ndarray):
  steps = int(result.steps[seed_index, alpha_index])
  contour = ax.contourf(xs, xs, result.confidence_maps[seed_index, alpha_index], levels=np.arange(0.0, 1.01, 0.05),
                        cmap="RdPu", alpha=0.7)
  points = result.points[seed_index]
  for label, style in enumerate(CLASS_STYLES):
    ax.scatter(*points[result.labels == label].T, edgecolors="k", linewidths=0.5, **style)
  path = result.paths[seed_index, alpha_index, :steps + 1]
  ax.plot(path[:, 0], path[:, 1], "-", c="yellow", linewidth=3.0)
  ax.plot(*path[-1], "x", c="k", markersize=8)
  ax.set_xlim(xs[0], xs[-1])
  ax.set_ylim(xs[0], xs[-1])
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(f"α = {alpha:g}: {steps} steps\nclosest class-2 sample {result.distance[seed_index, alpha_index]:.2f}",
               fontsize=10)
  return contour


def plot(result: toy.ToyResult, alphas, xs, outdir):
  plt = files.pyplot()
  for j, alpha in enumerate(alphas):
    fig, ax = plt.subplots(figsize=(5.5, 5))
    fig.colorbar(draw_panel(ax, result, 0, j, alpha, xs), ax=ax, ticks=[0.0, 0.25, 0.5, 0.75, 1.0],
                 label="max softmax")
    fig.savefig(outdir / f"toy_2d_alpha_{alpha:g}.png", dpi=150, bbox_inches="tight")
    plt.close(fig)
  num_seeds = result.steps.shape[0]
  fig, axes = plt.subplots(num_seeds, len(alphas), figsize=(3.2 * len(alphas), 3.2 * num_seeds), squeeze=False)
  for s in range(num_seeds):
    for j, alpha in enumerate(alphas):
      draw_panel(axes[s, j], result, s, j, alpha, xs)
    axes[s, 0].set_ylabel(f"seed {s}")
  fig.tight_layout()
  fig.savefig(outdir / "toy_2d_all_seeds.png", dpi=100)
  plt.close(fig)


def markdown(summary: dict, num_seeds: int, seed: int) -> str:
  rows = []
  for e in summary["per_alpha"]:
    rows.append([f"{e['alpha']:g}", tables.format_mean_sd(e["steps"], 0), e.get("paper_steps", "–"),
                 tables.format_mean_sd(e["distance"]), e.get("paper_distance", "–"),
                 f"{e['num_reached']}/{e['num_seeds']}", tables.format_mean_sd(e["steps_reached"], 0),
                 tables.format_mean_sd(e["distance_reached"])])
  text = (f"# Toy 2-D experiment (Fig. 1)\n\n{num_seeds} seeds from --seed {seed}; mean ± sd over "
          "seeds. 'reached': attacks whose target softmax passed the threshold within the step limit (the others "
          "stall where the model is flat and count with the step limit).\n\n")
  text += tables.markdown_table(
      ["α", "steps", "paper steps", "distance", "paper distance", "reached", "steps (reached)",
       "distance (reached)"], rows)
  if "paper_ordering" in summary:
    text += "\nPaper's ordering (steps −0.05 < 0 < 0.05; distance 0.05 < 0 < −0.05):\n\n"
    text += "".join(f"- {k}: {v}\n" for k, v in summary["paper_ordering"].items())
  return text


def main(argv):
  cli.start(argv)
  alphas = [float(a) for a in FLAGS.alphas]
  outdir = pathlib.Path(FLAGS.outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  settings = dataclasses.replace(toy.ToySettings(), train_steps=FLAGS.train_steps,
                                 attack_max_steps=FLAGS.attack_max_steps)
  result = toy.run_toy(FLAGS.seed, FLAGS.num_seeds, alphas, settings, grid_size=FLAGS.grid_size)
  summary = toy.summarize_toy(result, alphas, settings.attack_threshold)
  summary["settings"] = dataclasses.asdict(settings) | {"seed": FLAGS.seed, "num_seeds": FLAGS.num_seeds}
  xs, _ = toy.confidence_grid(15.0, FLAGS.grid_size)
  plot(result, alphas, xs, outdir)
  text = markdown(summary, FLAGS.num_seeds, FLAGS.seed)
  tables.write_outputs(outdir, "toy_2d", summary, text)
  print(text)


if __name__ == "__main__":
  cli.run(main)
