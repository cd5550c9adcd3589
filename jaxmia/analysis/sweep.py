"""α × training-set-size sweep (the paper's Fig. 2): train, attack and evaluate each pair, then compare to α = 0.

`run_sweep` chains `jaxmia.train.train_and_evaluate`, `jaxmia.attack.run_attack` and
`jaxmia.evaluate.evaluate_attack` for every (α, samples per class); each step resumes from its workdir.
`advantages` turns the reports into differences to the α = 0 run of the same size.
"""
import copy
import pathlib
from typing import Sequence

import numpy as np


def run_name(alpha: float, samples_per_class: int | None) -> str:
  return f"alpha{alpha:g}_spc{'all' if samples_per_class is None else samples_per_class}"


def run_sweep(train_config, attack_config, eval_config, alphas: Sequence[float],
              samples_per_class: Sequence[int | None], workdir, mesh=None) -> list[dict]:
  """Trains, attacks and evaluates every (α, size); returns one record per run with its report's metrics.

  Per run: `train_config.label_smoothing = α` and `dataset.samples_per_class = size` (None: all images), the
  attack targets the exported model, and the evaluation's dataset is the training config's (with the run's
  subset), so distances are measured to the images the model was trained on.
  Directories: `workdir/{train,attack}/<run name>`; reports in `workdir/attack/<run name>/evaluation`.
  """
  from jaxmia import evaluate, report, train  # pylint: disable=g-import-not-at-top  (TensorFlow, flags)
  from jaxmia.attack import run_attack  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  records = []
  for size in samples_per_class:
    for alpha in alphas:
      name = run_name(alpha, size)
      train_dir, attack_dir = workdir / "train" / name, workdir / "attack" / name
      model_dir = train_dir / "model"
      if not (model_dir / "jaxmia.json").exists():
        config = copy.deepcopy(train_config)
        config.label_smoothing = float(alpha)
        config.dataset.samples_per_class = size
        train.train_and_evaluate(config, train_dir, mesh=mesh)
      config = copy.deepcopy(attack_config)
      config.target = str(model_dir)
      run_attack(config, attack_dir)
      try:
        result = report.load_report(attack_dir)
      except FileNotFoundError:
        config = copy.deepcopy(eval_config)
        config.dataset = copy.deepcopy(train_config.dataset)
        config.dataset.samples_per_class = size
        result = evaluate.evaluate_attack(config, attack_dir, mesh=mesh)
      records.append({"alpha": float(alpha), "samples_per_class": size, "name": name,
                      "metrics": result["metrics"], "unavailable": result.get("unavailable", {})})
  return records


def advantages(records: Sequence[dict], metric: str) -> dict:
  """`{samples_per_class: {α: metric(α) - metric(α = 0)}}` over the records (missing values: NaN).

  Sizes without an α = 0 record are left out.
  """
  by_key = {(r["samples_per_class"], r["alpha"]): r["metrics"].get(metric) for r in records}
  out = {}
  for size in dict.fromkeys(r["samples_per_class"] for r in records):
    if (size, 0.0) not in by_key:
      continue
    base = by_key[(size, 0.0)]
    out[size] = {alpha: (np.nan if by_key[(s, alpha)] is None or base is None else by_key[(s, alpha)] - base)
                 for (s, alpha) in by_key if s == size and alpha != 0.0}
  return out
