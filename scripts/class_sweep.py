"""Label smoothing's effect on PPA against the number of classes: the numbers study at 10, 100 and 1,000 classes.

    python scripts/class_sweep.py --digits=1,2,3 --workdir=runs/class_sweep

Runs `python -m jaxmia.experiment --config=configs/numbers_study.py:<k>` for every k in --digits (each in
`--workdir/k<k>`, resuming), with the same protocol (the settings the α = 0 pilot fixed) and, for a k whose
prior is not shipped, `retrain_prior=True` (the digit StyleGAN2 of configs/gan_digits.py trained in the
study's workdir, written k digits at a time). Writes `class_sweep.json`/`.md` (Δ Acc@1 of each α to α = 0 with
its hierarchical bootstrap interval, per number of classes) and `class_sweep.png` (the same as points with
interval bars against the number of classes).
--quick runs every study's quick form (a pipeline check).
"""
import json
import pathlib

from absl import app, flags

from jaxmia import chain, cli, experiment, files
from jaxmia.analysis import tables
from jaxmia.config import load_file

numbers_study = load_file(pathlib.Path(__file__).resolve().parents[1] / "configs" / "numbers_study.py")

flags.DEFINE_list("digits", ["1", "2", "3"], "Numbers of digits k (10**k classes).")
flags.DEFINE_string("workdir", "runs/class_sweep", "Directory of the studies and the outputs.")
flags.DEFINE_bool("quick", False, "Run each study's quick form (a pipeline check, not a result).")
FLAGS = flags.FLAGS


def study_config(k: str):
  config = numbers_study.get_config(k)
  config.quick = FLAGS.quick
  if not chain.exported_model_info(pathlib.Path(config.prior)).exists():
    config.retrain_prior = True
  return config


def plot(rows: list[dict], path: pathlib.Path) -> None:
  plt = files.pyplot()
  fig, ax = plt.subplots(figsize=(5.0, 3.6))
  alphas = sorted({r["alpha"] for r in rows}, reverse=True)
  for i, alpha in enumerate(alphas):
    points = [r for r in rows if r["alpha"] == alpha]
    x = [r["num_classes"] * (1.0 + 0.06 * (i - 0.5)) for r in points]  # side by side on the log axis
    y = [100 * r["mean"] for r in points]
    err = [[100 * (r["mean"] - r["low"]) for r in points], [100 * (r["high"] - r["mean"]) for r in points]]
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=4, label=f"α = {alpha:g}",
                color="tab:red" if alpha > 0 else "tab:blue")
  ax.axhline(0.0, color="k", linewidth=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("number of classes")
  ax.set_ylabel("Δ Acc@1 to α = 0 (pp), 95% CI")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  cli.start(argv)
  workdir = pathlib.Path(FLAGS.workdir)
  rows = []
  for k in FLAGS.digits:
    study = experiment.run_study(study_config(k), workdir / f"k{k}")
    for alpha, diff in study["paired_differences"].items():
      rows.append({"digits": int(k), "num_classes": 10 ** int(k), "alpha": float(alpha), "mean": diff["mean"],
                   "low": diff["low"], "high": diff["high"], "num_seeds": diff["num_seeds"],
                   "num_attacked": diff["num_classes"]})
  plot(rows, workdir / "class_sweep.png")
  table = tables.markdown_table(
      ["classes", "attacked", "seeds", "α", "Δ Acc@1 (pp)", "95% CI"],
      [[r["num_classes"], r["num_attacked"], r["num_seeds"], f"{r['alpha']:g}", f"{100 * r['mean']:+.1f}",
        f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"] for r in rows])
  tables.write_outputs(workdir, "class_sweep", {"rows": rows, "quick": FLAGS.quick},
                       "# Δ Acc@1 to α = 0 against the number of classes\n\n" + table +
                       "\n![class sweep](class_sweep.png)\n")
  print(table)
  print(json.dumps(rows, indent=1))


if __name__ == "__main__":
  app.run(main)
