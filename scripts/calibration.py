"""Calibration of targets trained with label smoothing α, over seeds: test accuracy, ECE, mean confidence and
reliability diagrams.

    python scripts/calibration.py --train_config=configs/digits.py:overfit --outdir=runs/calibration
    python scripts/calibration.py --train_config=configs/faces.py --alphas=0.1,0,-0.05 --seeds=0 --outdir=...

Trains one target per (α, seed) (`jaxmia.train`, resumed or reused from `--outdir/<run>`), measures its
exported model on the test split and writes `calibration.json`/`.md` (every run and mean ± sd per α) and
`reliability.png` (accuracy against confidence per α, bins pooled over seeds; bars below the diagonal are
over-confident). Override training settings with `--train_config.num_epochs=...`.
"""
import pathlib

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxmia import cli, files
from jaxmia.analysis import calibration, tables

config_flags.DEFINE_config_file("train_config", None, "Training config (configs/*.py[:variant]).", lock_config=True)
flags.DEFINE_list("alphas", ["0.1", "0", "-0.05"], "Label smoothing factors.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (config.seed) per α.")
flags.DEFINE_integer("num_bins", 10, "Equal-width confidence bins of the ECE and the diagrams.")
flags.DEFINE_string("outdir", "runs/calibration", "Directory of all runs and the outputs.")
FLAGS = flags.FLAGS


def plot(summary: dict, path: pathlib.Path):
  plt = files.pyplot()
  fig, axes = plt.subplots(1, len(summary), figsize=(3.6 * len(summary), 3.6), squeeze=False)
  for ax, (alpha, stats) in zip(axes[0], summary.items()):
    bins = stats["bins"]
    num_bins = len(bins["count"])
    centres = (np.arange(num_bins) + 0.5) / num_bins
    ax.bar(centres, np.nan_to_num(bins["accuracy"]), width=1.0 / num_bins, edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    share = np.asarray(bins["count"]) / max(np.sum(bins["count"]), 1)
    ax.plot(centres, share, "o-", color="tab:red", markersize=3, label="share of samples")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ece = stats["ece"]
    ax.set_title(f"α = {alpha:g}: ECE {100 * ece['mean']:.1f} ± {100 * ece['sd']:.1f} %", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def markdown(records, summary) -> str:
  percent = lambda stats: tables.format_mean_sd({**stats, "mean": 100 * stats["mean"], "sd": 100 * stats["sd"]}, 1)
  seeds = sorted({r["seed"] for r in records})
  text = (f"# Calibration per α ({len(seeds)} seed{'s' * (len(seeds) > 1)}: {', '.join(map(str, seeds))})\n\n"
          "Mean ± sd over seeds, in %. Confidence is the mean top softmax probability: above the test accuracy "
          "means over-confident.\n\n")
  text += tables.markdown_table(
      ["α", "test accuracy", "ECE", "confidence"],
      [[f"{alpha:g}", percent(s["test_accuracy"]), percent(s["ece"]), percent(s["confidence"])]
       for alpha, s in summary.items()])
  text += "\nRuns:\n\n" + tables.markdown_table(
      ["run", "test accuracy", "ECE", "confidence"],
      [[r["name"], f"{100 * r['test_accuracy']:.1f}", f"{100 * r['ece']:.2f}", f"{100 * r['confidence']:.1f}"]
       for r in records])
  return text


def main(argv):
  cli.start(argv)
  outdir = pathlib.Path(FLAGS.outdir)
  records = calibration.run_calibration(FLAGS.train_config, [float(a) for a in FLAGS.alphas],
                                        [int(s) for s in FLAGS.seeds], outdir, num_bins=FLAGS.num_bins)
  summary = calibration.summarize(records)
  plot(summary, outdir / "reliability.png")
  text = markdown(records, summary)
  tables.write_outputs(outdir, "calibration", {"runs": records, "summary": {f"{a:g}": s for a, s in summary.items()}},
                       text)
  print(text)


if __name__ == "__main__":
  flags.mark_flags_as_required(["train_config"])
  app.run(main)
