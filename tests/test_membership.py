"""Membership inference metrics on constructed cases with known answers: ROC points and AUC of tiny score sets
(ties included) against hand computation and a brute-force Mann-Whitney count, TPR at FPR and the best balanced
accuracy for two unit Gaussians (closed forms), a memorising model (AUC 1) against a constant model (AUC 0.5)
for the threshold attacks and offline LiRA, LiRA's Gaussian score, and DtC on linear models, where the smallest
perturbation has a closed form. The end-to-end program on a digits smoke target is marked slow."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxmia import membership

REPO = pathlib.Path(__file__).resolve().parents[1]


def metrics_of(members, nonmembers, fprs=(0.001, 0.01)):
  return membership.attack_metrics(np.asarray(members, np.float32), np.asarray(nonmembers, np.float32), fprs)


def test_roc_points_and_metrics_of_tiny_score_sets():
  # Separable: every member above every non-member.
  summary, _ = metrics_of([3, 2], [1, 0])
  assert summary == {"auc": 1.0, "balanced_accuracy": 1.0, "tpr_at_0.001_fpr": 1.0, "tpr_at_0.01_fpr": 1.0}
  # Members {1, 3}, non-members {0, 2}: thresholds 3, 2, 1, 0 give (fpr, tpr) = (0, .5), (.5, .5), (.5, 1), (1, 1).
  fpr, tpr, thresholds = membership.roc_curve(jnp.array([1.0, 3.0]), jnp.array([2.0, 0.0]))
  np.testing.assert_array_equal(fpr, [0, 0, 0.5, 0.5, 1])
  np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1, 1])
  np.testing.assert_array_equal(thresholds, [np.inf, 3, 2, 1, 0])
  summary, _ = metrics_of([1, 3], [2, 0])
  assert summary["auc"] == 0.75  # 3 of the 4 (member, non-member) pairs ordered correctly
  assert summary["balanced_accuracy"] == 0.75 and summary["tpr_at_0.01_fpr"] == 0.5
  # Ties: members {1, 1}, non-members {1, 0}: the three tied scores form one point (fpr .5, tpr 1); a tied
  # pair counts one half, so AUC = (1/2 + 1 + 1/2 + 1) / 4.
  fpr, tpr, _ = membership.roc_curve(jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]))
  np.testing.assert_array_equal(fpr, [0, 0.5, 0.5, 0.5, 1])
  np.testing.assert_array_equal(tpr, [0, 1, 1, 1, 1])
  assert float(membership.roc_auc(fpr, tpr)) == 0.75
  assert float(membership.tpr_at_fpr(fpr, tpr, 0.1)) == 0.0
  # All scores equal: the chance diagonal.
  summary, _ = metrics_of(np.ones(5), np.ones(7))
  assert summary == {"auc": 0.5, "balanced_accuracy": 0.5, "tpr_at_0.001_fpr": 0.0, "tpr_at_0.01_fpr": 0.0}
  # Yeom's attack at one threshold.
  assert float(membership.threshold_balanced_accuracy(jnp.array([1.0, 3.0]), jnp.array([2.0, 0.0]), 1.0)) == 0.75


def test_auc_equals_mann_whitney_count():
  rng = np.random.default_rng(0)
  members = np.round(rng.normal(0.5, 1, 300), 1).astype(np.float32)  # rounded: many ties
  nonmembers = np.round(rng.normal(0.0, 1, 200), 1).astype(np.float32)
  diff = members[:, None] - nonmembers[None, :]
  expected = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
  summary, curve = metrics_of(members, nonmembers)
  np.testing.assert_allclose(summary["auc"], expected, rtol=1e-6)
  # Balanced accuracy: the best of all thresholds, computed directly.
  best = max((np.mean(members >= t) + np.mean(nonmembers < t)) / 2 for t in np.concatenate([members, nonmembers]))
  np.testing.assert_allclose(summary["balanced_accuracy"], best, rtol=1e-6)
  assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)


def test_tpr_at_fpr_for_two_gaussians():
  # Members N(2, 1), non-members N(0, 1): TPR(f) = Phi(2 - Phi^-1(1 - f)), AUC = Phi(2 / sqrt 2), best balanced
  # accuracy Phi(1) (threshold halfway).
  rng = np.random.default_rng(1)
  n = 400_000
  summary, _ = metrics_of(rng.normal(2.0, 1.0, n), rng.normal(0.0, 1.0, n))
  for f in (0.001, 0.01):
    np.testing.assert_allclose(summary[f"tpr_at_{f:g}_fpr"], stats.norm.cdf(2 - stats.norm.ppf(1 - f)), atol=0.01)
  np.testing.assert_allclose(summary["auc"], stats.norm.cdf(np.sqrt(2)), atol=0.002)
  np.testing.assert_allclose(summary["balanced_accuracy"], stats.norm.cdf(1.0), atol=0.003)


def test_scores_of_logits():
  logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], np.float32))
  labels = np.array([0, 2])
  np.testing.assert_allclose(membership.loss_scores(logits, labels), np.log([0.5, 0.8]), rtol=1e-6)
  np.testing.assert_allclose(membership.confidence_scores(logits, labels), [0.5, 0.8], rtol=1e-6)
  np.testing.assert_allclose(membership.logit_scaled_confidence(logits, labels), [0.0, np.log(4.0)], atol=1e-6)
  # Exact where p_y rounds to 1 in float32: z_y - logsumexp(others).
  np.testing.assert_allclose(membership.logit_scaled_confidence(np.array([[40.0, 0.0, 0.0]]), np.array([0])),
                             [40.0 - np.log(2.0)], rtol=1e-6)


def test_lira_offline_gaussian_score():
  rng = np.random.default_rng(2)
  mu, sigma = rng.normal(size=6), rng.uniform(0.5, 2.0, size=6)
  shadow = mu + sigma * np.sqrt(1.5) * np.array([-1.0, 0.0, 1.0])[:, None]  # per-example std exactly sigma
  k = np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 3.0])
  scores = membership.lira_offline_scores(mu + k * sigma, shadow, global_variance=False)
  np.testing.assert_allclose(scores, stats.norm.logcdf(k), rtol=1e-4, atol=1e-5)
  pooled = np.std(shadow)
  scores = membership.lira_offline_scores(mu + k * sigma, shadow, global_variance=True)
  np.testing.assert_allclose(scores, stats.norm.logcdf(k * sigma / pooled), rtol=1e-4, atol=1e-5)


def memorising_model(train_images, train_labels, num_classes):
  """A lookup table: a training image gets logits 10 * onehot(its label), anything else uniform logits."""
  flat = jnp.asarray(train_images.reshape(len(train_images), -1))

  def predict_fn(images):
    d = jnp.sum(jnp.square(images.reshape(len(images), 1, -1) - flat[None]), axis=-1)
    seen = jnp.min(d, axis=1) < 1e-6
    return 10.0 * jax.nn.one_hot(jnp.asarray(train_labels)[jnp.argmin(d, axis=1)], num_classes) * seen[:, None]

  return predict_fn


def test_memorising_model_is_found_and_constant_model_is_not():
  rng = np.random.default_rng(3)
  num_classes = 5
  members, nonmembers, public = (rng.uniform(-1, 1, (n, 4, 4, 3)).astype(np.float32) for n in (40, 30, 40))
  member_labels, nonmember_labels, public_labels = (rng.integers(0, num_classes, n) for n in (40, 30, 40))
  images = np.concatenate([members, nonmembers])
  labels = np.concatenate([member_labels, nonmember_labels])
  is_member = np.arange(70) < 40
  target = memorising_model(members, member_labels, num_classes)
  constant = lambda x: jnp.zeros((len(x), num_classes)) + jnp.arange(num_classes)  # noqa: E731
  for predict_fn, expected in ((target, 1.0), (constant, 0.5)):
    logits = membership.predict(membership.as_pytree_fn(predict_fn), images)
    for score in (membership.loss_scores, membership.confidence_scores):
      s = np.asarray(score(logits, labels))
      summary, _ = metrics_of(s[is_member], s[~is_member]) if expected == 1.0 else metrics_of(
          s[is_member & (labels == 0)], s[~is_member & (labels == 0)])  # a constant model: score = f(label)
      assert summary["auc"] == expected and summary["balanced_accuracy"] == expected
  # Offline LiRA: OUT shadows memorise other (public) images, so every evaluated example is unseen by them.
  shadows = [memorising_model(public[i::2], public_labels[i::2], num_classes) for i in range(2)]
  shadow_phi = np.stack([membership.logit_scaled_confidence(shadow(images), labels) for shadow in shadows])
  for predict_fn, expected in ((target, 1.0), (shadows[0], 0.5)):
    scores = np.asarray(membership.lira_offline_scores(
        membership.logit_scaled_confidence(predict_fn(images), labels), shadow_phi))
    summary, _ = metrics_of(scores[is_member], scores[~is_member])
    assert summary["auc"] == expected and summary["tpr_at_0.001_fpr"] == (1.0 if expected == 1.0 else 0.0)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_dtc_of_a_linear_model_is_the_closed_form(norm, threshold):
  # Two classes, logits x W + b: class 1 reaches probability t iff (w1 - w0).x + (b1 - b0) >= log(t / (1 - t)),
  # so the smallest perturbation has size max(0, log(t/(1-t)) - margin) / |w1 - w0|_q (q = 2 for L2, 1 for L-inf).
  rng = np.random.default_rng(4)
  dim = 6
  w = rng.normal(size=(dim, 2)).astype(np.float32)
  b = np.array([0.3, -0.2], np.float32)
  x = rng.normal(size=(12, 2, 3)).astype(np.float32)
  labels = np.zeros(12, np.int32)
  direction = w[:, 1] - w[:, 0]
  margin = x.reshape(12, dim) @ direction + (b[1] - b[0])
  x[0] += (np.log(threshold / (1 - threshold)) + 1.0 - margin[0]) * direction.reshape(2, 3) / (direction @ direction)
  margin = x.reshape(12, dim) @ direction + (b[1] - b[0])  # example 0 is already confidently class 1
  dual = {"l2": np.linalg.norm(direction), "linf": np.abs(direction).sum()}[norm]
  expected = np.maximum(0.0, np.log(threshold / (1 - threshold)) - margin) / dual

  def linear(images):
    return images.reshape(len(images), -1) @ w + b

  max_radius, bisections = 10.0, 14
  distances, found = membership.distance_to_confident(
      linear, x, labels, threshold=threshold, norm=norm, max_radius=max_radius, num_bisections=bisections,
      num_steps=20, clip_min=-np.inf, clip_max=np.inf)
  reachable = expected < max_radius
  assert distances[0] == 0.0 and reachable.sum() >= 8
  np.testing.assert_array_equal(found, reachable)
  assert np.all(np.isinf(np.asarray(distances)[~reachable]))
  resolution = max_radius / 2**bisections
  assert np.all(distances[reachable] >= expected[reachable] * (1 - 1e-4) - 1e-5)  # never below the true distance
  assert np.all(distances[reachable] <= expected[reachable] + resolution + 1e-5)


def test_dtc_keeps_perturbed_images_in_the_box():
  # One pixel decides: logits (0, 4 * x). Class 1 reaches 1/2 at x = 0, which lies inside [-1, 1]; from x = -0.5
  # the distance is 0.5 whatever the norm. A threshold needing x > 1 is unreachable inside the box.
  def pixel(images):
    v = images.reshape(len(images), -1)[:, :1]
    return jnp.concatenate([jnp.zeros_like(v), 4 * v], axis=1)

  x = np.full((2, 1, 1, 1), -0.5, np.float32)
  labels = np.zeros(2, np.int32)
  d, found = membership.distance_to_confident(pixel, x, labels, threshold=0.5, max_radius=4.0, num_bisections=12)
  np.testing.assert_allclose(d, 0.5, atol=4.0 / 2**12 + 1e-6)
  d, found = membership.distance_to_confident(pixel, x, labels, threshold=0.99999, max_radius=4.0, num_bisections=4)
  assert not np.any(found) and np.all(np.isinf(d))


def test_batched_pads_the_last_batch():
  calls = []

  def fn(a, b):
    calls.append(a.shape)
    return a * 2, b + 1

  out = membership.batched(fn, (np.arange(10.0), np.arange(10)), 4)
  np.testing.assert_array_equal(out[0], np.arange(10.0) * 2)
  np.testing.assert_array_equal(out[1], np.arange(10) + 1)
  assert calls == [(4,), (4,), (4,)]


@pytest.mark.slow
def test_program_on_a_digits_smoke_target(tmp_path):
  """A smoke target (160 digits, 2 epochs), one shadow trained by the program, every attack, the files."""
  from jaxmia import config as config_lib, train  # noqa: PLC0415

  # The shadow compiles the target's programs again (new jitted closures): the run's XLA cache (conftest) has them.
  target_config = config_lib.load_file(REPO / "configs" / "digits.py").get_config("smoke")
  train.train_and_evaluate(target_config, tmp_path / "target")
  config = config_lib.load_file(REPO / "configs" / "membership_digits.py").get_config("smoke")
  config.target_workdir = str(tmp_path / "target")
  report = membership.evaluate_membership(config, tmp_path / "membership")
  assert report["num_members"] == 48 and report["num_nonmembers"] == 48
  for name in ("loss_attack", "confidence_attack", "lira_offline", "dtc"):
    assert 0.0 <= report[name]["auc"] <= 1.0 and 0.5 <= report[name]["balanced_accuracy"] <= 1.0
  assert report["lira_offline"]["num_shadows"] == 1 and report["lira_offline"]["shadow_train_size"] == 160
  assert report["dtc"]["members"]["n"] == 8
  assert json.loads((tmp_path / "membership" / "report.json").read_text()) == report
  for name in ("roc.png", "dtc.png", "scores.npz"):
    assert (tmp_path / "membership" / name).stat().st_size > 0
  assert (tmp_path / "membership" / "shadows" / "shadow_0" / "model" / "jaxmia.json").exists()


def test_dtc_compiles_once_per_model_function():
  # Model variables passed in a Partial are traced arguments: other weights of the same function reuse the
  # compiled search, and so do later batches of the same shape.
  def linear(w, images):
    return images.reshape(len(images), -1) @ w

  rng = np.random.default_rng(5)
  x, labels = rng.normal(size=(4, 3)).astype(np.float32), np.zeros(4, np.int32)
  before = membership._distance_to_confident._cache_size()
  kwargs = dict(max_radius=4.0, num_bisections=3, num_steps=2)
  for seed in range(3):
    w = jnp.asarray(np.random.default_rng(seed).normal(size=(3, 2)), jnp.float32)
    membership.distance_to_confident(jax.tree_util.Partial(linear, w), x + seed, labels, **kwargs)
  assert membership._distance_to_confident._cache_size() == before + 1
