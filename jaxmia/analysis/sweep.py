"""α × training-set-size sweep (the paper's Fig. 2): train, attack and evaluate each pair, then compare to α = 0.

`run_sweep` runs `jaxmia.chain.target_chain` (train → attack → evaluate) for every (α, samples per class);
each step resumes from its workdir.
`advantages` turns the reports into differences to the α = 0 run of the same size.
"""
import copy
import pathlib
from typing import Sequence

import numpy as np

from jaxmia import chain, report


def run_name(alpha: float, samples_per_class: int | None) -> str:
  return f"alpha{alpha:g}_spc{'all' if samples_per_class is None else samples_per_class}"


def run_sweep(train_config, attack_config, eval_config, alphas: Sequence[float],
              samples_per_class: Sequence[int | None], workdir) -> list[dict]:
  """Trains, attacks and evaluates every (α, size) with `chain.target_chain`; one record per run.

  Per run: `train_config.label_smoothing = α` and `dataset.samples_per_class = size` (None: all images), the
  attack targets the exported model, and the evaluation's dataset is the training config's (with the run's
  subset), so distances are measured to the images the model was trained on.
  Directories: `workdir/{train,attack}/<run name>`; reports in `workdir/attack/<run name>/evaluation`.
  """
  workdir = pathlib.Path(workdir)
  plan, names = [], []
  for size in samples_per_class:
    for alpha in alphas:
      name = run_name(alpha, size)
      train_run = copy.deepcopy(train_config)
      train_run.label_smoothing = float(alpha)
      train_run.dataset.samples_per_class = size
      eval_run = copy.deepcopy(eval_config)
      eval_run.dataset = copy.deepcopy(train_run.dataset)
      plan += chain.target_chain(name, train_run, workdir / "train" / name, attack_config,
                                 workdir / "attack" / name, eval_run)
      names.append((float(alpha), size, name))
  chain.run_stages(plan, "Sweep")
  records = []
  for alpha, size, name in names:
    result = report.load_report(workdir / "attack" / name)
    records.append({"alpha": alpha, "samples_per_class": size, "name": name,
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
