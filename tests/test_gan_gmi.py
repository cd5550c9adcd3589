"""jaxmia.gan_gmi: GMI's WGAN-GP (the gradient penalty against closed forms and finite differences, critic steps
lower the critic loss, a resumed run equals an uninterrupted one, the exported networks load)."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import gan_gmi, model_store
from jaxmia.config import load_file
from jaxmia.models import dcgan

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def smoke_config():
  return load_file(CONFIGS / "gan_gmi_numbers.py").get_config("smoke")


def test_gradient_penalty_closed_forms():
  rng = np.random.default_rng(0)
  reals, fakes = (rng.normal(size=(3, 4, 4, 2)).astype(np.float32) for _ in range(2))
  alpha = np.array([0.0, 0.3, 1.0], np.float32)
  # A linear critic <w, x>: its gradient is w everywhere, the penalty (|w| - 1)^2.
  w = rng.normal(size=(4, 4, 2)).astype(np.float32)
  linear = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  np.testing.assert_allclose(gan_gmi.gradient_penalty(linear, reals, fakes, jnp.asarray(alpha)),
                             (np.linalg.norm(w) - 1) ** 2, rtol=1e-5)
  # A quadratic critic |x|^2 / 2: its gradient is the point itself, x = reals + alpha (fakes - reals).
  quadratic = lambda x: 0.5 * jnp.sum(x ** 2, axis=(1, 2, 3))
  points = reals + alpha[:, None, None, None] * (fakes - reals)
  expected = np.mean((np.linalg.norm(points.reshape(3, -1), axis=1) - 1) ** 2)
  np.testing.assert_allclose(gan_gmi.gradient_penalty(quadratic, reals, fakes, jnp.asarray(alpha)), expected,
                             rtol=1e-5)


def test_gradient_penalty_of_the_critic_matches_finite_differences():
  """On GMI's critic: the penalty's gradient norms against central differences of the critic along each
  image's own gradient direction (the directional derivative along the unit gradient is the gradient norm)."""
  critic = dcgan.Discriminator(dim=4, image_size=32)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  variables = jax.jit(critic.init)(jax.random.key(1), x)
  score = jax.jit(lambda x: critic.apply(variables, x))
  grads = jax.grad(lambda x: jnp.sum(score(x)))(x)
  norms = np.linalg.norm(np.asarray(grads).reshape(2, -1), axis=1)
  unit = grads / norms[:, None, None, None]
  eps = 1e-2
  x64 = np.asarray(x, np.float64)
  slopes = (np.asarray(score(jnp.asarray(x64 + eps * unit, jnp.float32)), np.float64)
            - np.asarray(score(jnp.asarray(x64 - eps * unit, jnp.float32)), np.float64)) / (2 * eps)
  assert (norms > 0).all()
  np.testing.assert_allclose(slopes, norms, rtol=2e-2)
  penalty = jax.jit(gan_gmi.gradient_penalty, static_argnums=0)(score, x, x, jnp.zeros(2))  # alpha 0: at x itself
  np.testing.assert_allclose(penalty, np.mean((norms - 1) ** 2), rtol=1e-4)


def test_critic_steps_lower_the_critic_loss_on_a_toy_set():
  """Reals are two flat colours; the generator stays fixed (no G step); eight critic steps with the official
  Adam lower the critic loss on fixed fakes and interpolation points (first of all its gradient penalty: a fresh
  critic's gradient norms are far from 1)."""
  config = smoke_config()
  config.n_critic = 1000
  train_step = jax.jit(gan_gmi.make_train_step(config))
  generator, discriminator = gan_gmi.create_networks(config)
  state = gan_gmi.create_state(config, jax.random.key(0))
  reals = jnp.concatenate([jnp.full((4, 32, 32, 3), 0.8), jnp.full((4, 32, 32, 3), -0.6)])
  fakes, _ = jax.jit(lambda v, z: generator.apply(v, z, train=True, mutable=["batch_stats"]))(
      gan_gmi.generator_variables(state), jax.random.normal(jax.random.key(1), (8, 100)))
  alpha = jax.random.uniform(jax.random.key(2), (8,))

  @jax.jit
  def losses(d_params):
    scores = lambda x: discriminator.apply({"params": d_params}, x)
    penalty = gan_gmi.gradient_penalty(lambda u: scores(2 * u - 1), (reals + 1) / 2, (fakes + 1) / 2, alpha)
    return gan_gmi.critic_loss(scores(reals), scores(fakes), penalty, config.gp_weight)[0], penalty

  before, penalty_before = losses(state.d_params)
  g_params = state.g_params
  for _ in range(8):
    state, metrics = train_step(state, reals, jax.random.key(3))
  after, penalty_after = losses(state.d_params)
  assert float(after) < 0.5 * float(before) and float(penalty_after) < float(penalty_before)
  assert np.isnan(metrics["loss_g"]) and int(state.step) == 8
  for a, b in zip(jax.tree.leaves(g_params), jax.tree.leaves(state.g_params)):
    np.testing.assert_array_equal(a, b)  # no generator step before the n_critic-th iteration


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
  """The smoke config (6 iterations, a G step every 2nd) straight through and as 3 + 3 with a resume."""
  config = smoke_config()
  full_dir, split_dir = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("split")
  full = gan_gmi.train(config, full_dir)
  config.max_steps = 3
  half = gan_gmi.train(config, split_dir)
  assert int(half.step) == 3 and not (split_dir / "generator").exists()
  config.max_steps = 0
  resumed = gan_gmi.train(config, split_dir)
  return config, full_dir, full, resumed


def test_resumed_run_equals_uninterrupted_run(smoke_runs):
  config, _, full, resumed = smoke_runs
  assert int(full.step) == int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves(jax.device_get(full)), jax.tree.leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(a, b)
  initial = gan_gmi.create_state(config, jax.random.fold_in(jax.random.key(config.seed), 0))
  # Every parameter trained, except the critic's output bias: it cancels in mean D(x) - mean D(G(z)) and the
  # penalty, so the Wasserstein critic never moves it.
  d_before, d_after = ({name: dict(layer) for name, layer in params.items()}
                       for params in (jax.device_get(initial.d_params), jax.device_get(full.d_params)))
  np.testing.assert_array_equal(d_before["ls_5"].pop("bias"), d_after["ls_5"].pop("bias"))
  for before, after in ((d_before, d_after), (initial.g_params, full.g_params)):
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_exported_networks_load(smoke_runs):
  config, full_dir, full, _ = smoke_runs
  generator, g_vars = model_store.load_model(full_dir / "generator")
  discriminator, d_vars = model_store.load_model(full_dir / "discriminator")
  assert model_store.read_info(full_dir / "generator")["kind"] == "dcgan_generator"
  assert model_store.read_info(full_dir / "discriminator")["kind"] == "dcgan_discriminator"
  assert (generator, discriminator) == gan_gmi.create_networks(config)
  for a, b in zip(jax.tree.leaves(g_vars), jax.tree.leaves(jax.device_get(gan_gmi.generator_variables(full)))):
    np.testing.assert_array_equal(a, b)
  images = gan_gmi.compiled_sampler(gan_gmi.step_config(config))(g_vars, jnp.zeros((2, 100)))  # compiled by training
  assert images.shape == (2, 32, 32, 3) and jax.jit(discriminator.apply)(d_vars, images).shape == (2,)
  samples = sorted(p.name for p in (full_dir / "samples").iterdir())
  assert samples == ["fakes_0000000.png", "fakes_0000003.png", "fakes_0000006.png", "reals.png"]
