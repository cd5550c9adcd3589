"""Plug & Play Attack: selection rules, per-latent independence, device-count invariance, resume.

Closed-form tests use stand-in modules (a flat-colour "generator" and a mean-colour linear "classifier", whose
scores are known exactly); the optimisation tests use the real StyleGAN2 Generator and ResNet-18 at a tiny size.
"""
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from jaxmia import attack, losses, model_store, models, parallel
from jaxmia.attack import optimize, render
from jaxmia.attack import run as attack_run
from jaxmia.data import image_ops
from jaxmia.config import load_file
from jaxmia.models import xla_cpu
from jaxmia.models.stylegan2 import Generator

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name="attack_facescrub_ffhq.py", variant="smoke"):
  return load_file(CONFIGS / name).get_config(variant)


# ------------------------------------------------------------------------------------------------------------
# Stand-ins with known answers.

class FlatColourGenerator(nn.Module):
  """Generator interface; the image of `w` is flat, with colour `tanh(mean of its ws)` (w_dim = 3)."""
  z_dim: int = 3
  c_dim: int = 0
  w_dim: int = 3
  img_resolution: int = 8
  img_channels: int = 3

  @property
  def num_ws(self):
    return 2

  def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
    return jnp.broadcast_to(z[:, None, :], (z.shape[0], self.num_ws, self.w_dim))

  def synthesis(self, ws, noise_mode="const"):
    colour = jnp.tanh(ws.mean(axis=1))
    return jnp.broadcast_to(colour[:, None, None, :], (ws.shape[0], self.img_resolution, self.img_resolution, 3))


