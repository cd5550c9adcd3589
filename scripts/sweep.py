"""Fig. 2 of the label-smoothing paper: attack advantage of label smoothing α over α = 0 per training-set size.

    python scripts/sweep.py --train_config=configs/faces.py --attack_config=configs/attack_facescrub_ffhq.py \\
        --eval_config=configs/evaluate_faces.py --alphas=-0.05,0,0.1 --samples_per_class=10,25,50,all \\
        --outdir=runs/sweep

For every α and number of training images per class (`dataset.samples_per_class`; `all` = the full set):
trains a target (`jaxmia.train`), attacks it (`jaxmia.attack`) and evaluates the attack (`jaxmia.evaluate`),
each resuming from its directory under --outdir. Writes `sweep.json`/`.md` (every run's metrics and the
differences to α = 0 of the same size) and `sweep.png` (advantage in Acc@1, δ and ξ_train per size, one line
per α). Override settings with `--train_config.num_epochs=...`, `--attack_config....`, `--eval_config....`.
"""
import math
import pathlib

from absl import flags
from ml_collections import config_flags

from jaxmia import cli, files
from jaxmia.analysis import sweep, tables

config_flags.DEFINE_config_file("train_config", None, "Training config (configs/*.py[:variant]).", lock_config=True)
config_flags.DEFINE_config_file("attack_config", None, "Attack config (configs/attack_*.py[:variant]).",
                                lock_config=True)
config_flags.DEFINE_config_file("eval_config", None, "Evaluation config (configs/evaluate_*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_list("alphas", ["-0.05", "0", "0.1"], "Label smoothing factors (must include 0, the reference).")
flags.DEFINE_list("samples_per_class", ["all"], "Training images per class ('all': the whole training set).")
flags.DEFINE_string("outdir", "runs/sweep", "Directory of all runs and the outputs.")
FLAGS = flags.FLAGS

# (metric, axis label, scale): Acc@1 and ξ in percentage points.
PANELS = (("acc_top1", "Δ Acc@1 (pp)", 100.0), ("delta", "Δ δ (feature distance)", 1.0),
          ("xi_train", "Δ ξ_train (pp)", 100.0))


def _signed(value: float) -> str:
  return "n/a" if math.isnan(value) else f"{value:+.4f}"


def delta_metric(records) -> str:
  """δ_face when the runs have it (faces), else δ_eval."""
  return "delta_face" if any(r["metrics"].get("delta_face") is not None for r in records) else "delta_eval"


def plot(records, sizes, path: pathlib.Path):
  plt = files.pyplot()
  fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
  positions = range(len(sizes))
  for ax, (metric, label, scale) in zip(axes, PANELS):
    metric = delta_metric(records) if metric == "delta" else metric
    table = sweep.advantages(records, metric)
    alphas = sorted({a for row in table.values() for a in row})
    for alpha in alphas:
      ax.plot(positions, [scale * table.get(s, {}).get(alpha, float("nan")) for s in sizes], "o-",
              label=f"α = {alpha:g}")
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_xticks(list(positions), ["all" if s is None else str(s) for s in sizes])
    ax.set_xlabel("training samples per class")
    ax.set_ylabel(label.replace("δ", "δ_face" if metric == "delta_face" else "δ_eval"))
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def main(argv):
  cli.start(argv)
  try:
    alphas = [float(a) for a in FLAGS.alphas]
    sizes = [None if s == "all" else int(s) for s in FLAGS.samples_per_class]
  except ValueError as e:
    raise flags.ValidationError(f"--alphas takes numbers and --samples_per_class whole numbers or 'all' ({e}).") \
        from e
  if 0.0 not in alphas:
    raise flags.ValidationError("--alphas must include 0, the reference of the advantages.")
  outdir = pathlib.Path(FLAGS.outdir)
  records = sweep.run_sweep(FLAGS.train_config, FLAGS.attack_config, FLAGS.eval_config, alphas, sizes, outdir)
  plot(records, sizes, outdir / "sweep.png")
  numbers = {"runs": records, "advantages": {}}
  text = "# α sweep (Fig. 2)\n\nDifference to α = 0 of the same training-set size.\n"
  for metric in ("acc_top1", delta_metric(records), "xi_train"):
    table = sweep.advantages(records, metric)
    numbers["advantages"][metric] = {("all" if s is None else str(s)): {f"{a:g}": v for a, v in row.items()}
                                     for s, row in table.items()}
    shown = [a for a in alphas if a != 0.0]
    text += f"\n{metric}:\n\n" + tables.markdown_table(
        ["samples per class", *[f"α = {a:g}" for a in shown]],
        [["all" if s is None else s, *[_signed(row.get(a, float("nan"))) for a in shown]]
         for s, row in table.items()])
  tables.write_outputs(outdir, "sweep", numbers, text)
  print(text)


if __name__ == "__main__":
  flags.mark_flags_as_required(["train_config", "attack_config", "eval_config"])
  cli.run(main)
