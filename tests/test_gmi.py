"""GMI: the objective against a direct computation, the official momentum update in closed form, per-latent
independence; the attack run (resume after an interruption, the run layout the evaluation reads) and the command
line on the smoke config (one device equals the 4 forced devices)."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_program, save_random_classifier
from jaxmia import model_store
from jaxmia.attack import gmi
from jaxmia.attack import run as attack_run
from jaxmia.config import load_file
from jaxmia.evaluate.attack_run import load_attack_run
from jaxmia.models import dcgan

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
LATENT = 8
VIEW = gmi.ViewSettings(clamp=True, center_crop=32, resize=32, dtype="float32")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A tiny GMI generator and critic at 32x32 (PyTorch initialisation) and a random 3-class ResNet-18 target."""
  folder = tmp_path_factory.mktemp("gmi_weights")
  g_kwargs = dict(latent_dim=LATENT, dim=4, image_size=32, channels=3)
  d_kwargs = dict(dim=4, image_size=32)
  generator, discriminator = dcgan.Generator(**g_kwargs), dcgan.Discriminator(**d_kwargs)
  g_vars = jax.jit(generator.init)(jax.random.key(0), jnp.zeros((1, LATENT)))
  # BatchNorm's running statistics from batches of latents, as after training: at their initial (0, 1) the
  # small activations of a fresh generator would leave its images nearly constant in z.
  update_stats = jax.jit(lambda v, z: generator.apply(v, z, train=True, mutable=["batch_stats"])[1])
  for i in range(40):
    g_vars = {"params": g_vars["params"], **update_stats(g_vars, jax.random.normal(jax.random.key(i), (64, LATENT)))}
  d_vars = jax.jit(discriminator.init)(jax.random.key(2), jnp.zeros((1, 32, 32, 3)))
  model_store.save_model(folder / "generator", g_vars, kind="dcgan_generator", module_kwargs=g_kwargs)
  model_store.save_model(folder / "discriminator", d_vars, kind="dcgan_discriminator", module_kwargs=d_kwargs)
  save_random_classifier(folder / "target", seed=0, size=32, arch="resnet18", num_classes=3, base_channels=4)
  return folder


def networks(folder):
  return {name: model_store.load_model(folder / name) for name in ("generator", "discriminator", "target")}


def test_losses_against_a_direct_computation(weights):
  nets = networks(weights)
  (g, g_vars), (d, d_vars), (t, t_vars) = nets["generator"], nets["discriminator"], nets["target"]
  settings = gmi.GmiSettings(identity_weight=7.0, prior_weight=0.5, loss_batch=3)
  losses_fn = jax.jit(gmi.network_losses(g, d, t, VIEW, settings))
  z = jax.random.normal(jax.random.key(3), (3, LATENT))
  targets = jnp.array([2, 0, 1])
  losses = losses_fn(z, targets, (g_vars, d_vars, t_vars))
  # Each network alone (jitted: eager ResNet layers would compile one by one).
  images = np.asarray(jax.jit(g.apply)(g_vars, z))
  scores = np.asarray(jax.jit(d.apply)(d_vars, images), np.float64)
  logits = np.asarray(jax.jit(t.apply)(t_vars, images), np.float64)  # the view is the identity at 32x32
  log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1, keepdims=True)) \
      - logits.max(1, keepdims=True)
  identity = -log_probs[np.arange(3), [2, 0, 1]]
  np.testing.assert_allclose(losses.prior, -scores, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.identity, identity, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.total, (0.5 * -scores + 7.0 * identity) / 3, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.target_logit, logits[np.arange(3), [2, 0, 1]], rtol=1e-5, atol=1e-6)
  # Each latent's gradient is that of its own loss: its row does not change when the other latents (and their
  # classes) do.
  grad = jax.jit(lambda z, t: jax.grad(lambda z: jnp.sum(losses_fn(z, t, (g_vars, d_vars, t_vars)).total))(z))
  others = jax.random.normal(jax.random.key(5), (3, LATENT)).at[1].set(z[1])
  first, second = grad(z, targets), grad(others, jnp.array([1, 0, 0]))
  assert np.abs(first[1]).max() > 0
  np.testing.assert_allclose(first[1], second[1], rtol=1e-4, atol=1e-7)
  assert not np.allclose(first[0], second[0])


