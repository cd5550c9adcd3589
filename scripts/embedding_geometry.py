"""Figs. 4-5 of the label-smoothing paper: penultimate-feature geometry of training samples per α.

    python scripts/embedding_geometry.py --outdir=runs/geometry \\
        --model=runs/faces_ls-0.05/model --label="α=-0.05" \\
        --model=runs/faces/model --label="α=0" \\
        --model=runs/faces_ls0.1/model --label="α=0.1"

For each model (a weights folder, `jaxmia.model_store`; its dataset and input size come from the training run's
`config.json` unless --dataset/--image_size are given) the training images' pooled penultimate features give,
per sample, the mean intra-/inter-class L2 distance and the nearest same-/other-class neighbour distance,
divided by the model's largest pairwise distance. Writes `geometry.json`/`geometry.md` (mean, sd, median per
model), `geometry_violins.png` (one violin per model and statistic) and `geometry_tsne.png` (t-SNE of the
samples of up to --tsne_classes classes, the same classes for every model).
"""
import pathlib

import numpy as np
from absl import flags

from jaxmia import cli, data, files, model_store, parallel
from jaxmia.analysis import geometry, runs, tables

flags.DEFINE_multi_string("model", None, "Model folder (repeat for several α).")
flags.DEFINE_multi_string("label", None, "Plot label of each --model (default: the folder path).")
flags.DEFINE_string("outdir", "runs/geometry", "Output directory.")
flags.DEFINE_string("split", "train", "Dataset split whose features are analysed.")
flags.DEFINE_string("dataset", None, "Dataset name, if not that of the models' training runs.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the training run's).")
flags.DEFINE_string("manual_dir", None, "Manual download dir, if the dataset is not prepared yet.")
flags.DEFINE_integer("image_size", None, "Model input size (default: the training run's).", lower_bound=1)
flags.DEFINE_integer("max_classes", None, "Distances over at most this many classes (default: all).",
                     lower_bound=1)
flags.DEFINE_integer("tsne_classes", 100, "Classes shown in the t-SNE (0: no t-SNE).", lower_bound=0)
flags.DEFINE_integer("batch_size", 128, "Feature extraction batch (global).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the class subsets and of t-SNE.")
flags.mark_flag_as_required("model")
FLAGS = flags.FLAGS

STAT_TITLES = {"intra_mean": "mean intra-class distance", "inter_mean": "mean inter-class distance",
               "intra_nearest": "nearest same-class neighbour", "inter_nearest": "nearest other-class neighbour"}


def plot_violins(stats_by_label: dict, path: pathlib.Path):
  plt = files.pyplot()
  labels = list(stats_by_label)
  fig, axes = plt.subplots(1, len(geometry.STAT_NAMES), figsize=(3.2 * len(geometry.STAT_NAMES), 3.6), sharey=True)
  for ax, name in zip(axes, geometry.STAT_NAMES):
    values = [getattr(stats_by_label[label], name) for label in labels]
    values = [v[np.isfinite(v)] for v in values]
    ax.violinplot(values, showmedians=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30)
    ax.set_title(STAT_TITLES[name], fontsize=10)
  axes[0].set_ylabel("distance / max distance")
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


LEGEND_MAX_CLASSES = 20  # beyond this many classes the t-SNE gets a colour bar instead of a legend


def plot_tsne(embeddings: dict, labels: np.ndarray, path: pathlib.Path):
  """One t-SNE panel per model, coloured by class; the classes (the same colours in every panel) in a legend,
  or a colour bar of class indices when there are more than `LEGEND_MAX_CLASSES`."""
  plt = files.pyplot()
  classes, index = np.unique(labels, return_inverse=True)
  num_classes = len(classes)
  cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo", num_classes)
  size = float(np.clip(3000 / len(labels), 2, 20))
  fig, axes = plt.subplots(1, len(embeddings), figsize=(4.5 * len(embeddings), 4.5), squeeze=False)
  for ax, (name, points) in zip(axes[0], embeddings.items()):
    scatter = ax.scatter(points[:, 0], points[:, 1], c=index, cmap=cmap, vmin=-0.5, vmax=num_classes - 0.5,
                         s=size, linewidths=0)
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  if num_classes <= LEGEND_MAX_CLASSES:
    handles = [plt.Line2D([], [], marker="o", linestyle="", markersize=6, markerfacecolor=cmap(i),
                          markeredgewidth=0, label=str(c)) for i, c in enumerate(classes)]
    fig.subplots_adjust(right=1 - 0.9 / fig.get_figwidth())
    fig.legend(handles=handles, title="class", loc="center right", frameon=False, handletextpad=0.1,
               ncols=1 if num_classes <= 12 else 2)
  else:
    bar = fig.colorbar(scatter, ax=axes[0].tolist(), fraction=0.02, pad=0.01)
    ticks = np.linspace(0, num_classes - 1, min(num_classes, 11)).round().astype(int)
    bar.set_ticks(ticks, labels=[str(classes[t]) for t in ticks])
    bar.set_label(f"class ({num_classes} classes)")
  fig.savefig(path, dpi=150, bbox_inches="tight")
  plt.close(fig)


