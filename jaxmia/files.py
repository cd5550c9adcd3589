"""Small output helpers shared by every stage: atomic writes, image conversion and grids, PNG files, file
and array digests, mean ± sd, matplotlib for writing figures, and the workdir checks of the programs
(`check_workdir`; `check_run_record`, the resume record `run.json`, and `record_provenance`).

Images inside jaxmia are floats in [-1, 1] (`data.augment.normalize`); `to_uint8` is the one way back to
pixels. Files are written atomically (`atomic_write`), so an interrupted run never leaves half a file.
"""
import hashlib
import io
import json
import math
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any, BinaryIO, Callable

from absl import logging
from etils import epath
import numpy as np
from PIL import Image

from jaxmia import provenance
from jaxmia.data import augment


def atomic_write(path, write: Callable[[BinaryIO], Any]) -> None:
  """Calls `write(file)` on a temporary file next to `path` (`<name>.tmp`, same folder), flushes and fsyncs
  it, then renames it to `path`: a reader sees the old file or the whole new one, never a part of it.

  `path` may be an `etils.epath` URL (gs://...); object stores have no descriptor to fsync.
  """
  path = epath.Path(path)
  tmp = path.parent / (path.name + ".tmp")
  with tmp.open("wb") as f:
    write(f)
    f.flush()
    try:
      fileno = f.fileno()
    except (AttributeError, io.UnsupportedOperation):
      fileno = None
    if fileno is not None:
      os.fsync(fileno)
  tmp.replace(path)


def file_digest(path) -> str:
  """SHA-256 (hex) of the file at `path` (a local path or an `etils.epath` URL), read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def to_uint8(images) -> np.ndarray:
  """Host images in [-1, 1] (clamped) -> uint8 pixels: `rint(255 * denormalize(x))`, i.e. `rint((x + 1) * 127.5)`."""
  images = np.clip(np.asarray(images), -1.0, 1.0)
  return np.rint(augment.denormalize(images) * 255.0).astype(np.uint8)


def image_grid(images, columns: int | None = None, *, fill: int = 0) -> np.ndarray:
  """`[N, H, W, C]` images -> one uint8 `[rows * H, columns * W, C]` grid, row-major.

  Images are uint8, or floats in [-1, 1] (converted with `to_uint8`). `columns` defaults to about sqrt(N);
  cells after the last image hold `fill`.
  """
  images = np.asarray(images)
  pixels = images if images.dtype == np.uint8 else to_uint8(images)
  n, h, w, ch = pixels.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.full((rows * columns, h, w, ch), fill, np.uint8)
  grid[:n] = pixels
  return grid.reshape(rows, columns, h, w, ch).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, ch)


def save_png(grid: np.ndarray, path) -> None:
  """Writes a uint8 `[H, W, C]` image (C = 1 saved as greyscale) as a PNG file, atomically."""
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  atomic_write(path, lambda f: image.save(f, format="PNG"))


def mean_sd(values) -> dict:
  """`{'mean', 'sd', 'n'}` of `values` (sample sd, ddof=1; sd is 0 for one value, both NaN for none)."""
  values = np.asarray(values, np.float64).ravel()
  if not len(values):
    return {"mean": float("nan"), "sd": float("nan"), "n": 0}
  sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return {"mean": float(np.mean(values)), "sd": sd, "n": int(len(values))}


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend (figures are only written to files).

  matplotlib is imported on the first call: most programs never draw, and it is slow to import.
  """
  import matplotlib  # noqa: PLC0415 (slow; only figure writers need it)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415 (after matplotlib.use)
  return plt


def atomic_write_text(path, text: str) -> None:
  """`atomic_write` of a UTF-8 text file."""
  atomic_write(path, lambda f: f.write(text.encode()))


def tree_digest(tree) -> str:
  """SHA-256 (hex) of the content of a nested structure of arrays (dicts, lists, tuples; e.g. Flax variables).

  Each leaf contributes its path, dtype, shape and bytes, dict entries in sorted key order: equal content gives
  the same digest however it was stored (an orbax folder, a PyTorch file), and any changed value another one.
  """
  digest = hashlib.sha256()

  def visit(node, path):
    if isinstance(node, Mapping):
      for key in sorted(node, key=str):
        visit(node[key], f"{path}/{key}")
    elif isinstance(node, (list, tuple)):
      for i, item in enumerate(node):
        visit(item, f"{path}/{i}")
    else:
      array = np.ascontiguousarray(np.asarray(node))
      digest.update(f"{path}|{array.dtype.str}|{array.shape}|".encode())
      digest.update(array.tobytes())

  visit(tree, "")
  return digest.hexdigest()


