"""Tables 5-7 of the label-smoothing paper: the attack with one stage run against a model of another α.

    python scripts/stage_ablation.py --attack_config=configs/attack_facescrub_ffhq.py \\
        --eval_config=configs/evaluate_faces.py --outdir=runs/stage_ablation \\
        --model=runs/faces_ls-0.05/model --label="α=-0.05" --model=runs/faces/model --label="α=0" \\
        --model=runs/faces_ls0.1/model --label="α=0.1"

Every model alone, and for each stage (1 sampling, 2 optimisation, 3 selection; --stages) each model with that
stage run against each other model, all from one pool of latents (`jaxmia.analysis.ablation`). Each combination
is an attack run directory under --outdir, evaluated with `jaxmia.evaluate` (both resume). Writes
`stage_ablation.json`/`.md`: per swapped stage and metric a table, rows = the model of the other two stages,
columns = the model of the swapped stage (the diagonal is the plain attack). Override settings with
`--attack_config.attack.num_steps=...` or `--eval_config....`.
"""
import pathlib

from absl import flags
from ml_collections import config_flags

from jaxmia import cli, evaluate, parallel, report
from jaxmia.analysis import ablation, tables

config_flags.DEFINE_config_file("attack_config", None, "Attack config (configs/attack_*.py[:variant]).",
                                lock_config=True)
config_flags.DEFINE_config_file("eval_config", None, "Evaluation config (configs/evaluate_*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_multi_string("model", None, "Target model folder (repeat, one per α).")
flags.DEFINE_multi_string("label", None, "Label of each --model (default: m0, m1, ...).")
flags.DEFINE_list("stages", ["1", "2", "3"], "Stages to swap: 1 sampling, 2 optimization, 3 selection.")
flags.DEFINE_list("metrics", ["acc_top1", "acc_top5", "delta_face", "delta_eval", "fid"],
                  "Report columns (jaxmia.report) shown in the tables.")
flags.DEFINE_string("outdir", "runs/stage_ablation", "Directory of the combinations' attack runs and the tables.")
FLAGS = flags.FLAGS


def ablation_tables(results: dict, labels: list[str], stages: list[int], metric_keys: list[str]) -> str:
  columns = {c.key: c for c in report.COLUMNS}
  text = ""
  for stage in stages:
    text += f"\n## Stage {stage} ({ablation.STAGES[stage - 1]}) with another model\n"
    for key in metric_keys:
      column = columns[key]
      rows = []
      for main in range(len(labels)):
        cells = []
        for other in range(len(labels)):
          combo = [main] * 3
          combo[stage - 1] = other
          cells.append(report.format_value(results[tuple(combo)], column))
        rows.append([labels[main], *cells])
      text += f"\n{column.header}" + (" (%)" if column.percent else "") + ":\n\n"
      text += tables.markdown_table([f"other stages \\ stage {stage}", *labels], rows)
  return text


def main(argv):
  cli.start(argv)
  labels = FLAGS.label or [f"m{i}" for i in range(len(FLAGS.model))]
  if len(labels) != len(FLAGS.model):
    raise flags.ValidationError(f"give one --label per --model ({len(FLAGS.model)} models, {len(labels)} labels).")
  unknown = set(FLAGS.metrics) - {c.key for c in report.COLUMNS}
  if unknown:
    raise flags.ValidationError(f"unknown --metrics {sorted(unknown)}; choose from {[c.key for c in report.COLUMNS]}.")
  stages = [int(s) for s in FLAGS.stages]
  mesh = parallel.make_mesh()
  outdir = pathlib.Path(FLAGS.outdir)
  run_dirs = ablation.run_stage_ablation(FLAGS.attack_config, FLAGS.model, outdir, stages=stages, mesh=mesh)
  results = {}
  for combo, run_dir in run_dirs.items():
    try:
      results[combo] = report.load_report(run_dir)
    except FileNotFoundError:
      results[combo] = evaluate.evaluate_attack(FLAGS.eval_config, run_dir, mesh=mesh)
  numbers = {"labels": labels, "models": FLAGS.model, "runs": [
      {"stage_models": [labels[m] for m in combo], "run_dir": str(run_dirs[combo]),
       "metrics": results[combo]["metrics"], "unavailable": results[combo].get("unavailable", {})}
      for combo in run_dirs]}
  text = ("# Stage ablation (Tables 5-7)\n\nModels: "
          + ", ".join(f"{label} = {m}" for label, m in zip(labels, FLAGS.model))
          + "\n" + ablation_tables(results, labels, stages, FLAGS.metrics))
  tables.write_outputs(outdir, "stage_ablation", numbers, text)
  print(text)


if __name__ == "__main__":
  flags.mark_flags_as_required(["attack_config", "eval_config", "model"])
  cli.run(main)
