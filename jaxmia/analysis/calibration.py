"""Calibration of label-smoothed targets over seeds: test accuracy, ECE, mean confidence and reliability bins.

`run_calibration` trains (or reuses) one target per (α, seed) with `jaxmia.train` and measures its exported
model on the test split; `summarize` gives mean ± sd per α and the reliability bins pooled over seeds.
"""
import copy
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import data, files, metrics, model_store, parallel, train
from jaxmia.data import augment


def run_name(alpha: float, seed: int) -> str:
  return f"alpha{alpha:g}_seed{seed}"


def test_probabilities(module, variables, images, *, image_size: int, batch_size: int = 250, mesh=None):
  """Softmax outputs `[N, C]` (float32, host) of an exported classifier on uint8 images `[N, H, W, 3]`."""

  @jax.jit
  def probabilities(x):
    logits = module.apply(variables, augment.eval_transform(x, size=image_size), train=False)
    return jax.nn.softmax(logits.astype(jnp.float32))

  return parallel.map_arrays(probabilities, (images,), min(batch_size, len(images)), mesh=mesh)


def measure(probs: np.ndarray, labels: np.ndarray, num_bins: int = 10) -> dict:
  """`{'test_accuracy', 'ece', 'confidence', 'bins': {'count', 'accuracy', 'confidence'}}` of `probs` `[N, C]`."""
  bins = jax.device_get(metrics.reliability_bins(probs, labels, num_bins))
  return {"test_accuracy": float(np.mean(np.argmax(probs, -1) == labels)),
          "ece": float(metrics.expected_calibration_error(probs, labels, num_bins)),
          "confidence": float(np.mean(np.max(probs, -1))),
          "bins": {k: np.asarray(v, np.float64).tolist() for k, v in bins.items()}}


def run_calibration(train_config, alphas: Sequence[float], seeds: Sequence[int], workdir, *,
                    num_bins: int = 10, mesh=None) -> list[dict]:
  """One record per (α, seed): `{'alpha', 'seed', 'name', **measure(...)}` on the test split.

  Each target trains in `workdir/<run name>` (`train_config` with `label_smoothing = α`, `seed = seed`;
  resumed if interrupted, skipped once its model is exported).
  """
  workdir = pathlib.Path(workdir)
  images, labels = data.load_arrays(data.load_split(train_config.dataset, "test"))
  records = []
  for alpha in alphas:
    for seed in seeds:
      name = run_name(alpha, seed)
      model_dir = workdir / name / "model"
      if not (model_dir / model_store.INFO_FILE).exists():
        config = copy.deepcopy(train_config)
        config.label_smoothing, config.seed = float(alpha), int(seed)
        train.train_and_evaluate(config, workdir / name, mesh=mesh)
      module, variables = model_store.load_model(model_dir)
      probs = test_probabilities(module, variables, images, image_size=train_config.image_size,
                                 batch_size=train_config.eval_batch_size, mesh=mesh)
      records.append({"alpha": float(alpha), "seed": int(seed), "name": name, **measure(probs, labels, num_bins)})
  return records


def summarize(records: Sequence[dict]) -> dict:
  """`{α: {'test_accuracy'|'ece'|'confidence': files.mean_sd, 'bins': pooled bins}}`; pooled bins weight each
  seed's bin by its count (empty pooled bins have accuracy and confidence NaN)."""
  summary = {}
  for alpha in sorted({r["alpha"] for r in records}, reverse=True):
    runs = [r for r in records if r["alpha"] == alpha]
    counts = np.sum([r["bins"]["count"] for r in runs], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
      pooled = {k: np.sum([np.multiply(r["bins"]["count"], r["bins"][k]) for r in runs], axis=0) / counts
                for k in ("accuracy", "confidence")}
    summary[alpha] = {**{k: files.mean_sd([r[k] for r in runs]) for k in ("test_accuracy", "ece", "confidence")},
                      "bins": {"count": counts.tolist(), **{k: v.tolist() for k, v in pooled.items()}}}
  return summary