def check_workdir(path, flag: str = "--workdir") -> pathlib.Path:
  """`path` as a `pathlib.Path` if it can be a program's output folder (an existing writable folder, or a new
  one whose nearest existing parent is a writable folder); else an error that says what to pass instead.

  Nothing is created: a run validates everything before it writes anything.
  """
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f"{flag}={path} is a file, not a folder; pass a new or existing folder.")
  existing = path
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise NotADirectoryError(f"{flag}={path} lies under {existing}, which is a file; pass another folder.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise PermissionError(f"{flag}={path}: {existing} is not writable; pass a folder you can write to.")
  return path


# ----------------------------------------------------------------------------------------------- run records

RUN_RECORD = "run.json"
RUN_RECORD_VERSION = 1


def flatten(tree, prefix: str = "") -> dict:
  """Nested dicts -> `{'a.b.c': leaf}` (an empty dict is a leaf)."""
  if not isinstance(tree, Mapping) or not tree:
    return {prefix: tree} if prefix else {}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return out


_UNSET = object()


def _short(value, width: int = 40) -> str:
  text = "unset" if value is _UNSET else json.dumps(value, default=str)
  return text if len(text) <= width else text[:width - 3] + "..."


def check_run_record(workdir, record: dict, *, program: str, state: tuple[str, ...], outputs: tuple[str, ...],
                     overwrite: bool, legacy: dict | None = None, primary: bool = True) -> bool:
  """Resume check of a program's `workdir`: compares `record` (what defines the result: the config without
  presentation fields, content digests of the input weights, the dataset version) with the one recorded in
  `workdir/run.json`, then records it there. Returns True when the workdir holds a run to resume.

  `state`: glob patterns of what a started run leaves (checkpoints, cached stages, exports); `outputs`: glob
  patterns of everything the program writes. When the records differ and state exists, a `ValueError` names the
  differing fields (one line) and how to start fresh, or, with `overwrite`, the outputs are deleted (with the run
  and provenance records; nothing else in the folder is) and the run starts fresh. Without state the record is
  simply replaced (a run that failed before doing anything never blocks its corrected rerun). A workdir with state
  but no record (an older jaxmia) is compared on the fields of `legacy` (its recorded config, if any) and adopted.
  `record['config']` holds the config part, compared field by field; other top-level entries likewise.
  Only `primary` (process 0) writes; it also appends this process to the folder's provenance record
  (`record_provenance`).
  """
  workdir = pathlib.Path(workdir)
  current = {"version": RUN_RECORD_VERSION, "program": program, **json.loads(json.dumps(record, default=str))}
  path = workdir / RUN_RECORD
  started = workdir.is_dir() and any(any(workdir.glob(pattern)) for pattern in state)
  recorded = None
  if path.exists():
    try:
      recorded = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
      recorded = None  # a damaged record: treated like none (it is rewritten below)
  if recorded is not None and recorded.get("version") != RUN_RECORD_VERSION:  # written by an older jaxmia
    legacy, recorded = recorded, None
  if recorded is not None:
    mine, theirs = flatten(current), flatten(recorded)
    changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k, _UNSET) != theirs.get(k, _UNSET))
    comparison = "recorded"
  elif legacy is not None and started:
    mine, theirs = flatten(current.get("config", {})), flatten(json.loads(json.dumps(legacy, default=str)))
    changed = sorted(k for k in mine.keys() & theirs.keys() if mine[k] != theirs[k])
    comparison = "legacy"
  else:
    mine = theirs = {}
    changed, comparison = [], "none"
  if changed and started:
    names = [k[len("config."):] if k.startswith("config.") else k for k in changed]
    shown = [f"{name}: {_short(theirs.get(k, _UNSET))} -> {_short(mine.get(k, _UNSET))}"
             for name, k in zip(names, changed)][:6]
    more = f" and {len(changed) - len(shown)} more" if len(changed) > len(shown) else ""
    if not overwrite:
      raise ValueError(f"{workdir} holds a {program} run with different settings ({'; '.join(shown)}{more}); "
                       "rerun with its settings to resume it, or start fresh with another --workdir or with "
                       "--config.overwrite=True (deletes that run's outputs).")
    if primary:
      removed = remove_outputs(workdir, outputs + (RUN_RECORD, provenance.PROVENANCE_FILE))
      logging.warning("config.overwrite: %s held a %s run with different settings (%s%s); deleted %s.", workdir,
                      program, "; ".join(shown), more, ", ".join(p.name for p in removed) or "nothing")
    started = False
  elif started and comparison != "recorded":
    logging.warning("%s holds a %s run without a resume record (written by an older jaxmia); resuming it%s and "
                    "recording the current settings.", workdir, program,
                    " after comparing its recorded config" if comparison == "legacy" else " unchecked")
  if primary and (not started or comparison != "recorded" or changed):
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")
  if primary:
    record_provenance(workdir, program)
  return started


def record_provenance(folder, program: str) -> None:
  """Appends this process's `provenance.entry(program)` (commit, machine, versions, start time) to
  `folder/provenance.json`: the run's history of where it was computed, kept apart from the resume record."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  entries = provenance.read(folder) + [provenance.entry(program)]
  atomic_write_text(folder / provenance.PROVENANCE_FILE, json.dumps(entries, indent=2) + "\n")


def remove_outputs(workdir, patterns) -> list[pathlib.Path]:
  """Deletes the entries of `workdir` matching the glob `patterns` (files or folders); returns them."""
  removed = []
  for pattern in patterns:
    for path in sorted(pathlib.Path(workdir).glob(pattern)):
      if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
      else:
        path.unlink(missing_ok=True)
      removed.append(path)
  return removed
