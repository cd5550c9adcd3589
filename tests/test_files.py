"""`jaxmia.files`: atomic writes, [-1, 1] -> uint8, grids, PNG, digests, mean ± sd."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from jaxmia import files
from jaxmia.data import augment


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "out.bin"
  path.write_bytes(b"old")
  with pytest.raises(RuntimeError):
    files.atomic_write(path, lambda f: (f.write(b"half"), (_ for _ in ()).throw(RuntimeError("interrupted"))))
  assert path.read_bytes() == b"old"   # a failed write leaves the old file
  files.atomic_write(path, lambda f: f.write(b"new"))
  assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_to_uint8_is_denormalize_times_255_clamped_and_rounded():
  x = np.linspace(-1.2, 1.2, 10001, dtype=np.float32)
  expected = np.rint(np.clip(np.asarray(augment.denormalize(np.clip(x, -1, 1))) * 255, 0, 255)).astype(np.uint8)
  np.testing.assert_array_equal(files.to_uint8(x), expected)
  np.testing.assert_array_equal(files.to_uint8(np.array([-1.0, 0.0, 1.0])), [0, 128, 255])


def test_image_grid_png_digest_and_mean_sd(tmp_path):
  images = np.arange(3 * 2 * 2 * 1, dtype=np.uint8).reshape(3, 2, 2, 1)
  grid = files.image_grid(images, columns=2, fill=7)
  assert grid.shape == (4, 4, 1)
  np.testing.assert_array_equal(grid[2:, 2:, 0], 7)   # the empty cell
  np.testing.assert_array_equal(grid[:2, 2:], images[1])
  files.save_png(grid, tmp_path / "g.png")
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid[..., 0])
  assert files.file_digest(tmp_path / "g.png") == hashlib.sha256((tmp_path / "g.png").read_bytes()).hexdigest()
  assert files.mean_sd([1.0, 3.0]) == {"mean": 2.0, "sd": np.sqrt(2.0), "n": 2}
  assert files.mean_sd([5.0])["sd"] == 0.0 and files.mean_sd([])["n"] == 0
