"""The evaluation's files: `report.json`, `report.md`, `per_class.csv`, the nearest-neighbour grid and the
metrics for TensorBoard (`events.out.tfevents.evaluation`), each written atomically."""
import csv
import io
import json
import math
import numbers
import pathlib

import jax
import numpy as np
from PIL import Image

from jaxmia import files, parallel, report
from jaxmia.attack import render
from jaxmia.data import augment, image_ops
from jaxmia.evaluate.scoring import GeneratedImages, jit_sharded_batch
from jaxmia.writers import write_event_file

EVENTS_FILE = "events.out.tfevents.evaluation"


def nearest_neighbour_grid(fake_images: np.ndarray, real_images: np.ndarray, rows: int, gap: int = 4) -> Image.Image:
  """PNG grid: class blocks of two rows, fakes `[rows * k, S, S, 3]` uint8 above their nearest reals."""
  per_row = len(fake_images) // rows
  blocks = [files.image_grid(np.concatenate([fake_images[r * per_row:(r + 1) * per_row],
                                             real_images[r * per_row:(r + 1) * per_row]]), per_row)
            for r in range(rows)]
  spacer = np.full((gap, *blocks[0].shape[1:]), 255, np.uint8)
  return Image.fromarray(np.concatenate([part for block in blocks for part in (spacer, block)][1:]))


def write_grid(path: pathlib.Path, generated: GeneratedImages, config, classes, split, real, nearest) -> str:
  """Writes the nearest-neighbour grid (FaceNet space if there is one, else the evaluation model's); returns
  its caption. `config` is the evaluation config's `grid` section."""
  run, space = generated.run, ("facenet" if "facenet" in nearest else "evaluation")
  shown = classes[:int(config.num_classes)]
  per = min([int(config.samples_per_class)] + [int(np.sum(run.selected_targets == c)) for c in shown])
  rows = np.concatenate([np.flatnonzero(run.selected_targets == c)[:per] for c in shown])
  size = int(config.image_size)
  render_images = generated.render_fn(size)
  render_grid = render.cached_jit(
      "evaluate_grid", (generated.generator,), (generated.crop, generated.clamp, size, generated.mesh),
      lambda: jit_sharded_batch(lambda w, generator_variables: render_images(generator_variables, w),
                                generated.mesh, batch_args=1, replicated_args=1))
  fakes = parallel.map_arrays(lambda w: render_grid(w, generated.generator_variables), (run.selected_w[rows],),
                              generated.batch_size, mesh=generated.mesh)
  positions = real[space][2][nearest[space][rows]]
  reals = np.stack([split.source[int(p)]["image"] for p in positions])
  reals = image_ops.resize(augment.normalize(augment.to_unit_range(reals)), size)
  grid = nearest_neighbour_grid(files.to_uint8(fakes), files.to_uint8(reals), rows=len(shown))
  if jax.process_index() == 0:
    files.atomic_write(path, lambda f: grid.save(f, format="PNG"))
  return (f"Classes {', '.join(str(int(c)) for c in shown)} (one block each, top to bottom): {per} selected "
          f"samples above the training image of the same class nearest to each in "
          f"{'FaceNet' if space == 'facenet' else 'evaluation-model'} feature space.")


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  files.atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def tensorboard_scalars(result: dict) -> dict[str, float]:
  """The report's finite numbers as TensorBoard scalars: `evaluation/<column>` (Table 1's columns) and
  `evaluation_details/<name>` (the further numbers)."""
  scalars = {}
  for prefix, values in (("evaluation", result["metrics"]), ("evaluation_details", result["details"])):
    for name, value in values.items():
      if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        scalars[f"{prefix}/{name}"] = float(value)
  return scalars


def write_report(out_dir: pathlib.Path, result: dict, per_class_rows: list[dict]) -> None:
  """Writes `per_class.csv` (under the name in `result['files']`), `report.md`, the TensorBoard file of the
  report's numbers (one point at step 0; rewritten whole by a rerun) and, last, `report.json`: an evaluation
  with `report.json` is finished (a study skips it), so an interrupted one never looks finished."""
  write_csv(out_dir / result["files"]["per_class"], per_class_rows)
  write_event_file(out_dir / EVENTS_FILE, [(0, tensorboard_scalars(result))])
  files.atomic_write(out_dir / "report.md", lambda f: f.write(report.run_markdown(result).encode()))
  files.atomic_write(out_dir / report.REPORT_FILE, lambda f: f.write(json.dumps(result, indent=2).encode()))
