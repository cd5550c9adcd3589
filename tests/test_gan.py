"""StyleGAN2 training (jaxmia.gan): the loss terms and their gradients against NVlabs' PyTorch autograd, closed
forms of the schedule, R1 and Adam settings, w_avg and style mixing, and a smoke run whose resumed
continuation equals the uninterrupted run and whose exported networks load like converted NVlabs ones."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, nchw_to_nhwc, recipe
from flax import traverse_util

from jaxmia import gan, model_store
from jaxmia.config import load_file
from jaxmia.convert import stylegan2 as convert_sg2

gan_digits = load_file(REPO / "configs" / "gan_digits.py")
# Loss terms and gradients of NVlabs' networks (scripts/make_stylegan2_goldens.py, kind "GAN").
TRAIN_GOLDENS = sorted((REPO / "tests" / "golden").glob("stylegan2_train_golden_*.npz"))
BUFFERS = ("resample_filter", "w_avg", "noise_const")  # NVlabs state-dict entries that are not parameters


@pytest.mark.parametrize("path", TRAIN_GOLDENS, ids=lambda p: p.stem)
def test_loss_gradients_match_nvlabs(path):
  """G main, D main and R1 values and every parameter gradient equal PyTorch autograd through NVlabs' networks.

  The reference gradients (PyTorch layout) are mapped to Flax by the weight converter, which is linear in
  the arrays (transposes and reshapes), so equal gradients mean equal training updates for the same batch.
  """
  manifest, _, state, arrays = recipe.load_fixture(str(path))
  g_kwargs = manifest["spec"]["g_kwargs"]
  parts = {net: {k[2:]: v for k, v in state.items() if k.startswith(net + ".")} for net in "GD"}
  generator, g_vars = convert_sg2.stylegan2_from_torch((parts["G"], g_kwargs))
  discriminator, d_vars = convert_sg2.discriminator_from_torch((parts["D"], manifest["kwargs"]))
  z, reals = arrays["input/z"], nchw_to_nhwc(arrays["input/img"])

  def fakes_of(g_params):
    return generator.apply({**g_vars, "params": g_params}, z, noise_mode="const")

  def logits(d_params, images):
    return discriminator.apply({"params": d_params}, images)[:, 0]

  @jax.jit  # one compilation instead of hundreds of op-by-op dispatches
  def terms(g_params, d_params):
    fakes = fakes_of(g_params)
    loss_g, grad_g = jax.value_and_grad(lambda p: gan.generator_loss(logits(d_params, fakes_of(p))))(g_params)
    loss_d, grad_d = jax.value_and_grad(lambda p: gan.discriminator_loss(logits(p, fakes), logits(p, reals)))(
        d_params)
    r1 = gan.r1_penalty(discriminator, d_params, reals)
    grad_r1 = jax.grad(lambda p: jnp.mean(gan.r1_penalty(discriminator, p, reals)))(d_params)
    return fakes, loss_g, grad_g, loss_d, grad_d, r1, grad_r1

  fakes, loss_g, grad_g, loss_d, grad_d, r1, grad_r1 = terms(g_vars["params"], d_vars["params"])
  np.testing.assert_allclose(fakes, nchw_to_nhwc(arrays["output/fakes"]), rtol=1e-5, atol=1e-5)
  for ours, ref in ((loss_g, "loss_g"), (loss_d, "loss_d"), (r1, "r1")):
    np.testing.assert_allclose(ours, arrays[f"output/{ref}"], rtol=1e-5, atol=1e-7)

  for name, ours, parts_key, convert in (("grad_g_main", grad_g, "G", convert_sg2.generator_variables),
                                         ("grad_d_main", grad_d, "D", convert_sg2.discriminator_variables),
                                         ("grad_r1", grad_r1, "D", convert_sg2.discriminator_variables)):
    torch_grads = {k[len(name) + 8:]: v for k, v in arrays.items() if k.startswith(f"output/{name}/")}
    module = generator if parts_key == "G" else discriminator
    # Buffers keep their values; a parameter the term does not reach (no PyTorch gradient) takes zeros.
    full = {k: torch_grads.get(k, v if k.endswith(BUFFERS) else np.zeros_like(v)) for k, v in parts[parts_key].items()}
    assert len(torch_grads) > 10
    reference = traverse_util.flatten_dict(convert(module, full)["params"], sep="/")
    flat = traverse_util.flatten_dict(jax.device_get(ours), sep="/")
    assert set(flat) == set(reference)
    for key, value in flat.items():
      scale = np.abs(reference[key]).max()
      np.testing.assert_allclose(value, reference[key], rtol=1e-4, atol=1e-4 * scale + 1e-12,
                                 err_msg=f"{name} {key}")


def test_ema_beta_follows_nvlabs_rampup():
  config = gan_digits.get_config()  # batch 32, half-life 10 kimg, ramp-up 0.05
  assert float(gan.ema_beta(config, 0)) == 0.0  # G_ema starts as a copy of G
  # After 100 iterations 3,200 images are seen: ema_nimg = min(10,000, 3,200 * 0.05) = 160.
  np.testing.assert_allclose(float(gan.ema_beta(config, 100)), 0.5 ** (32 / 160), rtol=1e-6)
  # Late in training the half-life is the configured 10 kimg.
  np.testing.assert_allclose(float(gan.ema_beta(config, 10 ** 6)), 0.5 ** (32 / 10_000), rtol=1e-6)
  config.ema_rampup = None
  np.testing.assert_allclose(float(gan.ema_beta(config, 1)), 0.5 ** (32 / 10_000), rtol=1e-6)


class _QuadraticCritic(nn.Module):
  """D(x) = a * sum(x^2): dD/dx = 2 a x, so the R1 penalty of image x is 4 a^2 |x|^2."""

  @nn.compact
  def __call__(self, x):
    a = self.param("a", nn.initializers.constant(0.3), ())
    return (a * jnp.sum(jnp.square(x), axis=(1, 2, 3)))[:, None]


def test_r1_penalty_closed_form():
  critic = _QuadraticCritic()
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
  params = critic.init(jax.random.key(1), x)["params"]
  expected = 4 * 0.3 ** 2 * np.sum(np.square(np.asarray(x)), axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(gan.r1_penalty(critic, params, x)), expected, rtol=1e-5)


def test_adam_rescaled_for_lazy_regularisation():
  config = gan_digits.get_config()
  g_opt, d_opt = gan.optimizers(config)
  grads = {"w": jnp.array([0.5, -2.0, 1e-3])}
  # First Adam step with beta1 = 0: the update is -lr * g / (|g| + eps) = -lr * sign(g) (up to eps).
  for opt, lr in ((g_opt, 0.0025), (d_opt, 0.0025 * 16 / 17)):  # path length off: G is not rescaled
    updates, _ = opt.update(grads, opt.init(grads))
    np.testing.assert_allclose(np.asarray(updates["w"]), -lr * np.sign(np.asarray(grads["w"])), rtol=1e-4)
  config.pl_weight = 2.0
  g_opt, _ = gan.optimizers(config)
  updates, _ = g_opt.update(grads, g_opt.init(grads))
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.0025 * 4 / 5 * np.sign(np.asarray(grads["w"])),
                             rtol=1e-4)


def test_mapping_moves_w_avg_and_mixes_styles_at_one_cutoff():
  config = gan_digits.get_config("smoke")
  generator, _ = gan.create_networks(config)
  z = jax.random.normal(jax.random.key(1), (6, generator.z_dim))
  variables = generator.init(jax.random.key(0), z, method="mapping")  # the mapping network's variables only
  params, buffers = variables["params"], {"mapping": {"w_avg": jnp.full((generator.w_dim,), 0.5)}}
  plain = np.asarray(generator.apply({"params": params, "buffers": buffers}, z, method="mapping"))

  ws, new_buffers = gan._mapping(generator, params, buffers, z, jax.random.key(2), 0.0, 0.9)
  np.testing.assert_array_equal(np.asarray(ws), plain)
  mean = plain[:, 0].mean(axis=0)
  np.testing.assert_allclose(np.asarray(new_buffers["mapping"]["w_avg"]), mean + 0.9 * (0.5 - mean), rtol=1e-5)

  for seed in range(3):
    ws, _ = gan._mapping(generator, params, buffers, z, jax.random.key(seed), 1.0, 0.9)
    ws = np.asarray(ws)
    kept = np.all(ws == plain, axis=(0, 2))  # per layer: every sample keeps its own w
    cutoff = int(np.argmin(kept))
    assert 1 <= cutoff < generator.num_ws and kept[:cutoff].all() and not kept[cutoff:].any()
    np.testing.assert_array_equal(ws[:, cutoff:], np.broadcast_to(ws[:, cutoff:cutoff + 1], ws[:, cutoff:].shape))


def _leaves(state):
  return jax.tree.leaves(jax.device_get(state))


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
  """The smoke config (4 iterations, R1 every 2) run straight through and as 2 + 2 with a resume."""
  config = gan_digits.get_config("smoke")
  full_dir, split_dir = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("split")
  full = gan.train(config, full_dir)
  config.max_steps = 2
  half = gan.train(config, split_dir)
  assert int(half.step) == 2 and not (split_dir / "generator").exists()
  config.max_steps = 0
  resumed = gan.train(config, split_dir)
  return config, full_dir, full, split_dir, resumed


def test_resumed_run_equals_uninterrupted_run(smoke_runs):
  config, _, full, _, resumed = smoke_runs
  assert int(full.step) == int(resumed.step) == gan.total_steps(config) == 4
  for a, b in zip(_leaves(full), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  initial = gan.create_state(config, jax.random.fold_in(jax.random.key(config.seed), 0))
  for before, after in ((initial.d_params, full.d_params), (initial.g_params, full.g_params)):
    assert all(not np.array_equal(a, b) for a, b in zip(_leaves(before), _leaves(after)))
  w_avg = np.asarray(full.g_buffers["mapping"]["w_avg"])
  assert np.all(np.isfinite(w_avg)) and np.abs(w_avg).max() > 0
  # G_ema lags G: after 4 iterations with ramp-up, beta > 0, so it is neither G nor the initial weights.
  ema, g = jax.tree.leaves(full.ema_params), jax.tree.leaves(full.g_params)
  assert any(not np.array_equal(a, b) for a, b in zip(ema, g))


def test_exported_networks_load_like_converted_ones(smoke_runs):
  config, full_dir, full, _, _ = smoke_runs
  generator, g_vars = model_store.load_model(full_dir / "generator")
  assert generator == gan.create_networks(config)[0]  # the same module as training used
  assert model_store.read_info(full_dir / "generator")["module_kwargs"] == gan.generator_kwargs(config)
  for a, b in zip(jax.tree.leaves(g_vars), jax.tree.leaves(jax.device_get(gan.ema_variables(full)))):
    np.testing.assert_array_equal(a, b)
  z = jax.random.normal(jax.random.key(0), (config.num_samples, generator.z_dim))
  images = gan.compiled_sampler(gan.step_config(config))(g_vars, z)  # compiled by the training runs
  assert images.shape == (config.num_samples, 32, 32, 3) and np.all(np.isfinite(images))
  discriminator, d_vars = model_store.load_model(full_dir / "discriminator")
  logits = jax.jit(discriminator.apply)(d_vars, images)
  assert logits.shape == (4, 1) and np.all(np.isfinite(logits))
  samples = sorted(p.name for p in (full_dir / "samples").iterdir())  # every 2 iterations of 8 images
  assert samples == ["fakes_0000.000kimg.png", "fakes_0000.016kimg.png", "fakes_0000.032kimg.png", "reals.png"]


def test_resume_with_other_settings_is_refused(smoke_runs, tmp_path):
  del smoke_runs  # only for its compiled train step
  config = gan_digits.get_config("smoke")
  config.max_steps = 1
  gan.train(config, tmp_path)
  config.generator.channel_max = 8
  with pytest.raises(ValueError, match="generator"):
    gan.train(config, tmp_path)