class MeanColourClassifier(nn.Module):
  """Logits = mean colour @ kernel; crops, resizes and flips of a flat image do not change them."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x):
    return x.mean(axis=(1, 2)) @ self.param("kernel", nn.initializers.normal(3.0), (3, self.num_classes))


def flat_colour_scores(w, kernel):
  """The exact target softmax of the stand-ins for latents `w` `[N, 3]`: `[N, C]`."""
  return np.asarray(jax.nn.softmax(jnp.tanh(jnp.asarray(w)) @ kernel, axis=-1))


@pytest.fixture(scope="module")
def stand_ins():
  generator, classifier = FlatColourGenerator(), MeanColourClassifier()
  variables = classifier.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  return generator, classifier, variables


# ------------------------------------------------------------------------------------------------------------
# Pure selection rules.

def test_top_candidates_per_class_takes_best_distinct_candidates():
  confidences = np.array([
      # class 0  1     2
      [0.10, 0.55, 0.20],  # candidate 0
      [0.80, 0.05, 0.15],  # candidate 1
      [0.50, 0.30, 0.20],  # candidate 2
      [0.60, 0.60, 0.90],  # candidate 3: the best for classes 1 and 2, second best for class 0
      [0.50, 0.10, 0.40],  # candidate 4: ties with candidate 2 for class 0
  ])
  targets = np.array([2, 0, 0, 1, 0, 0, 2])
  indices = attack.top_candidates_per_class(confidences, targets)
  # Class 0 takes its four best (1, 3, then the tie 2 before 4), class 1 its best, class 2 its two best;
  # candidate 3 serves all three classes but never one class twice.
  np.testing.assert_array_equal(indices, [3, 1, 3, 3, 2, 4, 4])
  for cls in (0, 1, 2):
    chosen = indices[targets == cls]
    assert len(set(chosen)) == len(chosen)
  with pytest.raises(ValueError, match="search_space_size"):
    attack.top_candidates_per_class(confidences, np.zeros(6, np.int32))


def test_top_per_class_keeps_best_scores_of_each_class():
  scores = np.array([0.2, 0.9, 0.4, 0.9, 0.1, 0.7, 0.3])
  targets = np.array([5, 1, 5, 5, 1, 5, 1])
  np.testing.assert_array_equal(attack.top_per_class(scores, targets, 2), [1, 6, 3, 5])
  np.testing.assert_array_equal(attack.top_per_class(scores, targets, 10), [1, 6, 4, 3, 5, 2, 0])


def test_resolve_targets():
  np.testing.assert_array_equal(attack.resolve_targets("all", 4), [0, 1, 2, 3])
  np.testing.assert_array_equal(attack.resolve_targets(3, 10), [0, 1, 2])
  np.testing.assert_array_equal(attack.resolve_targets("3", 10), [0, 1, 2])
  np.testing.assert_array_equal(attack.resolve_targets("[7, 2]", 10), [7, 2])
  np.testing.assert_array_equal(attack.resolve_targets((4, 4), 10), [4, 4])
  for bad in (11, "[3, 10]", "some"):
    with pytest.raises(ValueError, match="targets"):
      attack.resolve_targets(bad, 10)


# ------------------------------------------------------------------------------------------------------------
# Stages 1 and 3 on the stand-ins: the answer is known in closed form.

def test_initial_selection_picks_known_top_candidates(stand_ins):
  generator, classifier, variables = stand_ins
  config = load_config().candidates
  config.search_space_size, config.batch_size, config.resize = 20, 8, 8
  key = jax.random.key(3)
  targets = np.repeat([2, 0], 3)
  initial = attack.select_initial_latents(key, targets, generator=generator, generator_variables={},
                                          target_model=classifier, target_variables=variables, config=config,
                                          mesh=parallel.make_mesh(4))
  z = np.asarray(jax.random.normal(key, (20, 3)))
  expected = flat_colour_scores(z, variables["params"]["kernel"])
  for cls in (2, 0):
    np.testing.assert_array_equal(initial.indices[targets == cls], np.argsort(-expected[:, cls])[:3])
  np.testing.assert_allclose(initial.scores, expected[initial.indices, targets], rtol=1e-5)
  np.testing.assert_array_equal(initial.w, z[initial.indices][:, None, :])


def test_final_selection_keeps_known_most_robust_latents(stand_ins):
  generator, classifier, variables = stand_ins
  config = load_config().final_selection
  config.iterations, config.batch_size, config.samples_per_target, config.resize = 3, 8, 2, 8
  w = np.asarray(jax.random.normal(jax.random.key(5), (10, 1, 3)))
  targets = np.array([1, 3, 1, 1, 3, 1, 3, 1, 3, 3])
  keys = optimize.latent_keys(jax.random.key(6), np.arange(10))
  selection = attack.select_final_latents(w, targets, keys, generator=generator, generator_variables={},
                                          target_model=classifier, target_variables=variables, config=config,
                                          mesh=parallel.make_mesh(4))
  expected = flat_colour_scores(w[:, 0], variables["params"]["kernel"])[np.arange(10), targets]
  np.testing.assert_allclose(selection.scores, expected, rtol=1e-5)
  best = [np.flatnonzero(targets == c)[np.argsort(-expected[targets == c])[:2]] for c in (1, 3)]
  np.testing.assert_array_equal(selection.indices, np.concatenate(best))


def test_the_three_stages_compile_with_the_step_compiler_options(stand_ins, monkeypatch):
  """Stages 1-3 jit with `xla_cpu.step_compiler_options()` unless a section says 'default': options the compiler
  rejects make each one fail, and stage 2's lowering for a cost analysis (`lower_optimization`) compiles as the
  stage runs."""
  generator, classifier, variables = stand_ins
  monkeypatch.setattr(render, "_COMPILED", {})  # build the stages' jitted functions afresh
  monkeypatch.setattr(xla_cpu, "step_compiler_options", lambda: {xla_cpu.YNN_FUSION_OPTION: "NO_SUCH_TYPE"})
  config = load_config()
  config.candidates.search_space_size, config.candidates.batch_size, config.candidates.resize = 4, 4, 8
  config.final_selection.iterations, config.final_selection.batch_size, config.final_selection.resize = 1, 4, 8
  config.attack.num_steps, config.attack.resize = 1, 8
  w, targets = np.zeros((4, 1, 3), np.float32), np.arange(4)
  keys = optimize.latent_keys(jax.random.key(0), np.arange(4))
  models = dict(generator=generator, generator_variables={}, target_model=classifier, target_variables=variables)
  stages = [lambda: attack.select_initial_latents(jax.random.key(1), targets, config=config.candidates, **models),
            lambda: attack.optimize_latents(w, targets, keys, config=config.attack, **models),
            lambda: optimize.lower_optimization(w, targets, keys, config=config.attack, **models).compile(),
            lambda: attack.select_final_latents(w, targets, keys, config=config.final_selection, **models)]
  for stage in stages:
    with pytest.raises(Exception, match="NO_SUCH_TYPE"):
      stage()
  # A section's `xla_cpu_options = 'default'` compiles with XLA's own choices: the rejected options go unused.
  for section in (config.candidates, config.attack, config.final_selection):
    section.xla_cpu_options = "default"
  for stage in stages:
    stage()


class BatchCoupledDiscriminator(nn.Module):
  """Realism logit that mixes the batch (as StyleGAN2's minibatch-std layer does) unless it sees one image."""

  @nn.compact
  def __call__(self, images, c):
    means = images.mean(axis=(1, 2, 3))
    return (means * means.sum() + self.param("bias", nn.initializers.ones, ()))[:, None]


def test_stage2_options_keep_latents_independent_and_remat_is_exact(stand_ins):
  generator, classifier, variables = stand_ins
  discriminator = BatchCoupledDiscriminator()
  config = load_config().attack
  config.num_steps, config.resize, config.discriminator_loss_weight = 3, 8, 20.0
  config.identity_loss, config.clamp = "cross_entropy", True
  config.lr_schedule, config.lr_milestones = "multistep", (1,)
  # W+ latents (one w per layer). Latent 2 is bright and the others dark, so a realism logit computed on the
  # whole batch would push latent 2 the other way than the logit of latent 2 alone.
  w = np.array([-2.0, -2.0, 0.3, -2.0])[:, None, None] + 0.1 * np.asarray(jax.random.normal(jax.random.key(8),
                                                                                           (4, 2, 3)))
  targets = np.array([0, 3, 1, 3])
  keys = optimize.latent_keys(jax.random.key(9), np.arange(4))

  def run(rows, remat):
    config.remat = remat
    return np.asarray(attack.optimize_latents(
        w[rows], targets[rows], keys[rows], generator=generator, generator_variables={}, target_model=classifier,
        target_variables=variables, config=config, discriminator=discriminator,
        discriminator_variables=discriminator.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), None)))

  batch = run(np.arange(4), "none")
  assert batch.shape == w.shape and np.abs(batch - w).max() > 1e-3
  np.testing.assert_allclose(run(np.array([2]), "none")[0], batch[2], rtol=0, atol=1e-6)
  for remat in ("dots", "full"):
    np.testing.assert_allclose(run(np.arange(4), remat), batch, rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match="needs a discriminator"):
    attack.optimize_latents(w, targets, keys, generator=generator, generator_variables={}, target_model=classifier,
                            target_variables=variables, config=config)


