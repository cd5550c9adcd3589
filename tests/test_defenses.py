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
