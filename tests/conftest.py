"""Shared test set-up: 4 forced CPU devices, the PyTorch parity fixtures and their recipe."""
import os
import pathlib
import sys

import jax

# Multi-device code is tested on forced CPU devices; single-device code simply runs on device 0.
jax.config.update("jax_num_cpu_devices", 4)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("JAXMIA_FIXTURES", REPO.parent / "shared" / "fixtures"))
if not (FIXTURES / "recipe.py").exists():
  raise RuntimeError(f"PyTorch parity fixtures not found at {FIXTURES}; set JAXMIA_FIXTURES to the folder "
                     "holding recipe.py and the *.npz files.")
sys.path.insert(0, str(FIXTURES))
import recipe  # noqa: E402


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  return FIXTURES


def load_fixture(name: str):
  """(manifest, seed, state, arrays) of `../shared/fixtures/<name>.npz`, state rebuilt by `recipe.py`."""
  return recipe.load_fixture(str(FIXTURES / f"{name}.npz"))


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
