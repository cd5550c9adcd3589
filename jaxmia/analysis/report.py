"""Small helpers shared by the analysis scripts: summary statistics and JSON/markdown/PNG output."""
import json
import pathlib
from typing import Any, Sequence

import numpy as np


def mean_sd(values) -> dict:
  """`{'mean', 'sd', 'n'}` of `values` (sample sd, ddof=1; sd is 0 for one value, both NaN for none)."""
  values = np.asarray(values, np.float64).ravel()
  if not len(values):
    return {"mean": float("nan"), "sd": float("nan"), "n": 0}
  sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return {"mean": float(np.mean(values)), "sd": sd, "n": int(len(values))}


def format_mean_sd(stats: dict, digits: int = 2) -> str:
  """'m ± s' of a `mean_sd` dict ('–' if it holds no values)."""
  if not stats["n"]:
    return "–"
  return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def write_outputs(outdir, name: str, numbers: dict, markdown: str) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `outdir/name.json` (numbers; NaN as null) and `outdir/name.md`; returns both paths."""
  outdir = pathlib.Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  json_path, md_path = outdir / f"{name}.json", outdir / f"{name}.md"
  json_path.write_text(json.dumps(_nan_to_none(numbers), indent=2, allow_nan=False) + "\n")
  md_path.write_text(markdown)
  return json_path, md_path


def _nan_to_none(value):
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return None if np.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend (figures are only written to files)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
