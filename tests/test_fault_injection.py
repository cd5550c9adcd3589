"""Fault injection (issue 17): the programs killed with SIGKILL at several points, exports included, then
rerun with the same command, end with results bit-identical to an uninterrupted run's.

Every program runs in child processes (`python -m jaxmia.<program>`) with its smallest config. A kill lands
when a file appears (polled) or, for a point that lasts milliseconds, inside a function: the child is then
started by `_KILLING_CHILD`, which wraps that function to SIGKILL its own process before or after its n-th
call and runs the program unchanged.

One uninterrupted run of the quick study (one seed, one α) is the reference of the study and of its stages:
training, the attack and the evaluation are run with the configs its cell recorded (`config.json`,
`summary.json`, `report.json`), so their results must equal the cell's. GAN training has its own reference.
The tests' runs start together, two at a time (the machine's cores), each test waiting for its own.
The children share a persistent XLA cache and compile without XLA's backend optimisations (half the compile
time); what is tested, resuming and exporting, does not depend on them, and every run here compiles alike.
"""
import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import start_program
from jaxmia import model_store, models

_KILLING_CHILD = """
import importlib, os, runpy, signal, sys
program, target, nth, when, *args = sys.argv[1:]
module_name, _, qualname = target.partition(":")
owner = importlib.import_module(module_name)
*path, name = qualname.split(".")
for part in path:
  owner = getattr(owner, part)
real, calls = getattr(owner, name), []

def killing(*a, **k):
  calls.append(1)
  if len(calls) == int(nth) and when == "before":
    os.kill(os.getpid(), signal.SIGKILL)
  out = real(*a, **k)
  if len(calls) == int(nth) and when == "after":
    os.kill(os.getpid(), signal.SIGKILL)
  return out

setattr(owner, name, killing)
sys.argv = [program, *args]
runpy.run_module(program, run_name="__main__", alter_sys=True)
"""

# Inside an export: orbax has started writing the variables into `<folder>.jaxmia-partial`
# (`model_store.save_model`; checkpoints are written by CheckpointManager, not by this class).
EXPORT_WRITING = "orbax.checkpoint:StandardCheckpointer.save"
TIMEOUT = 600

pytestmark = pytest.mark.slow  # end-to-end runs: about 5 CPU-minutes, two at a time