def test_momentum_step_is_the_official_update():
  """Two steps on the loss |z|^2 / 2 (gradient z), against the official code's arithmetic written out."""
  settings = gmi.GmiSettings(learning_rate=0.1, momentum=0.9, clip=1.0)
  z = np.array([[0.5, -0.2, 0.95]], np.float32)
  v = np.zeros_like(z)
  expected_z, expected_v = z.copy(), v.copy()
  for _ in range(2):
    v_prev = expected_v.copy()
    expected_v = 0.9 * expected_v - 0.1 * expected_z
    expected_z = np.clip(expected_z + (-0.9 * v_prev + 1.9 * expected_v), -1, 1)
    z, v = gmi.momentum_step(z, v, z, settings)
    np.testing.assert_allclose(z, expected_z, rtol=1e-6)
    np.testing.assert_allclose(v, expected_v, rtol=1e-6)
  # The clip acts on z only (the velocity keeps its unclipped value) and at +-clip.
  z, v = gmi.momentum_step(np.array([[0.9]]), np.array([[0.5]]), np.array([[-10.0]]), settings)
  assert float(z[0, 0]) == 1.0 and float(v[0, 0]) == pytest.approx(0.9 * 0.5 + 0.1 * 10)
  # On-device loop: the state stops at settings.iterations whatever the number of calls.
  loss_fn = lambda z, t: gmi.Losses(0.5 * jnp.sum(z ** 2, axis=1), z[:, 0], z[:, 0], z[:, 0])
  settings = gmi.GmiSettings(learning_rate=0.1, iterations=3)
  state = gmi.optimize(gmi.init_state(np.array([[0.5, -0.2]])), jnp.zeros(1, jnp.int32), loss_fn, settings, 5)
  z, v = np.array([[0.5, -0.2]]), np.zeros((1, 2))
  for _ in range(3):
    z, v = gmi.momentum_step(z, v, z, settings)
  assert int(state.step) == 3
  np.testing.assert_allclose(state.z, z, rtol=1e-6)


def test_a_latent_does_not_depend_on_its_batch(weights):
  nets = networks(weights)
  settings = gmi.GmiSettings(iterations=5)
  keys = jax.random.split(jax.random.key(4), 4)
  z0 = gmi.initial_latents(keys, LATENT)
  targets = np.array([0, 1, 2, 1])

  def attack(rows, steps_per_call):
    z, losses = gmi.attack_latents(
        z0[rows], targets[rows], generator=nets["generator"][0], generator_variables=nets["generator"][1],
        discriminator=nets["discriminator"][0], discriminator_variables=nets["discriminator"][1],
        target_model=nets["target"][0], target_variables=nets["target"][1], settings=settings, view=VIEW,
        steps_per_call=steps_per_call)
    return z, losses

  together, losses = attack(np.arange(4), 5)
  alone, _ = attack(np.array([2, 2, 3, 0]), 5)  # another batch and order (the same compiled program)
  np.testing.assert_allclose(together[[2, 3, 0]], alone[1:], rtol=1e-5, atol=1e-6)
  assert np.abs(together).max() <= 1.0                                  # clipped
  assert np.abs(together - np.clip(z0, -1, 1)).max() > 1e-3              # and moved by their gradients
  assert (losses.identity >= 0).all() and losses.total.shape == (4,)


def test_select_best_keeps_the_largest_scores_per_class():
  targets = np.array([0, 0, 0, 4, 4, 4])
  scores = np.array([0.1, 0.9, 0.5, 2.0, -1.0, 3.0])
  np.testing.assert_array_equal(gmi.select_best(targets, scores, 1), [1, 5])
  np.testing.assert_array_equal(gmi.select_best(targets, scores, 2), [1, 2, 5, 3])


# ------------------------------------------------------------------------------------------------------------
# The attack run.

def smoke_config(folder):
  config = load_file(CONFIGS / "attack_gmi_numbers.py").get_config("smoke")
  for name in ("generator", "discriminator", "target"):
    config[name] = str(folder / name)
  return config