def test_multistep_schedule_decays_like_pytorch_multisteplr():
  config = load_config().attack
  config.lr_schedule, config.lr_milestones, config.lr_gamma = "multistep", (3, 5), 0.1
  tx = optimize.make_optimizer(optimize.OptimizationSettings.from_config(config, resolution=1024))
  params = jnp.zeros(2)
  state, steps = tx.init(params), []
  for _ in range(7):  # a constant gradient: every Adam step moves by lr (bias-corrected m / sqrt(v) = 1)
    updates, state = tx.update(jnp.ones(2), state, params)
    steps.append(float(-updates[0]))
  np.testing.assert_allclose(steps, [5e-3] * 3 + [5e-4] * 2 + [5e-5] * 2, rtol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# Stage 2 on the real StyleGAN2 generator and ResNet-18 (tiny).

GENERATOR_KWARGS = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                        mapping_kwargs={"num_layers": 1}, synthesis_kwargs={"channel_base": 64, "channel_max": 8})
TARGET_KWARGS = dict(arch="resnet18", num_classes=3, base_channels=4)


def tiny_config():
  config = load_config()
  config.seed = 7
  config.targets = "[2, 0]"
  config.candidates.search_space_size = 12
  config.candidates.num_candidates = 8
  config.candidates.batch_size = 4
  config.attack.batch_size = 8
  config.attack.num_steps = 4
  config.attack.resize = 16                       # shared by all stages (a FieldReference)
  config.final_selection.iterations = 2
  config.final_selection.batch_size = 8
  config.final_selection.samples_per_target = 3
  return config


@pytest.fixture(scope="module")
def real():
  generator = Generator(**GENERATOR_KWARGS)
  generator_variables = generator.init(jax.random.key(0), jnp.zeros((1, 8)), None)
  target = models.create_classifier(**TARGET_KWARGS)
  target_variables = target.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
  w_init = generator.apply(generator_variables, jax.random.normal(jax.random.key(2), (8, 8)), None,
                           truncation_psi=0.5, truncation_cutoff=8, method="mapping")[:, :1]
  return dict(generator=generator, generator_variables=generator_variables, target_model=target,
              target_variables=target_variables, w_init=np.asarray(w_init), targets=np.arange(8) % 3,
              keys=optimize.latent_keys(jax.random.key(3), np.arange(8)), config=tiny_config())