@pytest.fixture(scope="module")
def child_env(tmp_path_factory):
  """Unoptimised XLA, and a compilation cache of this module's own: these children are killed at any point, also
  while writing a cache entry, which must not reach the other tests' cache (conftest)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
  return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla_cache")), "XLA_FLAGS": flags}


class Run:
  """A child `python -m program *args` logging to `log`; `kill_at=(target, n, 'before'|'after')` kills it at
  the n-th call of `target` ('module:attribute')."""

  def __init__(self, env, log: pathlib.Path, program: str, *args: str, kill_at=None):
    self.log = log
    command = ("-m", program) if kill_at is None else ("-c", _KILLING_CHILD, program, *map(str, kill_at))
    with log.open("w") as out:
      self.proc = start_program(*command, *args, env=env, stdout=out, stderr=subprocess.STDOUT)

  def wait(self, expected: int = 0) -> None:
    """Waits for the end; asserts the exit code (-9: killed by SIGKILL)."""
    code = self.proc.wait(timeout=TIMEOUT)
    assert code == expected, f"exit code {code}, expected {expected}; {self.log}:\n{self.log.read_text()[-3000:]}"

  def kill_when(self, path: pathlib.Path) -> None:
    """SIGKILLs the run as soon as `path` exists (polled); asserts that it was still running then."""
    deadline = time.monotonic() + TIMEOUT
    while not path.exists() and self.proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    assert path.exists(), f"{path} never appeared; {self.log}:\n{self.log.read_text()[-3000:]}"
    self.proc.send_signal(signal.SIGKILL)
    self.wait(-signal.SIGKILL)


class Program:
  """A program's command line for any workdir; the logs of a workdir's runs are numbered beside it."""

  def __init__(self, env, program: str, *args: str, workdir_flag: str = "--workdir"):
    self.env, self.program, self.args, self.flag = env, program, args, workdir_flag

  def start(self, workdir: pathlib.Path, kill_at=None) -> Run:
    count = len(list(workdir.parent.glob(f"{workdir.name}.*.log")))
    return Run(self.env, workdir.parent / f"{workdir.name}.{count}.log", self.program, *self.args,
               f"{self.flag}={workdir}", kill_at=kill_at)

  def run(self, workdir: pathlib.Path, kill_at=None) -> None:
    """Runs to the end, or with `kill_at` until killed there."""
    self.start(workdir, kill_at).wait(-signal.SIGKILL if kill_at else 0)


def config_file(path: pathlib.Path, config: dict) -> str:
  """A `--config=` file of the recorded `config` (JSON lists back to the tuples the config files write)."""
  tuples = lambda x: {k: tuples(v) for k, v in x.items()} if isinstance(x, dict) else (
      tuple(map(tuples, x)) if isinstance(x, list) else x)
  path.write_text("from ml_collections import ConfigDict\n\n\ndef get_config():\n"
                  f"  return ConfigDict({tuples(config)!r})\n")
  return f"--config={path}"


# ------------------------------------------------------------------------------------------------------------
# Comparisons: arrays bit for bit (dtype and shape included), files byte for byte, JSON without timings.


def assert_same_trees(actual, expected, what: str) -> None:
  leaves, structure = jax.tree_util.tree_flatten_with_path(actual)
  expected_leaves, expected_structure = jax.tree_util.tree_flatten_with_path(expected)
  assert structure == expected_structure, f"{what}: other structure"
  for (path, a), (_, e) in zip(leaves, expected_leaves):
    a, e, name = np.asarray(a), np.asarray(e), f"{what}{jax.tree_util.keystr(path)}"
    assert (a.dtype, a.shape) == (e.dtype, e.shape), (name, a.dtype, a.shape, e.dtype, e.shape)
    assert a.tobytes() == e.tobytes(), f"{name} differs"


def assert_same_weights(actual: pathlib.Path, expected: pathlib.Path) -> None:
  assert not actual.with_name(actual.name + model_store.PARTIAL_SUFFIX).exists()
  info = lambda folder: {k: v for k, v in model_store.read_info(folder).items() if k != "created"}
  assert info(actual) == info(expected)
  assert_same_trees(model_store.load_variables(actual), model_store.load_variables(expected), str(actual))


def assert_same_npz(actual: pathlib.Path, expected: pathlib.Path) -> None:
  with np.load(actual) as a, np.load(expected) as e:
    assert sorted(a.files) == sorted(e.files)
    assert_same_trees(dict(a), dict(e), str(actual))


def assert_same_files(actual: pathlib.Path, expected: pathlib.Path, *patterns: str) -> None:
  for pattern in patterns:
    names = sorted(p.relative_to(expected) for p in expected.glob(pattern))
    assert names and names == sorted(p.relative_to(actual) for p in actual.glob(pattern)), pattern
    for name in names:
      assert (actual / name).read_bytes() == (expected / name).read_bytes(), name


def without_timings(path: pathlib.Path) -> dict:
  value = json.loads(path.read_text())
  value.pop("timings")
  return value


def report_numbers(path: pathlib.Path) -> dict:
  """What an evaluation's report.json says of the attack (its settings also name the folders it read)."""
  report = json.loads(path.read_text())
  return {key: report[key] for key in ("metrics", "unavailable", "details", "files", "grid_caption")}


# ------------------------------------------------------------------------------------------------------------
# The runs go to two threads (the machine's cores), each test's sequence submitted at the module's start
# (`all_runs_first`): a `*_runs` fixture is a future of its runs, whose test waits for them and compares.

@pytest.fixture(scope="module")
def pool():
  pool = concurrent.futures.ThreadPoolExecutor(2)
  yield pool
  pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module", autouse=True)
def all_runs_first(request):
  for item in request.session.items:
    if getattr(item, "module", None) is request.module:
      for name in item.fixturenames:
        if name.endswith("_runs"):
          request.getfixturevalue(name)


CELL = pathlib.Path("seed_0", "alpha_+0.000")


@pytest.fixture(scope="module")
def study_program(child_env):
  return Program(child_env, "jaxmia.experiment", "--config=configs/digits_study.py", "--config.quick=True",
                 "--config.alphas=(0.0,)",
                 "--config.quick_settings.attack.attack.batch_size=4")  # stage 2 in 3 batches of 4 latents


