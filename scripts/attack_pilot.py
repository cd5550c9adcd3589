"""Pilot that fixes a study's attack protocol on α = 0 only, before any α ≠ 0 target is attacked.

    python scripts/attack_pilot.py --study_config=configs/numbers_study.py --study_dir=runs/numbers_study \\
        --seed=100 --steps=10,30,70 --learning_rates=0.005,0.02 --outdir=runs/numbers_pilot

Trains the study's target with α = 0 and a seed outside the study (so the study's own α = 0 cells are not the
ones the settings were chosen on), attacks it with the study's attack for every (stage-2 steps, learning rate)
(stage 1 is run once and shared: it does not depend on them), evaluates each with the study's evaluation model
(`--study_dir/evaluation_model`, trained if missing) and prints/writes `pilot.md` and `pilot.json`: Acc@1 of
the starting latents, of all optimised latents and of the final selection, per setting. The rule that picks
the setting is fixed here, before the numbers exist: among the settings whose final Acc@1 lies in
[--low, --high], the one nearest their midpoint; ties go to fewer steps, then to the smaller learning rate.
Copy the chosen values into the study config (its `PILOT` record).
"""
import pathlib
import shutil
import time

from absl import flags, logging
from ml_collections import config_flags

from jaxmia import cli, evaluate, experiment, train
from jaxmia.analysis import tables
from jaxmia.attack import run as attack_run

config_flags.DEFINE_config_file("study_config", None, "Study config (configs/*_study.py).", lock_config=True)
flags.DEFINE_string("study_dir", None, "The study's workdir (its evaluation model is reused or trained there).")
flags.DEFINE_integer("seed", 100, "Seed of the pilot's α = 0 target and attack (not one of the study's seeds).")
flags.DEFINE_list("steps", ["10", "30", "70"], "Stage-2 step counts to try.")
flags.DEFINE_list("learning_rates", ["0.005", "0.02"], "Stage-2 Adam learning rates to try.")
flags.DEFINE_float("low", 0.30, "Lower end of the admissible α = 0 Acc@1.")
flags.DEFINE_float("high", 0.80, "Upper end of the admissible α = 0 Acc@1.")
flags.DEFINE_string("outdir", "runs/pilot", "Where the pilot's target, attacks and outputs go.")
FLAGS = flags.FLAGS


def choose(rows: list[dict], low: float, high: float) -> dict | None:
  """The row picked by the module docstring's rule, or None if no setting lands in [low, high]."""
  inside = [r for r in rows if low <= r["acc_top1"] <= high]
  middle = (low + high) / 2
  return min(inside, key=lambda r: (abs(r["acc_top1"] - middle), r["num_steps"], r["learning_rate"]),
             default=None)


def main(argv):
  cli.start(argv)
  config = experiment.resolve(FLAGS.study_config)
  if FLAGS.seed in tuple(config.seeds):
    raise flags.ValidationError(f"--seed={FLAGS.seed} is one of the study's seeds {tuple(config.seeds)}; the pilot "
                         "must use a target the study does not report.")
  outdir, study_dir = pathlib.Path(FLAGS.outdir), pathlib.Path(FLAGS.study_dir)
  cell = experiment.Cell(FLAGS.seed, 0.0, outdir)
  evaluation_model = study_dir / "evaluation_model" / "model"
  if not (evaluation_model / "jaxmia.json").exists():
    train.train_and_evaluate(config.evaluation_model, study_dir / "evaluation_model")
  if not (cell.target_dir / "model" / "jaxmia.json").exists():
    train.train_and_evaluate(experiment.target_config(config, cell), cell.target_dir)
  prior = experiment.prior_path(config, study_dir)
  eval_config = experiment.evaluate_config(config, study_dir, evaluation_model)
  eval_config.knowledge_extraction.enabled = False  # only accuracies are needed to choose
  rows, shared_stage1 = [], None
  for steps in map(int, FLAGS.steps):
    for lr in map(float, FLAGS.learning_rates):
      run_dir = outdir / f"attack_steps{steps}_lr{lr:g}"
      attack = experiment.attack_config(config, cell, prior)
      attack.attack.num_steps, attack.attack.learning_rate = steps, lr
      run_dir.mkdir(parents=True, exist_ok=True)
      if shared_stage1 is not None and not (run_dir / "initial.npz").exists():
        shutil.copy(shared_stage1, run_dir / "initial.npz")
      t0 = time.monotonic()
      attack_run.run_attack(attack, run_dir)
      seconds = time.monotonic() - t0
      shared_stage1 = shared_stage1 or run_dir / "initial.npz"
      result = evaluate.evaluate_attack(eval_config, run_dir)
      details = result["details"]
      rows.append({"num_steps": steps, "learning_rate": lr, "acc_top1": result["metrics"]["acc_top1"],
                   "acc_top1_initial": details.get("acc_top1_initial"),
                   "acc_top1_all_optimized": details.get("acc_top1_all_optimized"), "attack_seconds": seconds})
      logging.info("Pilot: %s", rows[-1])
  chosen = choose(rows, FLAGS.low, FLAGS.high)
  pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
  table = tables.markdown_table(
      ["stage-2 steps", "learning rate", "Acc@1 start (%)", "Acc@1 all optimised (%)", "Acc@1 final (%)",
       "attack time (s)"],
      [[r["num_steps"], f"{r['learning_rate']:g}", pct(r["acc_top1_initial"]), pct(r["acc_top1_all_optimized"]),
        pct(r["acc_top1"]), f"{r['attack_seconds']:.0f}"] for r in rows])
  verdict = (f"Chosen: {chosen['num_steps']} steps, learning rate {chosen['learning_rate']:g} (Acc@1 "
             f"{pct(chosen['acc_top1'])} %)." if chosen else
             f"No setting puts α = 0 Acc@1 in [{100 * FLAGS.low:.0f}, {100 * FLAGS.high:.0f}] %: widen the grid.")
  text = (f"# Attack pilot (α = 0, seed {FLAGS.seed})\n\nRule: final Acc@1 in [{100 * FLAGS.low:.0f}, "
          f"{100 * FLAGS.high:.0f}] %, nearest the midpoint; ties to fewer steps, then the smaller learning "
          f"rate.\n\n{table}\n{verdict}\n")
  tables.write_outputs(outdir, "pilot", {"rows": rows, "chosen": chosen, "seed": FLAGS.seed,
                                         "band": [FLAGS.low, FLAGS.high]}, text)
  print(text)


if __name__ == "__main__":
  flags.mark_flags_as_required(["study_config", "study_dir"])
  cli.run(main)