def optimize_real(real, rows, mesh):
  return np.asarray(attack.optimize_latents(
      real["w_init"][rows], real["targets"][rows], real["keys"][rows], generator=real["generator"],
      generator_variables=real["generator_variables"], target_model=real["target_model"],
      target_variables=real["target_variables"], config=real["config"].attack, mesh=mesh))


@pytest.fixture(scope="module")
def optimized_on_4_devices(real):
  return optimize_real(real, np.arange(8), parallel.make_mesh(4))


def test_latent_trajectory_does_not_depend_on_its_batch(real, optimized_on_4_devices):
  assert np.abs(optimized_on_4_devices - real["w_init"]).max() > 1e-3  # the latents did move
  for i in range(8):
    alone = optimize_real(real, np.array([i]), mesh=None)
    np.testing.assert_allclose(alone[0], optimized_on_4_devices[i], rtol=0, atol=1e-6)


def test_four_devices_match_one_device(real, optimized_on_4_devices):
  one = optimize_real(real, np.arange(8), parallel.make_mesh(1))
  np.testing.assert_allclose(one, optimized_on_4_devices, rtol=0, atol=1e-6)

  def select(mesh):
    return attack.select_final_latents(
        optimized_on_4_devices, real["targets"], real["keys"], generator=real["generator"],
        generator_variables=real["generator_variables"], target_model=real["target_model"],
        target_variables=real["target_variables"], config=real["config"].final_selection, mesh=mesh)

  on_one, on_four = select(parallel.make_mesh(1)), select(parallel.make_mesh(4))
  np.testing.assert_allclose(on_one.scores, on_four.scores, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(on_one.indices, on_four.indices)
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    optimize_real(real, np.arange(6), parallel.make_mesh(4))


def optimize_with_telemetry(real, num_steps, counted=None):
  config = real["config"].attack.copy_and_resolve_references()
  config.num_steps = num_steps
  w, telemetry = attack.optimize_latents(
      real["w_init"], real["targets"], real["keys"], generator=real["generator"],
      generator_variables=real["generator_variables"], target_model=real["target_model"],
      target_variables=real["target_variables"], config=config, counted=counted, return_telemetry=True)
  return np.asarray(w), telemetry.as_dict()


def direct_telemetry(real, w, step, counted):
  """Identity loss and target confidence of latents `w` on the augmented views of attack step `step`, computed
  here from the networks (not through the attack's loss): `{name_stat: value}` over the counted latents."""
  config = real["config"].attack
  settings = optimize.OptimizationSettings.from_config(config, real["generator"].img_resolution)
  images = attack.synthesize(real["generator"], real["generator_variables"], jnp.asarray(w))
  view = attack.target_view(images, clamp=settings.clamp, center_crop=settings.center_crop, resize=settings.resize)
  view = image_ops.random_resized_crop(view, optimize.keys_at_step(real["keys"], step), settings.resize,
                                       settings.crop_scale, settings.crop_ratio)
  logits = np.asarray(real["target_model"].apply(real["target_variables"], view), np.float64)
  loss = np.asarray(losses.poincare_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(real["targets"])))
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  confidence = (probs / probs.sum(axis=1, keepdims=True))[np.arange(len(w)), real["targets"]]
  out = {}
  for name, values in (("identity_loss", loss[counted]), ("confidence", confidence[counted])):
    out.update({f"{name}_mean": values.mean(), f"{name}_min": values.min(), f"{name}_max": values.max()})
  return out


def test_telemetry_matches_a_direct_computation(real):
  """Row t of the telemetry: the loss and confidence of the latents after t steps on step t's views (the last
  row: the returned latents), over the counted latents only."""
  assert real["config"].attack.identity_loss == "poincare"
  counted = np.arange(8) < 6  # the last two rows stand for the padding of a last batch
  w_final, telemetry = optimize_with_telemetry(real, 4, counted)
  assert sorted(telemetry) == sorted(f"{n}_{s}" for n in ("identity_loss", "confidence") for s in ("mean", "min",
                                                                                                "max"))
  assert all(values.shape == (5,) for values in telemetry.values())
  assert np.ptp(telemetry["confidence_mean"]) > 1e-4  # the curve moves, so a wrong row would be caught
  for step in (0, 2, 4):
    w_step = real["w_init"] if step == 0 else (w_final if step == 4 else optimize_with_telemetry(real, step)[0])
    expected = direct_telemetry(real, w_step, step, counted)
    for name, value in expected.items():
      np.testing.assert_allclose(telemetry[name][step], value, rtol=2e-5, atol=1e-6, err_msg=f"{name} step {step}")
  # The padding rows are left out: counting them changes the statistics (and not the latents).
  w_all, telemetry_all = optimize_with_telemetry(real, 4)
  np.testing.assert_array_equal(w_all, w_final)
  assert not np.allclose(telemetry_all["confidence_mean"], telemetry["confidence_mean"])
  np.testing.assert_allclose(telemetry_all["identity_loss_mean"][4],
                             direct_telemetry(real, w_final, 4, np.ones(8, bool))["identity_loss_mean"], rtol=2e-5)