def main(argv):
  cli.start(argv)
  if FLAGS.label and len(FLAGS.label) != len(FLAGS.model):
    raise flags.ValidationError(f"give one --label per --model ({len(FLAGS.model)} models, {len(FLAGS.label)} "
                                "labels).")
  names = FLAGS.label or FLAGS.model

  outdir = pathlib.Path(FLAGS.outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  stats, features_by_name, numbers = {}, {}, {"models": []}
  cached_split, images, labels = None, None, None
  for name, model_dir in zip(names, FLAGS.model):
    dataset_config, image_size = runs.dataset_and_image_size(model_dir, FLAGS.dataset, FLAGS.data_dir,
                                                             FLAGS.manual_dir, FLAGS.image_size)
    split_key = (dataset_config.to_json_best_effort(), FLAGS.split)
    if cached_split is None:
      images, labels = data.load_arrays(data.load_split(dataset_config, FLAGS.split))
      cached_split = split_key
      rows = geometry.select_classes(labels, FLAGS.max_classes, FLAGS.seed)
      tsne_rows = geometry.select_classes(labels[rows], FLAGS.tsne_classes or None, FLAGS.seed)
    elif split_key != cached_split:
      raise ValueError(f"{model_dir} was trained on other data than {FLAGS.model[0]}; all models must share one "
                       "dataset (or pass --dataset to analyse them all on the same one).")
    module, variables = model_store.load_model(model_dir)
    features = geometry.penultimate_features(module, parallel.replicate(variables, mesh), images[rows],
                                             image_size=image_size, batch_size=FLAGS.batch_size, mesh=mesh)
    stats[name] = geometry.class_distance_stats(features, labels[rows]).scaled()
    features_by_name[name] = features[tsne_rows]
    entry = {"label": name, "model": model_dir, "num_samples": int(len(rows)),
             "num_classes": int(len(np.unique(labels[rows]))), "feature_dim": int(features.shape[1])}
    for stat in geometry.STAT_NAMES:
      values = getattr(stats[name], stat)
      values = values[np.isfinite(values)]
      entry[stat] = files.mean_sd(values) | {"median": float(np.median(values)) if len(values) else float("nan")}
    numbers["models"].append(entry)
    print(f"{name}: {len(rows)} samples, features {features.shape[1]}-d")

  plot_violins(stats, outdir / "geometry_violins.png")
  if FLAGS.tsne_classes:
    embeddings = {name: geometry.tsne_embedding(f, seed=FLAGS.seed) for name, f in features_by_name.items()}
    plot_tsne(embeddings, labels[rows][tsne_rows], outdir / "geometry_tsne.png")
  table = tables.markdown_table(
      ["model", "samples", *STAT_TITLES.values()],
      [[e["label"], e["num_samples"], *(f"{tables.format_mean_sd(e[s], 3)} (median {e[s]['median']:.3f})"
                                         for s in geometry.STAT_NAMES)] for e in numbers["models"]])
  text = ("# Embedding geometry (Figs. 4-5)\n\nPenultimate features of the "
          f"'{FLAGS.split}' split; distances divided by each model's largest pairwise distance; mean ± sd over "
          "samples.\n\n" + table)
  tables.write_outputs(outdir, "geometry", numbers, text)
  print(text)


if __name__ == "__main__":
  cli.run(main)
