"""Writes the StyleGAN2 prior of k-digit numbers made from a digit prior (`jaxmia.models.number_generator`).

    python scripts/number_prior.py --digit_prior=converted_weights/mnist32_stylegan2 --num_digits=2 \\
        --output=converted_weights/numbers2_stylegan2

The folder holds the digit prior's weights and the layout (`kind` number_generator), so the attack, the
evaluation and `scripts/prior_coverage.py` load it as any other generator.
"""
from absl import flags

from jaxmia import cli, model_store

flags.DEFINE_string("digit_prior", "converted_weights/mnist32_stylegan2", "Weights folder of the digit StyleGAN2.")
flags.DEFINE_integer("num_digits", 2, "Digits per number (10**num_digits classes).")
flags.DEFINE_integer("image_size", 32, "Side of the number images (the numbers_embedded builder's image_size).")
flags.DEFINE_string("output", None, "Output weights folder.", required=True)
flags.DEFINE_bool("overwrite", False, "Replace an existing output folder.")
FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv)
  folder = model_store.save_number_prior(FLAGS.digit_prior, FLAGS.output, num_digits=FLAGS.num_digits,
                                         image_size=FLAGS.image_size, overwrite=FLAGS.overwrite)
  print(f"wrote {folder}")


if __name__ == "__main__":
  cli.run(main)
