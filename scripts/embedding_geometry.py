"""Figs. 4-5 of the label-smoothing paper: penultimate-feature geometry of training samples per α.

    python scripts/embedding_geometry.py --outdir runs/geometry \\
        --model runs/faces_ls-0.05/model --label "α=-0.05" \\
        --model runs/faces/model --label "α=0" \\
        --model runs/faces_ls0.1/model --label "α=0.1"

For each model (a weights folder, `jaxmia.model_store`; its dataset and input size come from the training run's
`config.json` unless --dataset/--image-size are given) the training images' pooled penultimate features give,
per sample, the mean intra-/inter-class L2 distance and the nearest same-/other-class neighbour distance,
divided by the model's largest pairwise distance. Writes `geometry.json`/`geometry.md` (mean, sd, median per
model), `geometry_violins.png` (one violin per model and statistic) and `geometry_tsne.png` (t-SNE of the
samples of up to --tsne-classes classes, the same classes for every model).
"""
import argparse
import pathlib

import numpy as np

from jaxmia import data, files, model_store, parallel
from jaxmia.analysis import geometry, runs, tables

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


def plot_tsne(embeddings: dict, labels: np.ndarray, path: pathlib.Path):
  plt = files.pyplot()
  num_classes = len(np.unique(labels))
  cmap = "tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "hsv"
  size = float(np.clip(3000 / len(labels), 2, 20))
  fig, axes = plt.subplots(1, len(embeddings), figsize=(4.5 * len(embeddings), 4.5), squeeze=False)
  for ax, (name, points) in zip(axes[0], embeddings.items()):
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap=cmap, s=size, linewidths=0)
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", action="append", required=True, help="model folder (repeat for several α)")
  parser.add_argument("--label", action="append", help="plot label of each --model (default: the folder path)")
  parser.add_argument("--outdir", default="runs/geometry", help="output directory")
  parser.add_argument("--split", default="train", help="dataset split whose features are analysed")
  parser.add_argument("--dataset", help="dataset name, if not that of the models' training runs")
  parser.add_argument("--data-dir", help="TFDS data dir (default: the training run's)")
  parser.add_argument("--manual-dir", help="manual download dir, if the dataset is not prepared yet")
  parser.add_argument("--image-size", type=int, help="model input size (default: the training run's)")
  parser.add_argument("--max-classes", type=int, help="distances over at most this many classes (default: all)")
  parser.add_argument("--tsne-classes", type=int, default=100, help="classes shown in the t-SNE (0: no t-SNE)")
  parser.add_argument("--batch-size", type=int, default=128, help="feature extraction batch (global)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the class subsets and of t-SNE")
  args = parser.parse_args()
  labels_given = args.label or []
  if labels_given and len(labels_given) != len(args.model):
    parser.error(f"give one --label per --model ({len(args.model)} models, {len(labels_given)} labels)")
  names = labels_given or args.model

  outdir = pathlib.Path(args.outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  stats, features_by_name, numbers = {}, {}, {"models": []}
  cached_split, images, labels = None, None, None
  for name, model_dir in zip(names, args.model):
    dataset_config, image_size = runs.dataset_and_image_size(model_dir, args.dataset, args.data_dir,
                                                             args.manual_dir, args.image_size)
    split_key = (dataset_config.to_json_best_effort(), args.split)
    if cached_split is None:
      images, labels = data.load_arrays(data.load_split(dataset_config, args.split))
      cached_split = split_key
      rows = geometry.select_classes(labels, args.max_classes, args.seed)
      tsne_rows = geometry.select_classes(labels[rows], args.tsne_classes or None, args.seed)
    elif split_key != cached_split:
      raise ValueError(f"{model_dir} was trained on other data than {args.model[0]}; all models must share one "
                       "dataset (or pass --dataset to analyse them all on the same one).")
    module, variables = model_store.load_model(model_dir)
    features = geometry.penultimate_features(module, parallel.replicate(variables, mesh), images[rows],
                                             image_size=image_size, batch_size=args.batch_size, mesh=mesh)
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
  if args.tsne_classes:
    embeddings = {name: geometry.tsne_embedding(f, seed=args.seed) for name, f in features_by_name.items()}
    plot_tsne(embeddings, labels[rows][tsne_rows], outdir / "geometry_tsne.png")
  table = tables.markdown_table(
      ["model", "samples", *STAT_TITLES.values()],
      [[e["label"], e["num_samples"], *(f"{tables.format_mean_sd(e[s], 3)} (median {e[s]['median']:.3f})"
                                         for s in geometry.STAT_NAMES)] for e in numbers["models"]])
  text = ("# Embedding geometry (Figs. 4-5)\n\nPenultimate features of the "
          f"'{args.split}' split; distances divided by each model's largest pairwise distance; mean ± sd over "
          "samples.\n\n" + table)
  tables.write_outputs(outdir, "geometry", numbers, text)
  print(text)


if __name__ == "__main__":
  main()
