"""Shared test set-up: 4 forced CPU devices, the PyTorch parity fixtures and their recipe, and the programs
(`python -m jaxmia.<program>`) run in child processes.

The fixtures are read from `../shared/fixtures` (override with `JAXMIA_FIXTURES`). When they are absent, only
the tests that read them are skipped, with the reason: such tests reach them through `load_fixture`,
`fixture_arrays`, `fixture_path`, `recipe` or the `fixtures_dir` fixture, each of which skips its caller.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax

# Multi-device code is tested on forced CPU devices; single-device code simply runs on device 0.
jax.config.update("jax_num_cpu_devices", 4)

# The suite's time is mostly XLA:CPU compiling many small programs once each, and LLVM's optimisation passes are most
# of that: at level 0 XLA's own loops run slower, while convolutions and matrix products run in the same precompiled
# libraries. The tests compare values with tolerances, closed forms or runs under the same setting, so they hold at
# any level. Set for the whole run before the backend starts (children inherit it); a level in XLA_FLAGS is kept.
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # for children that must run as users run (`start_program`)
if "xla_backend_optimization_level" not in USER_XLA_FLAGS:
  os.environ["XLA_FLAGS"] = (USER_XLA_FLAGS + " --xla_backend_optimization_level=0").strip()

# One persistent compilation cache for the whole run, shared by the xdist workers and the programs the tests start
# (both inherit os.environ): many tests compile the same smoke configs' programs again, here or in a child.
# The process that made the folder (the xdist controller, or a plain pytest) removes it at the end.
_OWN_XLA_CACHE = not os.environ.get("JAX_COMPILATION_CACHE_DIR")
if _OWN_XLA_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxmia-tests-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("JAXMIA_FIXTURES", REPO.parent / "shared" / "fixtures"))
MISSING_FIXTURES = None if (FIXTURES / "recipe.py").exists() else (
    f"PyTorch parity fixtures not found at {FIXTURES}; set JAXMIA_FIXTURES to the folder holding recipe.py and "
    "the *.npz files")


# Files with minutes-long set-ups, the longest first. They are collected first so that xdist's --dist loadfile hands
# them out at the start instead of leaving one worker alone with the quick studies at the end.
LONGEST_FILES = ("test_experiment.py", "test_lowres_celeba.py", "test_train.py", "test_fault_injection.py",
                 "test_gan.py", "test_gan_gmi.py", "test_bench_common.py", "test_gmi.py", "test_kedmi.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # stable: the rest keep their order


def pytest_unconfigure(config):
  if _OWN_XLA_CACHE:
    shutil.rmtree(XLA_CACHE, ignore_errors=True)


def require_fixtures() -> None:
  """Skips the calling test (with the reason) when the fixtures are absent."""
  if MISSING_FIXTURES:
    pytest.skip(MISSING_FIXTURES)


class _AbsentRecipe:
  """Stands in for `recipe.py` when the fixtures are absent: a test that uses it is skipped."""

  def __getattr__(self, name):
    if name.startswith("_"):   # introspection (pytest, copy, pickle) sees an ordinary object
      raise AttributeError(name)
    require_fixtures()


if MISSING_FIXTURES:
  recipe = _AbsentRecipe()
else:
  sys.path.insert(0, str(FIXTURES))
  import recipe  # noqa: E402


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  require_fixtures()
  return FIXTURES


def fixture_path(*parts: str) -> pathlib.Path:
  """`FIXTURES/<parts...>` (the calling test is skipped when the fixtures are absent)."""
  require_fixtures()
  return FIXTURES.joinpath(*parts)


def load_fixture(name: str):
  """(manifest, seed, state, arrays) of `../shared/fixtures/<name>.npz`, state rebuilt by `recipe.py`."""
  require_fixtures()
  return recipe.load_fixture(str(FIXTURES / f"{name}.npz"))


class _LazyArrays:
  def __init__(self, name: str):
    self._name, self._arrays = name, None

  def __getitem__(self, key):
    if self._arrays is None:
      self._arrays = load_fixture(self._name)[3]
    return self._arrays[key]


def fixture_arrays(name: str) -> _LazyArrays:
  """The arrays of fixture `name`, loaded on the first lookup: a module can name them at import time, and only
  the tests that read them are skipped when the fixtures are absent."""
  return _LazyArrays(name)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def with_overrides(config, **overrides):
  """`config` with dotted fields set, e.g. `with_overrides(c, **{"attack.num_steps": 3})` (as `--config.x.y=`)."""
  for key, value in overrides.items():
    node, (*parents, leaf) = config, key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def start_program(*args, env=None, cwd=REPO, **popen_kwargs) -> subprocess.Popen:
  """`python *args` (e.g. `-m jaxmia.train ...`) started in `cwd` (the checkout) on the CPU backend (one device:
  the 4 forced devices are this process's setting), with `env` added to this process's environment (pass
  `{"XLA_FLAGS": USER_XLA_FLAGS}` to compile at XLA's default level, as users do)."""
  return subprocess.Popen([sys.executable, *args], cwd=cwd, env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
                          text=True, **popen_kwargs)


def run_program(module, *args, env=None, cwd=REPO, timeout=600):
  """Runs `python -m module *args` (`start_program`) to its end; returns (exit code, stderr)."""
  with start_program("-m", module, *args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
    try:
      _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      proc.kill()
      raise
  return proc.returncode, stderr


# ----------------------------------------------------------------------------------------------- tiny networks

TINY_GENERATOR_KWARGS = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                             mapping_kwargs={"num_layers": 1},
                             synthesis_kwargs={"channel_base": 64, "channel_max": 8})


def save_tiny_generator(path):
  """A 16x16 StyleGAN2 generator with NVlabs initialisation saved at `path`; returns (module, variables)."""
  import jax.numpy as jnp  # noqa: PLC0415
  from jaxmia import model_store  # noqa: PLC0415
  from jaxmia.models.stylegan2 import Generator  # noqa: PLC0415
  generator = Generator(**TINY_GENERATOR_KWARGS)
  variables = jax.jit(generator.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 8)), None)
  model_store.save_model(path, variables, kind="stylegan2_generator", module_kwargs=TINY_GENERATOR_KWARGS)
  return generator, variables


