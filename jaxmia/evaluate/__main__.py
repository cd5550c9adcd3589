"""`python -m jaxmia.evaluate --config=configs/evaluate_faces.py --run_dir=runs/attack_x [--out_dir=DIR]`.

Evaluates a finished attack run; see `jaxmia.evaluate` for the metrics and the files it writes. PPA's own
result file instead of a run (its networks converted with `jaxmia.convert`; the report goes to
`results/optimized_w_selected_<id>/evaluation/` unless `--out_dir` says otherwise):

    python -m jaxmia.evaluate --config=configs/evaluate_faces.py --ppa_results=results/optimized_w_selected_<id>.pt \
        --ppa_targets=all --config.generator=converted_weights/ffhq --config.target=converted_weights/target
"""
from absl import app, flags
from ml_collections import config_flags

from jaxmia import cli
from jaxmia.evaluate.attack_run import load_ppa_results
from jaxmia.evaluate.evaluation import evaluate_attack

config_flags.DEFINE_config_file("config", None, "Evaluation config (configs/evaluate_*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("run_dir", None, "Attack run directory (written by python -m jaxmia.attack).")
flags.DEFINE_string("ppa_results", None, "Instead of --run_dir: PPA's optimized_w_selected_<run id>.pt.")
flags.DEFINE_string("ppa_targets", "all", "With --ppa_results: PPA's attack.targets ('all', N or '[0, 7, 42]').")
flags.DEFINE_integer("ppa_center_crop", 0, "With --ppa_results: PPA's attack_center_crop (0 = 800/1024 of the "
                     "generator's resolution, PPA's FFHQ setting).")
flags.DEFINE_integer("ppa_resize", 224, "With --ppa_results: PPA's attack_resize (the target's input size).")
flags.DEFINE_string("out_dir", None, "Where to write the report; default <run_dir>/evaluation.")
flags.mark_flags_as_required(["config"])
flags.mark_flags_as_mutual_exclusive(["run_dir", "ppa_results"], required=True)


def main(argv):
  cli.start(argv)
  config, run = flags.FLAGS.config, flags.FLAGS.run_dir
  if flags.FLAGS.ppa_results:
    run = load_ppa_results(flags.FLAGS.ppa_results, targets=flags.FLAGS.ppa_targets, generator=config.generator,
                           target=config.target, center_crop=flags.FLAGS.ppa_center_crop,
                           resize=flags.FLAGS.ppa_resize)
  evaluate_attack(config, run, flags.FLAGS.out_dir)


if __name__ == "__main__":
  app.run(main)
