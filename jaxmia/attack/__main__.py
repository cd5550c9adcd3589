"""`python -m jaxmia.attack --config=configs/attack_facescrub_ffhq.py --workdir=runs/attack_facescrub`.

Runs (or resumes, with the same --workdir) a Plug & Play Attack; see `jaxmia.attack.run` for the outputs.
"""
from absl import app, flags
from ml_collections import config_flags

from jaxmia import cli
from jaxmia.attack.run import run_attack

config_flags.DEFINE_config_file("config", None, "Attack config file (ml_collections).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the attack's results; rerun with it to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.start(argv)
  run_attack(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