@pytest.fixture(scope="module")
def evaluation_model(tmp_path_factory):
  """The study's shared evaluation model, placed where the study finds that stage done (its training, by
  jaxmia.train, is test_training's subject): the target's architecture with seeded random weights."""
  kwargs = dict(arch="resnet18", num_classes=10, base_channels=8)
  variables = models.create_classifier(**kwargs).init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
  return model_store.save_model(tmp_path_factory.mktemp("evaluation_model") / "model", variables,
                                kind="classifier", module_kwargs=kwargs)


def new_study(workdir: pathlib.Path, evaluation_model) -> pathlib.Path:
  shutil.copytree(evaluation_model, workdir / "evaluation_model" / "model")
  return workdir


@pytest.fixture(scope="module")
def study_reference_runs(pool, study_program, evaluation_model, tmp_path_factory):
  """The uninterrupted study (a future of its workdir)."""
  workdir = new_study(tmp_path_factory.mktemp("reference") / "study", evaluation_model)
  return pool.submit(lambda: study_program.run(workdir) or workdir)


def cell_config(study_reference_runs, path: str, key: str | None = None) -> dict:
  """A config the reference study's cell recorded (once the study has run)."""
  recorded = json.loads((study_reference_runs.result() / CELL / path).read_text())
  return recorded[key] if key else recorded


# ------------------------------------------------------------------------------------------------------------
# GAN training: its reference, then a run killed while its second checkpoint is written, one killed inside the
# second export (G_ema's: it marks a finished run, so D comes first), and one to the end.

