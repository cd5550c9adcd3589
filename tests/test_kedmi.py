"""KED-MI: the inversion-specific GAN's discriminator and losses against direct computations, its trainer (resume
equals an uninterrupted run, the exported networks load), the distributional attack's sampling and losses, a
class's result independent of its batch, and the attack run (resume after an interruption, the command line on
one device equal to the in-process run on 4 forced devices).
"""
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import recipe, run_program, save_random_classifier
from jaxmia import gan_kedmi, model_store
from jaxmia.attack import kedmi
from jaxmia.attack import run as attack_run
from jaxmia.config import load_file
from jaxmia.evaluate.attack_run import load_attack_run
from jaxmia.models import dcgan
from jaxmia.models.kedmi_discriminator import MinibatchDiscriminator, minibatch_similarity, variables_from_torch

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
RNG = np.random.default_rng(0)


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def lse(x):
  m = x.max(-1)
  return m + np.log(np.exp(x - m[:, None]).sum(-1))


def softplus(x):
  return np.log1p(np.exp(x))


# ------------------------------------------------------------------------------------------------------------
# The discriminator and the GAN's losses.

def test_minibatch_similarity_is_the_pairwise_sum_over_the_other_samples():
  projected = RNG.normal(size=(5, 3, 4)).astype(np.float32)
  expected = np.zeros((5, 3))
  for i in range(5):
    for j in range(5):
      if i != j:
        expected[i] += np.exp(-np.abs(projected[i] - projected[j]).sum(-1))
  np.testing.assert_allclose(minibatch_similarity(jnp.asarray(projected)), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(minibatch_similarity(jnp.asarray(projected[:1])), 0.0, atol=1e-7)  # alone: nothing


def test_minibatch_similarity_gradient_is_autodiffs_of_the_formula():
  """The written-out backward pass equals autodiff of the plain pairwise expression, weighted cotangents and a
  second derivative (through the custom rule's own ops) included."""
  projected = jnp.asarray(RNG.normal(size=(6, 3, 4)) * 0.3, jnp.float32)
  weights = jnp.asarray(RNG.normal(size=(6, 3)), jnp.float32)

  def plain(p):
    return jnp.sum(jnp.exp(-jnp.sum(jnp.abs(p[:, None] - p[None, :]), -1)), axis=0) - 1.0

  for fn in (lambda f: lambda p: jnp.sum(weights * f(p)), lambda f: lambda p: jnp.sum(jnp.tanh(f(p)) ** 2)):
    np.testing.assert_allclose(jax.grad(fn(minibatch_similarity))(projected), jax.grad(fn(plain))(projected),
                               rtol=1e-5, atol=1e-6)
  direction = jnp.asarray(RNG.normal(size=(6, 3, 4)), jnp.float32)
  hvp = lambda f: jax.jvp(jax.grad(lambda p: jnp.sum(weights * f(p))), (projected,), (direction,))[1]
  np.testing.assert_allclose(hvp(minibatch_similarity), hvp(plain), rtol=1e-4, atol=1e-5)


def test_discriminator_outputs_and_batch_coupling():
  d = MinibatchDiscriminator(num_classes=7, dim=4, minibatch_kernels=3, minibatch_kernel_dim=2)
  images = jnp.asarray(RNG.uniform(-1, 1, size=(4, 32, 32, 3)), jnp.float32)

  @jax.jit  # one compilation: initialise, then score the batch and its first image alone
  def init_and_apply(key, images):
    variables = d.init(key, images)
    return variables, d.apply(variables, images), d.apply(variables, images[:1])

  variables, (features, logits), (alone_features, alone_logits) = init_and_apply(jax.random.key(0), images)
  assert features.shape == (4, 16 * 2 * 2) and logits.shape == (4, 7)  # 4 dim channels on a 2x2 map
  assert variables["params"]["mbd1"]["T"].shape == (16 * 4, 3 * 2)
  # Features are per image; logits depend on the other images of the batch (minibatch discrimination) ...
  np.testing.assert_allclose(alone_features, features[:1], rtol=1e-4, atol=1e-5)  # a batch of 1 rounds differently
  assert not np.allclose(alone_logits, logits[:1], atol=1e-4)
  # ... and alone, the minibatch features are 0: the logits are the head applied to [features, 0].
  head = variables["params"]["fc_layer"]
  expected = np.concatenate([alone_features, np.zeros((1, 3))], -1) @ head["kernel"] + head["bias"]
  np.testing.assert_allclose(alone_logits, expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="divisible by 16"):
    d.apply(variables, images[:, :24, :24])


def test_discriminator_matches_the_official_pytorch_network():
  """The golden of scripts/make_kedmi_goldens.py: the official MinibatchDiscriminator (dim 8, 7 classes, 64x64) on
  recipe-rebuilt weights, converted with `variables_from_torch` (a DataParallel checkpoint's layout)."""
  manifest, _, state, arrays = recipe.load_fixture(str(pathlib.Path(__file__).parent / "golden" /
                                                       "kedmi_golden_discriminator64.npz"))
  variables = variables_from_torch({"state_dict": {f"module.{k}": v for k, v in state.items()}})
  d = MinibatchDiscriminator(num_classes=manifest["kwargs"]["n_classes"], dim=manifest["kwargs"]["dim"])
  features, logits = jax.jit(d.apply)(variables, jnp.asarray(np.transpose(arrays["input/x"], (0, 2, 3, 1))))
  np.testing.assert_allclose(features, arrays["output/features"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits, arrays["output/logits"], rtol=1e-4, atol=1e-5)


def test_discriminator_end_size():
  """end_size=4: at 64 the official network (same parameters and outputs); at 32 two 5x5 layers and the 3x3
  (dim, 2 dim, 4 dim channels) to 4 dim x 4 x 4 features; other sides raise."""
  x64 = jnp.asarray(RNG.uniform(-1, 1, size=(3, 64, 64, 3)), jnp.float32)
  official, explicit = MinibatchDiscriminator(num_classes=5, dim=4), MinibatchDiscriminator(5, 4, end_size=4)
  v = official.init(jax.random.key(0), x64)
  for a, b in zip(official.apply(v, x64), explicit.apply(v, x64)):
    np.testing.assert_array_equal(a, b)
  small = MinibatchDiscriminator(num_classes=5, dim=4, end_size=4)
  x32 = x64[:, ::2, ::2]
  variables = small.init(jax.random.key(0), x32)
  kernels = [variables["params"][f"layer{i}_conv"]["kernel"].shape for i in (1, 2, 3)]
  assert kernels == [(5, 5, 3, 4), (5, 5, 4, 8), (3, 3, 8, 16)] and "layer4_conv" not in variables["params"]
  features, logits = small.apply(variables, x32)
  assert features.shape == (3, 16 * 4 * 4) and logits.shape == (3, 5)
  for bad in (3, 16):  # not a power-of-two fraction; a single halving
    with pytest.raises(ValueError, match=f"end_size={bad}"):
      MinibatchDiscriminator(5, 4, end_size=bad).init(jax.random.key(0), x32)


def test_discriminator_loss_is_the_official_semi_supervised_loss():
  labelled, target, unlabelled, fake = (RNG.normal(size=(6, 5)).astype(np.float32) * 3 for _ in range(4))
  total, supervised, unsupervised = gan_kedmi.discriminator_loss(*map(jnp.asarray, (labelled, target, unlabelled,
                                                                                     fake)))
  p = np.exp(log_softmax(target))
  expected_supervised = -(p * log_softmax(labelled)).sum() / 6
  lu, lf = lse(unlabelled), lse(fake)
  expected_unsupervised = 0.5 * (softplus(lu).mean() - lu.mean() + softplus(lf).mean())
  np.testing.assert_allclose([supervised, unsupervised, total],
                             [expected_supervised, expected_unsupervised, expected_supervised + expected_unsupervised],
                             rtol=1e-5)
  # Real images pushed to large logits and fakes to small ones lower the unsupervised part.
  better = gan_kedmi.discriminator_loss(*map(jnp.asarray, (labelled, target, unlabelled + 5, fake - 5)))[2]
  assert float(better) < float(unsupervised)


def test_generator_loss_is_feature_matching_plus_summed_entropy():
  fake_features, real_features = RNG.normal(size=(6, 10)), RNG.normal(size=(8, 10)) + 0.5
  fake_logits = RNG.normal(size=(6, 5)) * 2
  total, matching, h = gan_kedmi.generator_loss(*map(jnp.asarray, (fake_features, real_features, fake_logits)),
                                                entropy_weight=1e-4)
  expected_matching = np.abs(fake_features.mean(0) - real_features.mean(0)).mean()
  p = np.exp(log_softmax(fake_logits))
  expected_entropy = -(p * np.log(p)).sum()  # summed over the batch, as the official HLoss
  np.testing.assert_allclose([matching, h, total],
                             [expected_matching, expected_entropy, expected_matching + 1e-4 * expected_entropy],
                             rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# The attack's sampling, losses and per-class independence.

def test_reparameterised_samples_follow_the_learned_distribution():
  mu = jnp.asarray(RNG.normal(size=8), jnp.float32)
  log_var = jnp.asarray(RNG.uniform(-2, 1.5, size=8), jnp.float32)
  z = np.asarray(jax.jit(kedmi.sample_latents, static_argnums=3)(jax.random.key(3), mu, log_var, 20000))
  sigma = np.exp(0.5 * np.asarray(log_var))
  np.testing.assert_allclose(z.mean(0), mu, atol=4 * sigma.max() / np.sqrt(20000))
  np.testing.assert_allclose(z.std(0), sigma, rtol=0.03)
  # Differentiable in (mu, log_var): d z / d mu = 1, d z / d log_var = eps * sigma / 2.
  eps = jnp.asarray(RNG.normal(size=(3, 8)), jnp.float32)
  d_mu, d_log_var = jax.grad(lambda m, lv: jnp.sum(kedmi.reparameterize(m, lv, eps)), argnums=(0, 1))(mu, log_var)
  np.testing.assert_allclose(d_mu, 3.0, rtol=1e-6)
  np.testing.assert_allclose(d_log_var, np.sum(np.asarray(eps), 0) * sigma / 2, rtol=1e-5)
  # The latent j of a class is the same however many are drawn.
  np.testing.assert_allclose(kedmi.sample_latents(jax.random.key(3), mu, log_var, 2), z[:2], rtol=1e-6, atol=1e-6)


def test_prior_and_identity_losses():
  logits = RNG.normal(size=(4, 6)).astype(np.float32) * 2
  np.testing.assert_allclose(kedmi.prior_loss(jnp.asarray(logits)),
                             softplus(lse(logits)).mean() - lse(logits).mean(), rtol=1e-5)
  np.testing.assert_allclose(kedmi.identity_loss(jnp.asarray(logits), 2, "ce"), -log_softmax(logits)[:, 2].mean(),
                             rtol=1e-5)
  others = np.delete(logits, 2, axis=1).max(1)
  np.testing.assert_allclose(kedmi.identity_loss(jnp.asarray(logits), 2, "max_margin"),
                             (others - logits[:, 2]).mean(), rtol=1e-5)


class TinyTarget(nn.Module):
  """A fast stand-in target: mean-pooled and subsampled pixels -> Dense, logits scaled up so that the tiny
  generator's small image changes matter."""
  num_classes: int = 5

  @nn.compact
  def __call__(self, x):
    pixels = jnp.concatenate([x.mean((1, 2)), x[:, ::8, ::8].reshape(x.shape[0], -1)], -1)
    return 30.0 * nn.Dense(self.num_classes)(pixels)


@pytest.fixture(scope="module")
def tiny_networks():
  generator = dcgan.Generator(latent_dim=6, dim=2, image_size=32)
  discriminator = MinibatchDiscriminator(num_classes=5, dim=2, minibatch_kernels=3, minibatch_kernel_dim=2)
  target = TinyTarget()

  @jax.jit  # one compilation for the three initialisations
  def init():
    images = jnp.zeros((2, 32, 32, 3))
    generator_variables = generator.init(jax.random.key(1), jnp.zeros((2, 6)))
    # Kernels x4: PyTorch's initialisation of so narrow a generator leaves its images almost independent of z.
    generator_variables = jax.tree_util.tree_map_with_path(lambda p, x: x * 4 if p[-1].key == "kernel" else x,
                                                           generator_variables)
    return (generator_variables, discriminator.init(jax.random.key(2), images),
            target.init(jax.random.key(3), images))

  variables = init()
  view = kedmi.ViewSettings(clamp=True, center_crop=32, resize=32, dtype="float32")
  return kedmi.score_fns(generator, discriminator, target, view), variables, (generator, discriminator, target), view


def run_classes(tiny_networks, classes, settings, seed=7, num_samples=3, steps_per_call=4):
  fns, variables, modules, view = tiny_networks
  keys = kedmi.class_keys(jax.random.fold_in(jax.random.key(seed), 2), classes)
  sample_keys = kedmi.class_keys(jax.random.fold_in(jax.random.key(seed), 3), classes)
  return kedmi.attack_classes(np.asarray(classes), keys, sample_keys, fns=fns, variables=variables, latent_dim=6,
                              settings=settings, num_samples=num_samples, steps_per_call=steps_per_call,
                              cache=(modules, view))


def test_optimisation_lowers_the_loss_and_a_class_does_not_depend_on_its_batch(tiny_networks):
  settings = kedmi.KedmiSettings(iterations=10, samples_per_step=2, learning_rate=0.1)
  together = run_classes(tiny_networks, [0, 3, 4], settings)
  assert together.prior_loss.shape == together.identity_loss.shape == (3, 10)
  assert together.z.shape == (3, 3, 6) and together.scores.shape == (3, 3)
  assert np.all(np.isfinite(together.identity_loss)) and np.all(np.isfinite(together.prior_loss))
  # The learned distributions have a lower expected identity loss than the start N(0, e I) (estimated on the
  # same 64 noise draws for both).
  fns, variables, modules, view = tiny_networks
  eps = jax.random.normal(jax.random.key(9), (64, 6))

  @jax.jit
  def expected_identity(mu, log_var, target):
    images = fns.generate(variables[0], kedmi.reparameterize(mu, log_var, eps))
    return kedmi.identity_loss(fns.target_logits(variables[2], images), target)

  for row, target in enumerate([0, 3, 4]):
    start = expected_identity(jnp.zeros(6), jnp.ones(6), target)
    assert float(expected_identity(together.mu[row], together.log_var[row], target)) < float(start) - 0.5
  # The final samples are mu + sigma * eps of the learned distribution.
  key = kedmi.class_keys(jax.random.fold_in(jax.random.key(7), 3), [3])[0]
  np.testing.assert_allclose(together.z[1], kedmi.sample_latents(key, together.mu[1], together.log_var[1], 3),
                             rtol=1e-6)
  # Class 3 with other classes, in another position (the same shapes: no new compilation).
  other = run_classes(tiny_networks, [3, 1, 2], settings)
  for name in kedmi.BatchResult._fields:
    np.testing.assert_allclose(getattr(other, name)[0], getattr(together, name)[1], rtol=1e-6, atol=1e-7,
                               err_msg=name)
  other_seed = run_classes(tiny_networks, [0, 3, 4], settings, seed=8)
  assert not np.allclose(other_seed.mu, together.mu)


# ------------------------------------------------------------------------------------------------------------
# The GAN trainer and the attack run on the smoke configs.

@pytest.fixture(scope="module")
def gan_runs(tmp_path_factory):
  """The smoke GAN (against a random target) run straight through and as 3 + 3 iterations with a resume."""
  folder = tmp_path_factory.mktemp("kedmi")
  save_random_classifier(folder / "target", seed=0, size=32, arch="resnet18", num_classes=10, base_channels=4)
  config = load_file(CONFIGS / "gan_kedmi_numbers.py").get_config("smoke")
  config.target = str(folder / "target")
  full = gan_kedmi.train(config, folder / "gan")
  config.max_steps = 3
  half = gan_kedmi.train(config, folder / "gan_split")
  assert int(half.step) == 3 and not (folder / "gan_split" / "generator").exists()
  config.max_steps = 0
  resumed = gan_kedmi.train(config, folder / "gan_split")
  return folder, config, full, resumed


@pytest.mark.slow
def test_gan_resumes_to_the_uninterrupted_result_and_exports(gan_runs):
  folder, config, full, resumed = gan_runs
  assert int(full.step) == int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves(jax.device_get(full)), jax.tree.leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(a, b)
  initial = gan_kedmi.create_state(config, 10, jax.random.fold_in(jax.random.key(config.seed), 0))
  for before, after in ((initial.d_params, full.d_params), (initial.g_params, full.g_params)):
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  generator, g_vars = model_store.load_model(folder / "gan" / "generator")
  discriminator, d_vars = model_store.load_model(folder / "gan" / "discriminator")
  assert isinstance(generator, dcgan.Generator) and isinstance(discriminator, MinibatchDiscriminator)
  assert discriminator.num_classes == 10 and generator.image_size == 32
  images = jax.jit(generator.apply)(g_vars, jnp.zeros((2, 100)))
  assert images.shape == (2, 32, 32, 3) and float(jnp.abs(images).max()) <= 1.0
  config.seed = 1
  with pytest.raises(ValueError, match="seed"):
    gan_kedmi.train(config, folder / "gan")


def attack_config(folder):
  config = load_file(CONFIGS / "attack_kedmi_numbers.py").get_config("smoke")
  config.generator, config.discriminator = str(folder / "gan" / "generator"), str(folder / "gan" / "discriminator")
  config.target = str(folder / "target")
  return config


@pytest.fixture(scope="module")
def full_attack(gan_runs, tmp_path_factory):
  """The smoke attack in this process on the 4 forced devices: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("kedmi_attack") / "run"
  return workdir, attack_run.run_attack(attack_config(gan_runs[0]), workdir)


@pytest.mark.slow
def test_interrupted_attack_resumes_to_the_uninterrupted_result(gan_runs, full_attack, tmp_path, monkeypatch):
  config = attack_config(gan_runs[0])
  full_dir, summary = full_attack
  real, calls = kedmi.attack_classes, []

  def interrupted_after_one_batch(*args, **kwargs):
    if calls:
      raise KeyboardInterrupt
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(kedmi, "attack_classes", interrupted_after_one_batch)
  with pytest.raises(KeyboardInterrupt):
    attack_run.run_attack(config, tmp_path / "resumed")
  assert sorted(p.name for p in (tmp_path / "resumed" / "kedmi").iterdir()) == ["batch_00000.npz"]
  calls.clear()
  monkeypatch.setattr(kedmi, "attack_classes", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
  resumed = attack_run.run_attack(config, tmp_path / "resumed")
  assert len(calls) == 1  # only the unfinished batch ran again
  with np.load(full_dir / "latents.npz") as full, np.load(tmp_path / "resumed" / "latents.npz") as again:
    assert sorted(full.files) == sorted(again.files)
    for name in full.files:
      np.testing.assert_array_equal(full[name], again[name], err_msg=name)
    latents = {name: full[name] for name in full.files}
  assert summary["kind"] == resumed["kind"] == "kedmi" and summary["num_classes_attacked"] == 6
  np.testing.assert_array_equal(latents["targets"], np.repeat(np.arange(6), 2))
  assert latents["mu"].shape == (6, 100) and latents["prior_loss"].shape == (6, 6)
  # The run's latents are the final samples of each class's distribution, all selected; jaxmia.evaluate reads them.
  run = load_attack_run(full_dir)
  assert run.optimized_w.shape == (12, 1, 100) and len(run.selected) == 12
  np.testing.assert_allclose(summary["mean_final_score_selected"], latents["final_scores"].mean(), rtol=1e-6)
  assert sorted(p.name for p in (full_dir / "images").iterdir()) == [f"class_{c:04d}.png" for c in range(6)]
  config.attack.learning_rate = 0.01
  with pytest.raises(ValueError, match="different settings"):
    attack_run.run_attack(config, tmp_path / "resumed")
  config.discriminator = str(gan_runs[0] / "target")  # a classifier, not the GAN's discriminator
  with pytest.raises(ValueError, match="not a KED-MI discriminator"):
    attack_run.run_attack(config, tmp_path / "wrong")
  assert not (tmp_path / "wrong").exists()


@pytest.mark.slow
def test_command_line_on_one_device_equals_four_devices(gan_runs, full_attack, tmp_path):
  folder = gan_runs[0]
  args = ["--config=configs/attack_kedmi_numbers.py:smoke", f"--workdir={tmp_path / 'run'}",
          f"--config.generator={folder / 'gan' / 'generator'}",
          f"--config.discriminator={folder / 'gan' / 'discriminator'}", f"--config.target={folder / 'target'}"]
  code, stderr = run_program("jaxmia.attack", *args, timeout=300)
  assert code == 0, stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["kind"] == "kedmi" and len(summary["devices"]) == 1 and len(full_attack[1]["devices"]) == 4
  with np.load(tmp_path / "run" / "latents.npz") as one, np.load(full_attack[0] / "latents.npz") as four:
    np.testing.assert_array_equal(one["targets"], four["targets"])
    for name in ("mu", "log_var", "optimized_w", "final_scores", "prior_loss", "identity_loss"):
      np.testing.assert_allclose(one[name], four[name], rtol=2e-4, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("variant", [None, "smoke"])
def test_config_has_the_official_defaults_and_bad_values_are_named(variant, tmp_path):
  config = load_file(CONFIGS / "attack_kedmi_numbers.py").get_config(variant)
  settings = kedmi.KedmiSettings.from_config(config.attack)
  official = kedmi.KedmiSettings()
  for name in ("learning_rate", "b1", "b2", "identity_weight", "identity_loss", "samples_per_step", "init_mu",
               "init_log_var"):
    assert getattr(settings, name) == getattr(official, name), name
  assert (official.iterations, official.learning_rate, official.identity_weight) == (2400, 0.02, 100.0)
  if variant is None:
    assert settings.iterations == 2400 and config.attack.num_samples == 5
  gan = load_file(CONFIGS / "gan_kedmi_numbers.py").get_config(variant)
  assert (gan.optimizer.lr, tuple(gan.optimizer.betas), gan.entropy_weight) == (2e-4, (0.5, 0.999), 1e-4)
  assert variant == "smoke" or (gan.batch_size, gan.n_critic, gan.num_epochs) == (64, 5, 20)  # official 120
  celeba = load_file(CONFIGS / "gan_kedmi_celeba64.py").get_config(variant)
  assert variant == "smoke" or (celeba.num_epochs, celeba.generator.dim, celeba.discriminator.dim) == (120, 64, 64)
  config.attack.samples_per_step, config.attack.identity_loss = 0, "l2"
  with pytest.raises(ValueError, match="attack.identity_loss.*attack.samples_per_step"):
    attack_run.run_attack(config, tmp_path / "bad")
  assert not (tmp_path / "bad").exists()
