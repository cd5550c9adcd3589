"""Training loop on the embedded digits (`configs/digits.py:smoke`, a slim ResNet-18 at 32x32): data-parallel
equivalence (4 devices vs 1, and 2 processes vs 1), exact resumption, export/reload, and clear errors."""
import json
import os
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, USER_XLA_FLAGS, start_program, with_overrides
from jaxmia import classifier, data, model_store, parallel, train
from jaxmia.config import load_file


def smoke_config(**overrides):
  return with_overrides(load_file(REPO / "configs" / "digits.py").get_config("smoke"), **overrides)


def assert_trees_close(a, b, **tolerances):
  chex.assert_trees_all_equal_structs(a, b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tolerances), a, b)


def run_steps(config, mesh, num_steps):
  """`num_steps` train steps on `mesh` with alternating smoothing factors; (losses, final variables)."""
  split = data.load_split(config.dataset, "train")
  module = train.create_model(config, split.num_classes)
  state = train.create_train_state(config, module, jax.random.key(0), 5, mesh)
  # The smoothing factor is an argument, so changing it must not retrace (at most one trace per run).
  chex.clear_trace_counter()
  step = classifier.jit_train_step(chex.assert_max_traces(train.make_train_step(config, split.num_classes), n=1),
                                   mesh)
  key = jax.device_put(jax.random.key(1), parallel.replicated(mesh))
  losses = []
  for i, batch in enumerate(data.batches(split, config.batch_size, seed=0, epoch=0)):
    if i == num_steps:
      break
    alpha = jax.device_put(jnp.float32((0.1, -0.05)[i % 2]), parallel.replicated(mesh))
    state, metrics = step(state, parallel.shard_batch(batch, mesh), key, alpha)
    losses.append(jax.device_get(metrics))
  return losses, jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


# The runs below use MID, whose bottleneck noise is one more random stream that data parallelism and resumption must
# reproduce.
MID = {"defense.name": "mid", "defense.mid.bottleneck_dim": 16}


def test_four_devices_match_one_device():
  # BatchNorm must see the global batch's statistics, not a device's quarter of it, and MID's noise the same draws.
  config = smoke_config(**MID)
  losses_1, variables_1 = run_steps(config, parallel.make_mesh(1), 3)
  losses_4, variables_4 = run_steps(config, parallel.make_mesh(4), 3)
  assert_trees_close(losses_1, losses_4, rtol=2e-5, atol=1e-6)
  assert_trees_close(variables_1, variables_4, rtol=1e-4, atol=5e-5)


def test_bido_sees_the_global_batch_on_four_devices():
  """BiDO's HSIC terms are of the whole batch's Gram matrices, not a device's quarter of them. Compared at the
  first step only: the normalized HSIC solves with K~ + 1e-5 m I (condition number up to ~1e5), which turns
  float32 rounding of another reduction order into percent-sized parameter differences within a few steps."""
  config = smoke_config(**{"defense.name": "bido"})
  (metrics_1,), _ = run_steps(config, parallel.make_mesh(1), 1)
  (metrics_4,), _ = run_steps(config, parallel.make_mesh(4), 1)
  assert metrics_1["hsic_x"] > 0 and metrics_1["hsic_y"] > 0
  assert_trees_close(metrics_1, metrics_4, rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  state, final = train.train_and_evaluate(smoke_config(**MID), workdir)
  return workdir, jax.device_get(state.params), final


def test_resume_mid_epoch_equals_uninterrupted(uninterrupted, tmp_path):
  _, params, final = uninterrupted
  # 5 steps per epoch: stop inside epoch 1 (after epoch 0's evaluation and checkpoint), then finish.
  state, _ = train.train_and_evaluate(smoke_config(max_steps=7, **MID), tmp_path)
  assert int(jax.device_get(state.step)) == 7
  state, resumed_final = train.train_and_evaluate(smoke_config(**MID), tmp_path)
  chex.assert_trees_all_equal(jax.device_get(state.params), params)
  assert resumed_final["test_accuracy"] == final["test_accuracy"]


def test_ctrl_c_checkpoints_the_last_step_and_resume_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch):
  _, params, _ = uninterrupted
  jit_train_step = classifier.jit_train_step

  def interrupted_after_three_steps(train_step, mesh):
    step, calls = jit_train_step(train_step, mesh), []

    def interrupting_step(*args):
      calls.append(None)
      if len(calls) == 4:
        raise KeyboardInterrupt  # as Ctrl-C between steps 3 and 4
      return step(*args)

    return interrupting_step

  with monkeypatch.context() as patch:
    patch.setattr(classifier, "jit_train_step", interrupted_after_three_steps)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(smoke_config(**MID), tmp_path)
  # Inside epoch 0 (5 steps), before any regular checkpoint: the interrupt saved step 3.
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [3]
  state, _ = train.train_and_evaluate(smoke_config(**MID), tmp_path)
  chex.assert_trees_all_equal(jax.device_get(state.params), params)