def random_classifier_variables(module, seed, size):
  """Random variables without compiling an init: kernels N(0, 1 / fan_in), BatchNorm at identity."""
  import jax.numpy as jnp  # noqa: PLC0415
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    return np.ones(leaf.shape, np.float32) if name in ("scale", "var") else np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def save_random_classifier(path, seed, size, **module_kwargs):
  """A classifier of `module_kwargs` with `random_classifier_variables` saved at `path`."""
  from jaxmia import model_store, models  # noqa: PLC0415
  module = models.create_classifier(**module_kwargs)
  model_store.save_model(path, random_classifier_variables(module, seed, size), kind="classifier",
                         module_kwargs=module_kwargs)


# -------------------------------------------------------------------------------------------------- fake CelebA

# Identity ids of the fake CelebA files in file order; counts: 7 -> 3, 3 -> 4, 5 -> 3, 9 -> 1, 2 -> 4, 8 -> 2.
CELEBA_IDENTITIES = [7, 3, 5, 3, 9, 2, 2, 7, 5, 3, 8, 2, 3, 5, 7, 2, 8]


def solid_colour(label: int, index: int) -> tuple[int, int, int]:
  """An RGB colour that encodes (label <= 11, file index <= 20), so a stored image traces back to its file."""
  return (20 * label + 10, 12 * index + 10, 77)


def write_fake_celeba(root, identities, image) -> pathlib.Path:
  """A CelebA manual folder at `root`: file i (`{i + 1:06d}.jpg`, lossless JPEG) of identity `identities[i]` holds
  the PIL image `image(identity, i)`; file 3 exists only as .png (PPA's fallback for re-cropped images)."""
  root = pathlib.Path(root)
  (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
  lines = []
  for index, identity in enumerate(identities):
    name = f"{index + 1:06d}.jpg"
    lines.append(f"{name} {identity}")
    if index == 3:
      image(identity, index).save(root / "img_align_celeba" / name.replace(".jpg", ".png"))
    else:
      image(identity, index).save(root / "img_align_celeba" / name, format="JPEG", quality=100, subsampling=0)
  (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
  return root


@pytest.fixture(scope="module")
def celeba_dir(tmp_path_factory):
  """`CELEBA_IDENTITIES` as a fake CelebA folder of solid 20x24 images (non-square like the 178x218 originals)."""
  from PIL import Image  # noqa: PLC0415
  return write_fake_celeba(tmp_path_factory.mktemp("celeba"), CELEBA_IDENTITIES,
                           lambda identity, index: Image.new("RGB", (20, 24), solid_colour(identity, index)))