def test_telemetry_leaves_the_latents_bit_identical(real):
  """The latents equal, bit for bit, those of the attack's loop without telemetry (stage 2 as it was before:
  the gradient of the summed identity losses, `optimization_loop`, w and Adam state initialised in their own
  jitted function, compiled as the attack's step), seeded as the attack seeds it."""
  config = real["config"].attack
  generator, target_model = real["generator"], real["target_model"]
  settings = optimize.OptimizationSettings.from_config(config, generator.img_resolution)

  def without_telemetry(w, opt_state, targets, keys, generator_variables, target_variables):
    def total_loss(w, step_keys):
      images = optimize.synthesis_fn(generator, settings)(generator_variables, w)
      return jnp.sum(optimize.identity_losses(images, targets, step_keys, target_variables,
                                              target_model=target_model, settings=settings))

    gradient = lambda step, w, step_keys, carry: (jax.grad(total_loss)(w, step_keys), carry)
    return optimize.optimization_loop(gradient, w, opt_state, keys, settings)[:2]

  init = jax.jit(lambda w: (jnp.array(w, jnp.float32, copy=True),
                            optimize.make_optimizer(settings).init(jnp.asarray(w, jnp.float32))))
  reference, _ = jax.jit(without_telemetry, donate_argnums=(0, 1), compiler_options=xla_cpu.step_compiler_options())(
      *init(real["w_init"]), jnp.asarray(real["targets"], jnp.int32), real["keys"], real["generator_variables"],
      real["target_variables"])
  w, _ = optimize_with_telemetry(real, config.num_steps)
  assert np.abs(w - real["w_init"]).max() > 1e-3
  np.testing.assert_array_equal(w, np.asarray(reference))
  np.testing.assert_array_equal(optimize_real(real, np.arange(8), mesh=None), w)


# ------------------------------------------------------------------------------------------------------------
# The full run: outputs, and an interrupted run resumes to exactly the uninterrupted result.

@pytest.fixture(scope="module")
def weights(real, tmp_path_factory):
  folder = tmp_path_factory.mktemp("weights")
  model_store.save_model(folder / "generator", real["generator_variables"], kind="stylegan2_generator",
                         module_kwargs=GENERATOR_KWARGS)
  model_store.save_model(folder / "target", real["target_variables"], kind="classifier",
                         module_kwargs=TARGET_KWARGS)
  return folder