def test_exported_model_reproduces_reported_metrics(uninterrupted):
  workdir, params, final = uninterrupted
  assert final["epoch"] == 2 and 0 <= final["test_ece"] <= 1 and final["train_kl"] > 0
  assert (workdir / "config.json").exists() and list((workdir / "checkpoints").iterdir())
  module, variables = model_store.load_model(workdir / "model")
  assert type(module).__name__ == "MIDClassifier" and module.bottleneck_dim == 16
  chex.assert_trees_all_equal(variables["params"], params)
  images, labels = data.load_arrays(data.load_split(smoke_config().dataset, "test"))
  logits = jax.jit(module.apply)(variables, images.astype(np.float32) / 127.5 - 1.0)
  np.testing.assert_allclose(np.mean(np.argmax(logits, -1) == labels), final["test_accuracy"], atol=1e-6)
  np.testing.assert_allclose(np.mean(np.max(jax.nn.softmax(logits), -1)), final["test_confidence"], atol=1e-5)


def test_missing_dataset_directory_is_reported(tmp_path):
  config = smoke_config()
  config.dataset = data.get_dataset_config("facescrub")
  config.dataset.manual_dir = str(tmp_path / "no_such_dir")
  config.dataset.data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    train.train_and_evaluate(config, tmp_path / "run")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(uninterrupted, tmp_path):
  """Two processes with 2 CPU devices each (joined by jax.distributed over localhost) train the smoke config
  through the CLI and end with the parameters of the single-process, 4-device run."""
  _, params, _ = uninterrupted
  env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2",
         "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}  # the run's XLA cache is in os.environ (conftest)
  command = [sys.executable, "-m", "jaxmia.train", "--config=configs/digits.py:smoke", f"--workdir={tmp_path}",
             *(f"--config.{key}={value}" for key, value in MID.items())]
  processes = [subprocess.Popen(command, cwd=REPO, env={**env, "JAX_PROCESS_ID": str(i)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for p, output in zip(processes, outputs):
    assert p.returncode == 0, output[-3000:]
  _, variables = model_store.load_model(tmp_path / "model")
  assert_trees_close(variables["params"], params, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_digits_target_reaches_stated_accuracy_for_every_alpha(tmp_path):
  """The README's claim for `configs/digits.py:slim` (seed 0): at least 93% test accuracy for α = 0.1, 0 and
  -0.05, and label smoothing moves the mean confidence as it must: lowest for α = 0.1, highest for α = -0.05.
  Trained in a child compiled at XLA's default level, as users run it (three trainings: slow at level 0)."""
  script = (
      "import json, sys\n"
      "from jaxmia import train\n"
      "from jaxmia.config import load_file\n"
      "config = load_file('configs/digits.py').get_config('slim')\n"
      "config.label_smoothing = float(sys.argv[1])\n"
      "_, final = train.train_and_evaluate(config, sys.argv[2])\n"
      "print(json.dumps({k: float(v) for k, v in final.items()}))\n")
  final = {}
  for alpha in (0.1, 0.0, -0.05):
    with start_program("-c", script, str(alpha), str(tmp_path / f"alpha{alpha:g}"), env={"XLA_FLAGS": USER_XLA_FLAGS},
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
      out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    final[alpha] = json.loads(out.strip().splitlines()[-1])
  for alpha, metrics in final.items():
    assert metrics["test_accuracy"] >= 0.93, (alpha, metrics)
    assert metrics["label_smoothing"] == pytest.approx(alpha)  # the last epoch trains with the full factor
  assert final[0.1]["test_confidence"] < final[0.0]["test_confidence"] < final[-0.05]["test_confidence"]
