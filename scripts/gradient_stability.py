"""Fig. 6b / Eq. 4 of the label-smoothing paper: stability of the attack's image-space gradients per α.

    python scripts/gradient_stability.py --attack_config=configs/attack_facescrub_ffhq.py \\
        --model=runs/faces_ls-0.05/model --label="α=-0.05" --model=runs/faces/model --label="α=0" \\
        --model=runs/faces_ls0.1/model --label="α=0.1" --num_latents=1000 --outdir=runs/gradient_stability

For N random latents (z ~ N(0, I) with the config's stage-1 truncation) and random target classes, the
attack's stage-2 optimisation (the config's `attack` section: steps, Adam, identity loss, augmentation) runs
against each model, and at every step the cosine similarity between the gradients of the attack loss w.r.t.
the generated image at the previous and the current step is recorded. The same latents, targets and
augmentation keys serve every model. Writes `gradient_stability.json`/`.md` (mean ± sd per step and over all
steps) and `gradient_stability.png` (one line per model: the mean per step with its 95% interval, and the sd
over latents per step).
Override any attack setting with `--attack_config.attack.num_steps=70` etc.
"""
import pathlib

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from jaxmia import cli, files, model_store, parallel
from jaxmia.analysis import gradients, tables
from jaxmia.attack import run as attack_run

config_flags.DEFINE_config_file("attack_config", None, "Attack config (configs/attack_*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_multi_string("model", None, "Target model folder (repeat for several α).")
flags.DEFINE_multi_string("label", None, "Label of each --model (default: the folder path).")
flags.DEFINE_integer("num_latents", 1000, "Random latents (and targets) per model.")
flags.DEFINE_integer("batch_size", 0, "Latents per batch (0: the config's attack.batch_size).")
flags.DEFINE_integer("seed", None, "Seed of latents, targets and augmentations (default: the config's seed).")
flags.DEFINE_string("outdir", "runs/gradient_stability", "Output directory.")
FLAGS = flags.FLAGS


def plot(per_step: dict, path: pathlib.Path):
  """Two panels, one line per model: the mean similarity per step with the 95% interval of that mean
  (± 1.96 sd / √n over latents; where models differ), and the sd over latents per step (their spread, much
  wider than the differences). `per_step`: `{label: [{'mean', 'sd', 'n'} per step]}` (`files.mean_sd`)."""
  plt = files.pyplot()
  fig, (mean_ax, sd_ax) = plt.subplots(1, 2, figsize=(10, 4))
  for name, steps_stats in per_step.items():
    mean, sd, n = (np.array([s[key] for s in steps_stats], np.float64) for key in ("mean", "sd", "n"))
    steps = np.arange(1, len(mean) + 1)
    half = 1.96 * sd / np.sqrt(np.maximum(n, 1))
    line, = mean_ax.plot(steps, mean, label=name)
    mean_ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.25, linewidth=0)
    sd_ax.plot(steps, sd, color=line.get_color(), label=name)
  mean_ax.set_title("mean over latents (band: 95% interval of the mean)", fontsize=10)
  mean_ax.set_ylabel("cos(∇x L at t-1, ∇x L at t)")
  sd_ax.set_title("spread: sd over latents", fontsize=10)
  sd_ax.set_ylabel("sd of the cosine similarity")
  for ax in (mean_ax, sd_ax):
    ax.set_xlabel("attack step t")
    ax.grid(alpha=0.3)
  mean_ax.legend(loc="lower center", ncols=len(per_step), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def main(argv):
  cli.start(argv)
  labels = FLAGS.label or FLAGS.model
  if len(labels) != len(FLAGS.model):
    raise flags.ValidationError(f"give one --label per --model ({len(FLAGS.model)} models, {len(labels)} labels).")
  config = FLAGS.attack_config
  outdir = pathlib.Path(FLAGS.outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  batch_size = FLAGS.batch_size or int(config.attack.batch_size)
  parallel.check_batch_size(batch_size, mesh, "--batch_size")
  generator, generator_variables = attack_run.load_generator(config)
  seed = config.seed if FLAGS.seed is None else FLAGS.seed

  numbers, inputs = {"num_latents": FLAGS.num_latents, "seed": seed, "models": []}, None
  for name, model_dir in zip(labels, FLAGS.model):
    target_model, target_variables = model_store.load_model(model_dir)
    size = int(config.attack.resize)
    num_classes = jax.eval_shape(lambda v: target_model.apply(v, jax.numpy.zeros((1, size, size, 3))),
                                 target_variables).shape[-1]
    if inputs is None:
      inputs = gradients.random_attack_inputs(jax.random.key(seed), FLAGS.num_latents, num_classes,
                                              generator=generator, generator_variables=generator_variables,
                                              config=config)
      numbers["num_classes"] = num_classes
    elif num_classes != numbers["num_classes"]:
      raise ValueError(f"{model_dir} has {num_classes} classes, {FLAGS.model[0]} {numbers['num_classes']}; the "
                       "models must share one label set.")
    sim = gradients.similarity_for_latents(*inputs, generator=generator, generator_variables=generator_variables,
                                           target_model=target_model, target_variables=target_variables,
                                           config=config.attack, batch_size=batch_size, mesh=mesh)
    per_step = [files.mean_sd(s[np.isfinite(s)]) for s in sim.T]
    numbers["models"].append({"label": name, "model": model_dir,
                              "overall": files.mean_sd(np.nanmean(sim, 1)),
                              "per_step": per_step})
    print(f"{name}: mean similarity {numbers['models'][-1]['overall']['mean']:.4f}")

  plot({e["label"]: e["per_step"] for e in numbers["models"]}, outdir / "gradient_stability.png")
  table = tables.markdown_table(
      ["model", "mean over steps (± sd over latents)", "first step", "last step"],
      [[e["label"], tables.format_mean_sd(e["overall"], 4), tables.format_mean_sd(e["per_step"][0], 4),
        tables.format_mean_sd(e["per_step"][-1], 4)] for e in numbers["models"]])
  text = (f"# Gradient stability (Fig. 6b)\n\n{FLAGS.num_latents} random latents and targets, "
          f"{int(config.attack.num_steps)} attack steps; cosine similarity of consecutive image-space gradients "
          "of the attack loss.\n\n" + table)
  tables.write_outputs(outdir, "gradient_stability", numbers, text)
  print(text)


if __name__ == "__main__":
  flags.mark_flags_as_required(["attack_config", "model"])
  cli.run(main)
