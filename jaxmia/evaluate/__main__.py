"""`python -m jaxmia.evaluate --config=configs/evaluate_faces.py --run_dir=runs/attack_x [--out_dir=DIR]`.

Evaluates a finished attack run; see `jaxmia.evaluate` for the metrics and the files it writes.
"""
from absl import app, flags
from ml_collections import config_flags

from jaxmia import cli
from jaxmia.evaluate.evaluation import evaluate_attack

config_flags.DEFINE_config_file("config", None, "Evaluation config (configs/evaluate_*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("run_dir", None, "Attack run directory (written by python -m jaxmia.attack).")
flags.DEFINE_string("out_dir", None, "Where to write the report; default <run_dir>/evaluation.")
flags.mark_flags_as_required(["config", "run_dir"])


def main(argv):
  cli.start(argv)
  evaluate_attack(flags.FLAGS.config, flags.FLAGS.run_dir, flags.FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)