@pytest.fixture(scope="module")
def full_run(weights, tmp_path_factory):
  """The smoke attack run in this process, on the 4 forced devices: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("gmi_full") / "run"
  return workdir, attack_run.run_attack(smoke_config(weights), workdir)


def test_interrupted_run_resumes_to_the_uninterrupted_result(weights, full_run, tmp_path, monkeypatch):
  config = smoke_config(weights)
  full_dir, summary = full_run
  real, calls = gmi.attack_latents, []

  def interrupted_after_one_batch(*args, **kwargs):
    if calls:
      raise KeyboardInterrupt
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(gmi, "attack_latents", interrupted_after_one_batch)
  with pytest.raises(KeyboardInterrupt):
    attack_run.run_attack(config, tmp_path / "resumed")
  assert sorted(p.name for p in (tmp_path / "resumed" / "gmi").iterdir()) == ["batch_00000.npz"]
  monkeypatch.setattr(gmi, "attack_latents", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
  calls.clear()
  resumed = attack_run.run_attack(config, tmp_path / "resumed")
  assert len(calls) == 1  # only the unfinished batch was optimised again
  assert resumed["final_losses"] == summary["final_losses"]

  with np.load(full_dir / "latents.npz") as full, np.load(tmp_path / "resumed" / "latents.npz") as again:
    assert sorted(full.files) == sorted(again.files)
    for name in full.files:
      np.testing.assert_array_equal(full[name], again[name], err_msg=name)
    latents = {name: full[name] for name in full.files}
  # The layout: class-major targets, [N, 1, latent] latents, the best restart of each class selected.
  np.testing.assert_array_equal(latents["targets"], [0, 0, 1, 1, 2, 2])
  assert latents["optimized_w"].shape == latents["initial_w"].shape == (6, 1, LATENT)
  for c in range(3):
    rows = np.flatnonzero(latents["targets"] == c)
    assert latents["selected_indices"][c] == rows[np.argmax(latents["final_scores"][rows])]
  assert summary["kind"] == "gmi" and summary["num_selected"] == 3
  run = load_attack_run(full_dir)  # what jaxmia.evaluate reads
  np.testing.assert_array_equal(run.selected_w, latents["optimized_w"][latents["selected_indices"]])
  assert sorted(p.name for p in (full_dir / "images").iterdir()) == [f"class_000{c}.png" for c in range(3)]

  config.seed = 8
  with pytest.raises(ValueError, match="different settings"):
    attack_run.run_attack(config, tmp_path / "resumed")


def test_command_line_runs_the_smoke_config_as_on_four_devices(weights, full_run, tmp_path):
  args = ["--config=configs/attack_gmi_numbers.py:smoke", f"--workdir={tmp_path / 'run'}",
          *(f"--config.{name}={weights / name}" for name in ("generator", "discriminator", "target"))]
  code, stderr = run_program("jaxmia.attack", *args, timeout=300)
  assert code == 0, stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["kind"] == "gmi" and len(summary["devices"]) == 1 and len(full_run[1]["devices"]) == 4
  # One device (the child process) and the 4 forced devices (this process) give the same attack.
  with np.load(tmp_path / "run" / "latents.npz") as one, np.load(full_run[0] / "latents.npz") as four:
    for name in ("targets", "selected_indices"):
      np.testing.assert_array_equal(one[name], four[name], err_msg=name)
    for name in ("initial_w", "optimized_w", "final_scores", "identity_loss", "prior_loss"):
      np.testing.assert_allclose(one[name], four[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("variant", [None, "smoke"])
def test_config_has_the_official_defaults_and_bad_values_are_named(variant, tmp_path):
  config = load_file(CONFIGS / "attack_gmi_numbers.py").get_config(variant)
  assert gmi.GmiSettings.from_config(config.attack) == gmi.GmiSettings(
      iterations=config.attack.iterations)  # every other knob official
  official = gmi.GmiSettings()
  assert (official.iterations, official.learning_rate, official.momentum, official.identity_weight,
          official.clip, official.loss_batch) == (1500, 0.02, 0.9, 100.0, 1.0, 100)
  if variant is None:
    assert config.attack.iterations == 1500 and config.attack.restarts == 5
  config.attack.momentum, config.attack.clip = 1.0, 0.0
  with pytest.raises(ValueError, match="attack.momentum.*attack.clip"):
    attack_run.run_attack(config, tmp_path / "bad")
  assert not (tmp_path / "bad").exists()