def test_interrupted_run_resumes_to_uninterrupted_result(weights, tmp_path, monkeypatch):
  config = tiny_config()
  config.generator, config.target = str(weights / "generator"), str(weights / "target")
  attack.run_attack(config, tmp_path / "full")

  real_optimize, calls = optimize.optimize_latents, []

  def interrupted_after_one_batch(*args, **kwargs):
    if calls:
      raise KeyboardInterrupt
    calls.append(1)
    return real_optimize(*args, **kwargs)

  monkeypatch.setattr(optimize, "optimize_latents", interrupted_after_one_batch)
  with pytest.raises(KeyboardInterrupt):
    attack.run_attack(config, tmp_path / "resumed")
  assert sorted(p.name for p in (tmp_path / "resumed" / "stage2").iterdir()) == ["batch_00000.npz"]

  def counted(*args, **kwargs):
    calls.append(1)
    return real_optimize(*args, **kwargs)

  monkeypatch.setattr(optimize, "optimize_latents", counted)
  calls.clear()
  summary = attack.run_attack(config, tmp_path / "resumed")
  assert len(calls) == 1  # only the unfinished batch was optimised again

  with np.load(tmp_path / "full" / "latents.npz") as full, np.load(tmp_path / "resumed" / "latents.npz") as resumed:
    assert sorted(full.files) == sorted(resumed.files)
    for name in full.files:
      np.testing.assert_array_equal(full[name], resumed[name], err_msg=name)
    np.testing.assert_array_equal(full["targets"], np.repeat([2, 0], 8))
    assert full["optimized_w"].shape == (16, 1, 8)
    np.testing.assert_array_equal(full["selected_targets"], [0, 0, 0, 2, 2, 2])
    np.testing.assert_array_equal(full["selected_w"], full["optimized_w"][full["selected_indices"]])
  assert summary["num_selected"] == 6
  assert json.loads((tmp_path / "full" / "summary.json").read_text())["config"]["attack"]["num_steps"] == 4

  # Stage 2's telemetry: saved with each batch, resumed like the latents, over all latents for TensorBoard.
  with np.load(tmp_path / "full" / "telemetry.npz") as full, np.load(tmp_path / "resumed" / "telemetry.npz") as resumed:
    assert sorted(full.files) == sorted(resumed.files)
    for name in full.files:
      np.testing.assert_array_equal(full[name], resumed[name], err_msg=name)
    telemetry = {name: full[name] for name in full.files}
  assert telemetry["identity_loss_mean"].shape == (2, 5)  # 16 latents in batches of 8; 4 steps + the result
  np.testing.assert_array_equal(telemetry["batch_latents"], [8, 8])
  with np.load(tmp_path / "full" / "stage2" / "batch_00001.npz") as batch:
    np.testing.assert_array_equal(batch["telemetry_confidence_max"], telemetry["confidence_max"][1])
  np.testing.assert_allclose(telemetry["all_confidence_mean"],
                             np.mean(telemetry["confidence_mean"].astype(np.float64), axis=0), rtol=1e-12)
  np.testing.assert_array_equal(telemetry["all_identity_loss_min"], telemetry["identity_loss_min"].min(axis=0))
  np.testing.assert_array_equal(summary["stage2_telemetry_last_step"]["confidence_max"],
                                telemetry["all_confidence_max"][-1])
  accumulator = event_accumulator.EventAccumulator(str(tmp_path / "resumed"))
  accumulator.Reload()
  assert sorted(accumulator.Tags()["scalars"]) == sorted(f"stage2/{n[4:]}" for n in telemetry if n.startswith("all_"))
  for tag in accumulator.Tags()["scalars"]:
    events = accumulator.Scalars(tag)
    assert [e.step for e in events] == list(range(5))
    np.testing.assert_array_equal([e.value for e in events],
                                  telemetry["all_" + tag.split("/")[1]].astype(np.float32), err_msg=tag)
  assert sorted(p.name for p in (tmp_path / "full" / "images").iterdir()) == ["class_0000.png", "class_0002.png"]

  config.seed = 8
  with pytest.raises(ValueError, match="different settings"):
    attack.run_attack(config, tmp_path / "resumed")


def test_combine_telemetry_weights_batches_by_their_latents():
  names = [f"{n}_{s}" for n in ("identity_loss", "confidence") for s in ("mean", "min", "max")]
  curves = [{name: np.array([v, v + 1.0]) for name in names} for v in (1.0, 4.0)]
  combined = attack_run.combine_telemetry(curves + [None], np.array([3, 1, 5]), 2)  # the third: no telemetry
  np.testing.assert_allclose(combined["confidence_mean"], [(3 * 1.0 + 1 * 4.0) / 4, (3 * 2.0 + 1 * 5.0) / 4])
  np.testing.assert_array_equal(combined["identity_loss_min"], [1.0, 2.0])
  np.testing.assert_array_equal(combined["identity_loss_max"], [4.0, 5.0])
  assert np.isnan(attack_run.combine_telemetry([None], np.array([2]), 3)["confidence_max"]).all()


@pytest.mark.parametrize("name", ["attack_facescrub_ffhq.py", "attack_celeba_ffhq.py", "attack_digits.py"])
@pytest.mark.parametrize("variant", [None, "smoke"])
def test_configs_resolve(name, variant):
  config = load_config(name, variant)
  settings = optimize.OptimizationSettings.from_config(config.attack, resolution=1024)
  assert settings.center_crop == (32 if name == "attack_digits.py" else 800)  # PPA's 800 of 1024 pixels
  for section in ("candidates", "final_selection"):
    assert config[section].center_crop == config.attack.center_crop  # one shared image pipeline
    assert config[section].resize == config.attack.resize