def gan_training(env, reference: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
  program = Program(env, "jaxmia.gan", "--config=configs/gan_digits.py:smoke")  # 4 iterations
  program.run(reference)
  # Killed as orbax writes checkpoint 4 in the background (saving it waited for checkpoint 2 to be written).
  program.run(workdir, kill_at=("orbax.checkpoint:CheckpointManager.save", 2, "after"))
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4.orbax-checkpoint-tmp"]
  program.run(workdir, kill_at=(EXPORT_WRITING, 2, "after"))
  assert (workdir / "discriminator" / model_store.INFO_FILE).exists()
  assert (workdir / f"generator{model_store.PARTIAL_SUFFIX}").is_dir() and not (workdir / "generator").exists()
  program.run(workdir)
  return workdir


@pytest.fixture(scope="module")
def gan_runs(pool, child_env, tmp_path_factory):
  reference = tmp_path_factory.mktemp("reference") / "gan"
  return reference, pool.submit(gan_training, child_env, reference, tmp_path_factory.mktemp("gan") / "gan")


def test_gan_training(gan_runs):
  reference, runs = gan_runs
  workdir = runs.result()
  for network in ("generator", "discriminator"):
    assert_same_weights(workdir / network, reference / network)
  assert_same_files(workdir, reference, "samples/*.png")


# ------------------------------------------------------------------------------------------------------------
# Training: killed after its first checkpoint, then inside the export.

def training(env, study_reference_runs, workdir: pathlib.Path) -> pathlib.Path:
  config = cell_config(study_reference_runs, "target/config.json")
  assert config["num_epochs"] == 2 and config["batch_size"] == 32  # 2 epochs of 5 steps
  program = Program(env, "jaxmia.train", config_file(workdir.parent / "train_config.py", config))
  program.start(workdir).kill_when(workdir / "checkpoints" / "5")  # mid-training: epoch 1's checkpoint is written
  assert not (workdir / "model").exists()
  program.run(workdir, kill_at=(EXPORT_WRITING, 1, "after"))  # resumed, then killed while exporting
  assert (workdir / f"model{model_store.PARTIAL_SUFFIX}").is_dir() and not (workdir / "model").exists()
  program.run(workdir)
  return workdir


@pytest.fixture(scope="module")
def training_runs(pool, child_env, study_reference_runs, tmp_path_factory):
  return pool.submit(training, child_env, study_reference_runs, tmp_path_factory.mktemp("training") / "train")


def test_training(training_runs, study_reference_runs):
  expected = study_reference_runs.result() / CELL / "target" / "model"
  assert_same_weights(training_runs.result() / "model", expected)


# ------------------------------------------------------------------------------------------------------------
# The attack: killed in stage 2, after its first batch.

def attack(env, study_reference_runs, workdir: pathlib.Path) -> pathlib.Path:
  config = cell_config(study_reference_runs, "attack/summary.json", "config")
  program = Program(env, "jaxmia.attack", config_file(workdir.parent / "attack_config.py", config))
  program.run(workdir, kill_at=("jaxmia.attack.optimize:optimize_latents", 2, "before"))
  assert sorted(p.name for p in (workdir / "stage2").iterdir()) == ["batch_00000.npz"]
  program.run(workdir)
  return workdir


@pytest.fixture(scope="module")
def attack_runs(pool, child_env, study_reference_runs, tmp_path_factory):
  return pool.submit(attack, child_env, study_reference_runs, tmp_path_factory.mktemp("attack") / "attack")


def test_attack(attack_runs, study_reference_runs):
  workdir, expected = attack_runs.result(), study_reference_runs.result() / CELL / "attack"
  assert_same_npz(workdir / "latents.npz", expected / "latents.npz")
  assert without_timings(workdir / "summary.json") == without_timings(expected / "summary.json")
  assert_same_files(workdir, expected, "images/*.png")  # (npz files hold their write time; arrays compared)


# ------------------------------------------------------------------------------------------------------------
# The evaluation: killed before training its student (the features of the training images are cached by then).

def evaluation(env, study_reference_runs, workdir: pathlib.Path) -> pathlib.Path:
  config = cell_config(study_reference_runs, "attack/evaluation/report.json", "config")
  program = Program(env, "jaxmia.evaluate", config_file(workdir.parent / "evaluate_config.py", config),
                    f"--run_dir={study_reference_runs.result() / CELL / 'attack'}",
                    "--config.feature_cache_dir=",  # its own cache, in --out_dir
                    workdir_flag="--out_dir")
  program.run(workdir, kill_at=("jaxmia.student:knowledge_extraction_score", 1, "before"))
  assert [p.name for p in workdir.iterdir()] == ["feature_cache"]
  assert len(list((workdir / "feature_cache").rglob("class_*.npz"))) == 6  # 2 networks x 3 classes
  program.run(workdir)
  return workdir


@pytest.fixture(scope="module")
def evaluation_runs(pool, child_env, study_reference_runs, tmp_path_factory):
  return pool.submit(evaluation, child_env, study_reference_runs,
                     tmp_path_factory.mktemp("evaluation") / "evaluation")


def test_evaluation(evaluation_runs, study_reference_runs):
  workdir, expected = evaluation_runs.result(), study_reference_runs.result() / CELL / "attack" / "evaluation"
  assert report_numbers(workdir / "report.json") == report_numbers(expected / "report.json")
  assert_same_files(workdir, expected, "per_class.csv", "nearest_neighbours.png")


# ------------------------------------------------------------------------------------------------------------
# The study: killed inside its target's export, then while its evaluation writes the report's files.

def study(program: Program, evaluation_model, workdir: pathlib.Path) -> pathlib.Path:
  new_study(workdir, evaluation_model)
  program.run(workdir, kill_at=(EXPORT_WRITING, 1, "after"))
  cell = workdir / CELL
  assert (cell / "target" / f"model{model_store.PARTIAL_SUFFIX}").is_dir()
  program.run(workdir, kill_at=("jaxmia.report:run_markdown", 1, "before"))  # report.md's text
  assert (cell / "attack" / "evaluation" / "per_class.csv").exists()
  program.run(workdir)
  return workdir


@pytest.fixture(scope="module")
def study_runs(pool, study_program, evaluation_model, tmp_path_factory):
  return pool.submit(study, study_program, evaluation_model, tmp_path_factory.mktemp("study") / "study")


def test_study(study_runs, study_reference_runs):
  workdir, reference = study_runs.result(), study_reference_runs.result()
  cell, expected = workdir / CELL, reference / CELL
  assert_same_weights(cell / "target" / "model", expected / "target" / "model")
  assert_same_npz(cell / "attack" / "latents.npz", expected / "attack" / "latents.npz")
  evaluation, expected_evaluation = cell / "attack" / "evaluation", expected / "attack" / "evaluation"
  assert report_numbers(evaluation / "report.json") == report_numbers(expected_evaluation / "report.json")
  assert sorted(p.name for p in evaluation.iterdir()) == sorted(p.name for p in expected_evaluation.iterdir())
  assert_same_files(evaluation, expected_evaluation, "per_class.csv", "nearest_neighbours.png")
  assert without_timings(workdir / "study.json") == without_timings(reference / "study.json")
  assert_same_files(workdir, reference, "*.png", "per_class.csv")
