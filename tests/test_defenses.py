"""MID and BiDO-HSIC: HSIC against an independent NumPy computation and its invariants, MID's KL against the
closed form for multivariate Gaussians, and the MID module's train/eval behaviour."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import defenses


def numpy_hsic(x, y, sigma):
  """Textbook HSIC: explicit pairwise distances, explicit centring matrix, trace."""
  x = x.reshape(len(x), -1).astype(np.float64)
  y = y.reshape(len(y), -1).astype(np.float64)
  m = len(x)

  def kernel(a):
    d = np.array([[np.sum((a[i] - a[j]) ** 2) for j in range(m)] for i in range(m)])
    return np.exp(-d / (2 * sigma**2 * a.shape[1]))

  h = np.eye(m) - np.ones((m, m)) / m
  return np.trace(kernel(x) @ h @ kernel(y) @ h) / (m - 1) ** 2


def test_hsic_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(24, 3, 4, 2)).astype(np.float32)
  y = np.tanh(x.reshape(24, -1)[:, :5]) + 0.3 * rng.normal(size=(24, 5)).astype(np.float32)
  for sigma in (0.5, 1.0, 5.0):
    np.testing.assert_allclose(defenses.hsic(x, y, sigma), numpy_hsic(x, y, sigma), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(defenses.hsic(x, y, sigma), defenses.hsic(y, x, sigma), rtol=1e-5)


def test_hsic_invariants():
  rng = np.random.default_rng(1)
  m = 1024
  x = rng.normal(size=(m, 8)).astype(np.float32)
  independent = rng.normal(size=(m, 8)).astype(np.float32)
  dependent = x**2 + 0.1 * rng.normal(size=(m, 8)).astype(np.float32)  # uncorrelated with x, but dependent
  self_dep = float(defenses.hsic(x, x, 1.0))
  indep = float(defenses.hsic(x, independent, 1.0))
  dep = float(defenses.hsic(x, dependent, 1.0))
  assert self_dep > 0
  # For independent samples only the estimator's O(1/m) bias is left: small, and shrinking with m.
  assert 0 < indep < 0.03 * self_dep
  assert indep < 0.5 * float(defenses.hsic(x[:m // 4], independent[:m // 4], 1.0))
  assert dep > 5 * indep
  # Tiny widths make K -> I, so HSIC -> tr(H) / (m-1)^2 = 1 / (m-1) for distinct points; huge widths make
  # K -> 11^T, which centring removes, so HSIC -> 0.
  np.testing.assert_allclose(defenses.hsic(x, independent, 1e-3), 1 / (m - 1), rtol=1e-5)
  assert float(defenses.hsic(x, dependent, 1e4)) < 1e-6 * dep
  # Shifting or permuting both samples together changes nothing.
  perm = rng.permutation(m)
  np.testing.assert_allclose(defenses.hsic(x[perm] + 3.0, dependent[perm], 1.0), dep, rtol=1e-4)


def test_bido_penalty_combines_stage_terms():
  rng = np.random.default_rng(2)
  images = rng.uniform(-1, 1, size=(16, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, 5, size=16).astype(np.int32)
  hidden = [rng.normal(size=(16, 4, 4, 6)).astype(np.float32), rng.normal(size=(16, 2, 2, 12)).astype(np.float32)]
  penalty, parts = defenses.bido_penalty(images, labels, 5, hidden, lambda_x=0.05, lambda_y=0.5, sigma=5.0)
  one_hot = np.eye(5, dtype=np.float32)[labels]
  hsic_x = sum(numpy_hsic(images, z, 5.0) for z in hidden)
  hsic_y = sum(numpy_hsic(one_hot, z, 5.0) for z in hidden)
  np.testing.assert_allclose(parts["hsic_x"], hsic_x, rtol=2e-5)
  np.testing.assert_allclose(parts["hsic_y"], hsic_y, rtol=2e-5)
  np.testing.assert_allclose(penalty, 0.05 * hsic_x - 0.5 * hsic_y, rtol=2e-5, atol=1e-8)
  grads = jax.jit(jax.grad(
      lambda h: defenses.bido_penalty(images, labels, 5, h, lambda_x=0.05, lambda_y=0.5)[0]))(hidden)
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in grads)
  with pytest.raises(ValueError, match="ResNet"):
    defenses.bido_penalty(images, labels, 5, [], lambda_x=0.05, lambda_y=0.5)


def test_gaussian_kl_closed_form():
  rng = np.random.default_rng(3)
  mu = rng.normal(size=(4, 6))
  std = rng.uniform(0.2, 2.0, size=(4, 6))
  kl = defenses.gaussian_kl(jnp.asarray(mu, jnp.float32), jnp.asarray(std, jnp.float32))
  for i in range(4):  # KL(N(mu, S) || N(0, I)) = (tr S + mu.mu - k - log det S) / 2, with full matrices
    cov = np.diag(std[i] ** 2)
    expected = 0.5 * (np.trace(cov) + mu[i] @ mu[i] - 6 - np.log(np.linalg.det(cov)))
    np.testing.assert_allclose(kl[i], expected, rtol=1e-5)
  np.testing.assert_allclose(defenses.gaussian_kl(jnp.zeros((2, 3)), jnp.ones((2, 3))), 0.0, atol=1e-7)


def test_mid_classifier_train_and_eval_modes():
  module = defenses.create_mid_classifier("resnet18", num_classes=7, bottleneck_dim=16, base_channels=8)
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1, maxval=1)
  variables = jax.jit(module.init)(jax.random.key(1), x)
  assert variables["params"]["encoder"]["kernel"].shape == (64, 32)
  assert variables["params"]["fc"]["kernel"].shape == (16, 7)

  @jax.jit
  def run(variables, x, key):
    eval_logits, z = module.apply(variables, x, return_features=True)
    train_logits, updates = module.apply(variables, x, train=True, rngs={"bottleneck": key},
                                         mutable=["batch_stats", "intermediates"])
    return eval_logits, z, train_logits, updates["intermediates"]["bottleneck_kl"][0]

  eval_logits, z, train_a, kl = run(variables, x, jax.random.key(2))
  eval_again, _, train_b, _ = run(variables, x, jax.random.key(3))
  # Evaluation uses the mean: deterministic, and exactly fc(mu).
  np.testing.assert_array_equal(eval_logits, eval_again)
  fc = variables["params"]["fc"]
  np.testing.assert_allclose(eval_logits, z @ fc["kernel"] + fc["bias"], rtol=1e-5, atol=1e-5)
  # Training samples z ~ N(mu, std^2): different noise, different logits; the sown KL is per example.
  assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-6
  assert kl.shape == (4,) and np.all(np.asarray(kl) > 0)
  with pytest.raises(ValueError, match="Unknown architecture"):
    defenses.create_mid_classifier("resnet9", 7)


# ----------------------------------------------------------------------------------------------- CALoR


def test_confidence_adaptation_loss_closed_forms():
  # Two classes, logits (0, 0): p_y = 1/2. Logits (log 3, 0): p_0 = 3/4, p_1 = 1/4.
  logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [np.log(3.0), 0.0]], np.float32)
  labels = np.array([0, 0, 1], np.int32)
  loss = defenses.confidence_adaptation_loss(logits, labels, gamma=4.0, scale=0.25)
  expected = [0.25 * 0.5**4 * np.log(0.5), 0.25 * 0.75**4 * np.log(0.75), 0.25 * 0.25**4 * np.log(0.25)]
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  # Three classes, probabilities (1/2, 1/3, 1/6) from logits log(3, 2, 1); gamma 2, scale 1.
  logits3 = np.log(np.array([[3.0, 2.0, 1.0]], np.float32))
  np.testing.assert_allclose(defenses.confidence_adaptation_loss(logits3, np.array([1]), gamma=2.0, scale=1.0),
                             [(1 / 3) ** 2 * np.log(1 / 3)], rtol=1e-6)
  # With label smoothing alpha: (1 - alpha) * CA + alpha * mean_c(-log p_c), the mixture of smoothed CE.
  smoothed = defenses.confidence_adaptation_loss(logits3, np.array([0]), gamma=2.0, scale=1.0, label_smoothing=0.1)
  uniform = -np.mean(np.log([1 / 2, 1 / 3, 1 / 6]))
  np.testing.assert_allclose(smoothed, [0.9 * 0.25 * np.log(0.5) + 0.1 * uniform], rtol=1e-6)
  # Shifting every logit changes nothing; a traced alpha works under jit.
  np.testing.assert_allclose(defenses.confidence_adaptation_loss(logits + 7.0, labels), loss, rtol=1e-5)
  jitted = jax.jit(lambda a: defenses.confidence_adaptation_loss(logits3, np.array([0]), gamma=2.0, scale=1.0,
                                                                 label_smoothing=a))
  np.testing.assert_allclose(jitted(jnp.float32(0.1)), smoothed, rtol=1e-6)


@pytest.mark.parametrize("gamma", [2.0, 4.0, 8.0])
def test_confidence_adaptation_pulls_confidence_to_exp_minus_one_over_gamma(gamma):
  # Two classes, logits (m, 0): p_y = sigmoid(m). The loss is minimal at p_y = exp(-1/gamma), not at p_y -> 1.
  p_star = defenses.optimal_confidence(gamma)
  assert p_star == pytest.approx(np.exp(-1 / gamma))

  def loss_of_margin(m):
    return defenses.confidence_adaptation_loss(jnp.stack([m, 0.0])[None], jnp.array([0]), gamma=gamma)[0]

  m_star = np.log(p_star / (1 - p_star))
  grad = jax.grad(loss_of_margin)
  assert abs(float(grad(jnp.float32(m_star)))) < 1e-6
  assert float(grad(jnp.float32(m_star - 0.5))) < 0 < float(grad(jnp.float32(m_star + 0.5)))
  margins = np.linspace(-4, 8, 2001, dtype=np.float32)
  values = jax.vmap(loss_of_margin)(jnp.asarray(margins))
  assert abs(margins[int(np.argmin(values))] - m_star) < 0.01
  # Minimum value: scale * p*^gamma * log p* = -scale / (gamma e).
  np.testing.assert_allclose(loss_of_margin(jnp.float32(m_star)), -0.25 / (gamma * np.e), rtol=1e-5)


def test_calor_head_has_the_configured_rank():
  rank, num_classes = 3, 12
  module = defenses.create_calor_classifier("resnet18", num_classes=num_classes, rank=rank, base_channels=8)
  x = jax.random.uniform(jax.random.key(0), (24, 32, 32, 3), minval=-1, maxval=1)
  variables = jax.jit(module.init)(jax.random.key(1), x)
  params = variables["params"]
  assert params["compress"]["kernel"].shape == (64, rank)
  assert params["fc"]["kernel"].shape == (rank, num_classes)
  assert set(variables["batch_stats"]["norm"]) == {"mean", "var"}

  @jax.jit
  def run(variables, x):
    logits, z = module.apply(variables, x, return_features=True)
    train_logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, z, train_logits, updates["batch_stats"]["norm"]["mean"]

  logits, z, train_logits, norm_mean = run(variables, x)
  fc = params["fc"]
  np.testing.assert_allclose(logits, z @ fc["kernel"] + fc["bias"], rtol=1e-5, atol=1e-5)
  assert np.all(np.abs(np.asarray(z)) <= 1.0)  # tanh code
  # The centred logits of 24 inputs span exactly `rank` dimensions, in train and eval mode.
  for out in (logits, train_logits):
    singular = np.linalg.svd(np.asarray(out, np.float64) - np.asarray(fc["bias"]), compute_uv=False)
    assert singular[rank - 1] > 1e-4 * singular[0] and np.all(singular[rank:] < 1e-5 * singular[0])
  assert np.any(np.asarray(norm_mean) != 0)  # training mode updates the head's BatchNorm statistics
  with pytest.raises(ValueError, match="Unknown architecture"):
    defenses.create_calor_classifier("resnet9", 7)
  with pytest.raises(ValueError, match="activation"):
    defenses.create_calor_classifier("resnet18", 7, activation="gelu")


def test_calor_train_step_uses_the_adaptation_loss():
  from jaxmia import classifier, parallel  # noqa: PLC0415

  kind, kwargs = classifier.model_spec("resnet18", 5, {"base_channels": 8}, calor_rank=4)
  assert kind == "calor_classifier" and kwargs["rank"] == 4 and kwargs["activation"] == "tanh"
  module = classifier.create_model(kind, kwargs)
  mesh = parallel.make_mesh(1)
  variables = classifier.init_variables(module, jax.random.key(0), 32)
  state = classifier.create_train_state(module, variables, classifier.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8), mesh)
  step = jax.jit(classifier.make_train_step(5, augment_kwargs=dict(size=32), defense="calor",
                                            calor_kwargs=dict(gamma=4.0, scale=0.25)))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 5, 8).astype(np.int32)}
  _, metrics = step(state, batch, jax.random.key(1), jnp.float32(0.0))
  # The CALoR loss is negative (p^gamma log p < 0), unlike any cross-entropy.
  assert -0.25 / (4 * np.e) - 1e-6 <= float(metrics["loss"]) < 0
  with pytest.raises(ValueError, match="either a MID or a CALoR"):
    classifier.model_spec("resnet18", 5, mid_bottleneck_dim=8, calor_rank=4)


def test_calor_config_fields():
  import pathlib  # noqa: PLC0415
  from jaxmia import train  # noqa: PLC0415
  from jaxmia.config import load_file  # noqa: PLC0415

  config = load_file(pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py").get_config("smoke")
  config.defense.name = "calor"
  config.defense.calor.rank = 6
  assert train.model_spec(config, 10) == ("calor_classifier", {"arch": "resnet18", "num_classes": 10, "rank": 6,
                                                               "activation": "tanh", "base_channels": 8})
  train.validate_config(config)
  config.defense.calor.rank = 0
  config.defense.calor.gamma = -1.0
  with pytest.raises(ValueError, match=r"defense\.calor\.rank=0 .*defense\.calor\.gamma=-1\.0"):
    train.validate_config(config)
