"""MID, BiDO and CALoR: BiDO's normalized HSIC against a direct NumPy computation of the official form, its closed
forms and invariants; MID's KL against the closed form for multivariate Gaussians and the MID module's train/eval
behaviour; CALoR's loss, head, and its cross-entropy-then-adaptation schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import defenses


def numpy_gram(a, sigma=None):
  """Gaussian (`sigma`) or linear (`sigma=None`) Gram matrix from explicit pairwise distances, in float64."""
  a = a.reshape(len(a), -1).astype(np.float64)
  if sigma is None:
    return a @ a.T
  d = np.array([[np.sum((a[i] - a[j]) ** 2) for j in range(len(a))] for i in range(len(a))])
  return np.exp(-d / (2 * sigma**2 * a.shape[1]))


def numpy_normalized_hsic(k, l, eps=1e-5):  # noqa: E741
  """The official form, written out: right-centred Gram matrices, explicit inverses, sum(R_x * R_y^T)."""
  m = len(k)
  h = np.eye(m) - np.ones((m, m)) / m
  r_k = (k @ h) @ np.linalg.inv(k @ h + eps * m * np.eye(m))
  r_l = (l @ h) @ np.linalg.inv(l @ h + eps * m * np.eye(m))
  return np.sum(r_k * r_l.T)


def test_normalized_hsic_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(24, 3, 4, 2)).astype(np.float32)
  y = np.tanh(x.reshape(24, -1)[:, :5]) + 0.3 * rng.normal(size=(24, 5)).astype(np.float32)
  for sigma in (0.5, 1.0, 5.0):
    expected = numpy_normalized_hsic(numpy_gram(x, sigma), numpy_gram(y, sigma))
    np.testing.assert_allclose(defenses.normalized_hsic(x, y, sigma), expected, rtol=2e-3)
    np.testing.assert_allclose(defenses.normalized_hsic(y, x, sigma), expected, rtol=2e-3)
  # Linear kernel of one-hot labels, as BiDO uses for y.
  one_hot = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 24)]
  np.testing.assert_allclose(defenses.normalized_hsic_from_kernels(defenses.gaussian_kernel(x, 5.0),
                                                                   defenses.linear_kernel(one_hot)),
                             numpy_normalized_hsic(numpy_gram(x, 5.0), numpy_gram(one_hot)), rtol=2e-3)


def test_normalized_hsic_closed_forms():
  m, eps = 40, 1e-5
  c = eps * m
  x = np.random.default_rng(1).normal(size=(m, 6)).astype(np.float32)
  # A tiny width makes K = I, whose centred form H has m - 1 unit eigenvalues: tr(R^2) = (m-1) / (1+c)^2.
  np.testing.assert_allclose(defenses.normalized_hsic(x, x, 1e-3), (m - 1) / (1 + c) ** 2, rtol=1e-5)
  # One-hot labels of C balanced classes under the linear kernel: H Y Y^T H has eigenvalue n = m / C with
  # multiplicity C - 1, so tr(R^2) = (C - 1) (n / (n + c))^2.
  for num_classes in (2, 5, 10):
    n = m // num_classes
    labels = np.repeat(np.arange(num_classes), n)
    k_y = defenses.linear_kernel(jax.nn.one_hot(labels, num_classes))
    np.testing.assert_allclose(defenses.normalized_hsic_from_kernels(k_y, k_y),
                               (num_classes - 1) * (n / (n + c)) ** 2, rtol=1e-5)
  # Huge widths make K ~ 11^T, which centring removes: no dependency at all.
  assert float(defenses.normalized_hsic(x, x, 1e5)) < 1e-3


def test_normalized_hsic_invariants():
  rng = np.random.default_rng(2)
  m = 256
  x = rng.normal(size=(m, 8)).astype(np.float32)
  independent = rng.normal(size=(m, 8)).astype(np.float32)
  dependent = x**2 + 0.1 * rng.normal(size=(m, 8)).astype(np.float32)  # uncorrelated with x, but dependent
  self_dep = float(defenses.normalized_hsic(x, x, 5.0))
  indep = float(defenses.normalized_hsic(x, independent, 5.0))
  dep = float(defenses.normalized_hsic(x, dependent, 5.0))
  assert 0 < self_dep <= m - 1
  # For samples in random order the expectation is tr(R_x) tr(R_y) / (m - 1) (a random permutation averages
  # R_y to its trace times H / (m - 1)); independent samples stay near it, far below full dependence.
  def shrunk_trace(a):
    return float(jnp.trace(defenses.bido._shrunk_projector(defenses.gaussian_kernel(a, 5.0), 1e-5)))
  chance = shrunk_trace(x) * shrunk_trace(independent) / (m - 1)
  assert abs(indep - chance) < 0.25 * chance
  assert indep < 0.5 * self_dep
  assert dep > indep + 0.2 * (self_dep - indep)
  # Permuting both samples together or shifting either changes nothing.
  perm = rng.permutation(m)
  np.testing.assert_allclose(defenses.normalized_hsic(x[perm] + 3.0, dependent[perm], 5.0), dep, rtol=1e-3)


def test_bido_penalty_is_order_one_and_combines_layer_terms():
  rng = np.random.default_rng(3)
  m = 16
  images = rng.uniform(-1, 1, size=(m, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, 5, size=m).astype(np.int32)
  hidden = [rng.normal(size=(m, 4, 4, 6)).astype(np.float32), rng.normal(size=(m, 2, 2, 12)).astype(np.float32)]
  penalty, parts = defenses.bido_penalty(images, labels, 5, hidden, lambda_x=0.05, lambda_y=0.5, sigma=5.0)
  k_x, k_y = numpy_gram(images, 5.0), numpy_gram(np.eye(5)[labels])
  hsic_x = sum(numpy_normalized_hsic(numpy_gram(z, 5.0), k_x) for z in hidden)
  hsic_y = sum(numpy_normalized_hsic(numpy_gram(z, 5.0), k_y) for z in hidden)
  np.testing.assert_allclose(parts["hsic_x"], hsic_x, rtol=2e-3)
  np.testing.assert_allclose(parts["hsic_y"], hsic_y, rtol=2e-3)
  np.testing.assert_allclose(penalty, 0.05 * hsic_x - 0.5 * hsic_y, rtol=5e-3, atol=1e-4)
  # The measure the official weights were tuned for: of order one per layer, not the plain HSIC's ~1e-5.
  assert hsic_x > 1.0 and hsic_y > 0.1
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


def _train_toy_calor(num_classes, calor_start_step, num_steps):
  """A slim CALoR ResNet on `num_classes` fixed 32x32 patterns (one per class, one batch of all of them),
  trained for `num_steps` steps; the metrics of every step."""
  from jaxmia import classifier, parallel  # noqa: PLC0415

  kind, kwargs = classifier.model_spec("resnet18", num_classes, {"base_channels": 8}, calor_rank=16)
  module = classifier.create_model(kind, kwargs)
  variables = classifier.init_variables(module, jax.random.key(0), 32)
  state = classifier.create_train_state(module, variables, classifier.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8),
                                        parallel.make_mesh(1))
  no_augmentation = dict(size=32, crop_scale=(1.0, 1.0), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                         flip=False)
  step = jax.jit(classifier.make_train_step(num_classes, augment_kwargs=no_augmentation, defense="calor",
                                            calor_kwargs=dict(gamma=4.0, scale=0.25),
                                            calor_start_step=calor_start_step))
  patterns = np.random.default_rng(0).integers(0, 256, (num_classes, 4, 4, 3), dtype=np.uint8)
  batch = {"image": np.repeat(np.repeat(patterns, 8, axis=1), 8, axis=2),
           "label": np.arange(num_classes, dtype=np.int32)}
  history = []
  for _ in range(num_steps):
    state, metrics = step(state, batch, jax.random.key(1), jnp.float32(0.0))
    history.append(jax.device_get(metrics))
  return history


def test_calor_learns_from_a_random_start_with_cross_entropy_first():
  # 100 classes from a random start: p_y ~ 0.01, where the CA loss has almost no gradient. Cross-entropy first
  # (the authors' procedure) fits the toy task; the CA loss from step 0 (the old behaviour) stalls far below.
  num_classes, start = 100, 30
  history = _train_toy_calor(num_classes, calor_start_step=start, num_steps=start + 3)
  assert all(h["calor_adaptation"] == 0 and h["loss"] > 0 for h in history[:start])  # cross-entropy
  assert history[start - 1]["accuracy"] > 0.8  # chance: 0.01
  assert all(h["calor_adaptation"] == 1 and h["loss"] < 0 for h in history[start:])  # the CA loss (<= 0)
  assert np.mean([h["accuracy"] for h in history[start:]]) > 0.8  # the fine-tuning starts from a fitted model
  adaptation_only = _train_toy_calor(num_classes, calor_start_step=0, num_steps=start)
  assert all(h["loss"] < 0 for h in adaptation_only)
  assert max(h["accuracy"] for h in adaptation_only[-5:]) < 0.25


def test_calor_phase_from_the_config():
  import pathlib  # noqa: PLC0415
  from jaxmia import train  # noqa: PLC0415
  from jaxmia.config import load_file  # noqa: PLC0415

  config = load_file(pathlib.Path(__file__).resolve().parents[1] / "configs" / "numbers.py").get_config()
  config.defense.name = "calor"
  assert config.num_epochs == 30 and config.defense.calor.finetune_epochs == 5
  assert train.calor_start_step(config, steps_per_epoch=7) == 25 * 7  # the last 5 of 30 epochs
  config.defense.calor.finetune_epochs = 30
  assert train.calor_start_step(config, steps_per_epoch=7) == 0  # the CA loss throughout
  config.defense.calor.finetune_epochs = 40
  assert train.calor_start_step(config, steps_per_epoch=7) == 0
  with pytest.raises(ValueError, match="steps_per_epoch"):
    train.make_train_step(config, 100)
  config.defense.calor.finetune_epochs = -1
  with pytest.raises(ValueError, match=r"defense\.calor\.finetune_epochs=-1"):
    train.validate_config(config)
