"""The analysis scripts' result tables: mean ± sd text, markdown tables, and each analysis's JSON numbers and
markdown written side by side (`jaxmia.files` has the statistics, `mean_sd`, and the figure set-up, `pyplot`).
Evaluation reports of attack runs are `jaxmia.report`."""
import json
import pathlib
from typing import Any, Sequence

import numpy as np


def format_mean_sd(stats: dict, digits: int = 2) -> str:
  """'m ± s' of a `files.mean_sd` dict ('–' if it holds no values)."""
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

