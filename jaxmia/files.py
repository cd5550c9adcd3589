"""Small output helpers shared by every stage: atomic writes, image conversion and grids, PNG files, file
digests, mean ± sd, and matplotlib for writing figures.

Images inside jaxmia are floats in [-1, 1] (`data.augment.normalize`); `to_uint8` is the one way back to
pixels. Files are written atomically (`atomic_write`), so an interrupted run never leaves half a file.
"""
import hashlib
import io
import math
import os
from typing import Any, BinaryIO, Callable

from etils import epath
import numpy as np
from PIL import Image

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
  import matplotlib  # pylint: disable=import-outside-toplevel  (slow; only figure writers need it)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt
