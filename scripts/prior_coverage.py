"""Class coverage of a StyleGAN2 prior, labelled by a classifier (e.g. a study's evaluation model).

    python scripts/prior_coverage.py --prior=converted_weights/numbers2_stylegan2 \\
        --classifier=runs/numbers_study/evaluation_model/model --num_samples=10000 --outdir=docs/figures/numbers_prior

Writes `coverage.json` (per-class counts and mean confidence, the classes never and rarely drawn),
`coverage.md` and `coverage.png` (samples per class, sorted, with the uniform share marked) and
`samples.png` (64 prior samples with the classifier's label).
"""
import pathlib

from absl import app, flags
import jax
import numpy as np

from jaxmia import cli, files, generate, model_store
from jaxmia.analysis import coverage, tables

flags.DEFINE_string("prior", None, "Weights folder of the StyleGAN2 generator.")
flags.DEFINE_string("classifier", None, "Weights folder of the labelling classifier.")
flags.DEFINE_integer("num_samples", 10000, "Prior samples to label.")
flags.DEFINE_integer("seed", 0, "Seed of the latents.")
flags.DEFINE_float("truncation_psi", 1.0, "StyleGAN2 truncation of the samples (the attack's stage 1 setting).")
flags.DEFINE_integer("image_size", 0, "Classifier input size (0: the generator's resolution).")
flags.DEFINE_string("outdir", "runs/prior_coverage", "Output directory.")
FLAGS = flags.FLAGS


def main(argv):
  cli.start(argv)
  generator, generator_variables = model_store.load_model(FLAGS.prior)
  classifier, classifier_variables = model_store.load_model(FLAGS.classifier)
  image_size = FLAGS.image_size or generator.img_resolution
  num_classes = jax.eval_shape(lambda v: classifier.apply(v, np.zeros((1, image_size, image_size, 3), np.float32)),
                               classifier_variables).shape[-1]
  hist = coverage.prior_class_histogram(generator, generator_variables, classifier, classifier_variables,
                                        num_samples=FLAGS.num_samples, num_classes=num_classes, seed=FLAGS.seed,
                                        image_size=image_size, truncation_psi=FLAGS.truncation_psi)
  summary = coverage.coverage_summary(hist["counts"])
  outdir = pathlib.Path(FLAGS.outdir)
  outdir.mkdir(parents=True, exist_ok=True)

  plt = files.pyplot()
  order = np.argsort(-hist["counts"], kind="stable")
  fig, ax = plt.subplots(figsize=(max(6.0, 0.09 * num_classes + 2), 3.2))
  ax.bar(np.arange(num_classes), hist["counts"][order], width=0.9, color="tab:blue")
  ax.axhline(FLAGS.num_samples / num_classes, color="k", linestyle="--", linewidth=0.8, label="uniform share")
  step = max(1, num_classes // 25)
  ax.set_xticks(np.arange(0, num_classes, step), [str(c) for c in order[::step]], fontsize=7, rotation=90)
  ax.set_xlabel("class (sorted by count)")
  ax.set_ylabel("prior samples")
  ax.set_title(f"{FLAGS.num_samples} prior samples (ψ = {FLAGS.truncation_psi:g}) labelled by the classifier: "
               f"{len(summary['never_drawn'])} of {num_classes} classes never drawn", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(outdir / "coverage.png", dpi=120)
  plt.close(fig)

  images = generate.generate_images(generator, generator_variables, jax.random.key(FLAGS.seed), 64,
                                    truncation_psi=FLAGS.truncation_psi, batch_size=64)
  files.save_png(files.image_grid(np.clip(images, -1, 1), columns=8), outdir / "samples.png")

  numbers = {"prior": FLAGS.prior, "classifier": FLAGS.classifier, "seed": FLAGS.seed,
             "truncation_psi": FLAGS.truncation_psi, **summary, "counts": hist["counts"].tolist(),
             "mean_confidence": hist["confidence"].tolist()}
  text = (f"# Class coverage of `{FLAGS.prior}`\n\n{FLAGS.num_samples} samples (seed {FLAGS.seed}, ψ = "
          f"{FLAGS.truncation_psi:g}) labelled by `{FLAGS.classifier}`.\n\n"
          f"- never drawn: {len(summary['never_drawn'])} of {num_classes} classes {summary['never_drawn']}\n"
          f"- drawn rarely (< 10% of the uniform share of {FLAGS.num_samples / num_classes:g}): "
          f"{len(summary['rarely_drawn'])} classes {summary['rarely_drawn']}\n"
          f"- normalised entropy of the class histogram: {summary['normalised_entropy']:.3f} (1 = uniform)\n"
          f"- most drawn: " + ", ".join(f"{c} ({hist['counts'][c]})" for c in order[:10]) + "\n\n"
          "![coverage](coverage.png)\n\n![samples](samples.png)\n")
  tables.write_outputs(outdir, "coverage", numbers, text)
  print(text)


if __name__ == "__main__":
  flags.mark_flags_as_required(["prior", "classifier"])
  app.run(main)
