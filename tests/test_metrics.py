"""Metrics against hand-computed examples, closed forms and independent NumPy/SciPy references."""
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxmia import metrics


def _gaussian_features(rng, n, dim, shift=0.0):
  mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  return rng.normal(size=(n, dim)) @ mixing + shift


def test_fid_matches_scipy_sqrtm():
  rng = np.random.default_rng(0)
  real, fake = _gaussian_features(rng, 300, 16), _gaussian_features(rng, 250, 16, shift=0.3)
  mu1, mu2 = real.mean(0), fake.mean(0)
  s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
  expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
  assert metrics.fid_from_features(real, fake) == pytest.approx(expected, rel=1e-9)
  assert metrics.fid_from_features(real.astype(np.float32), fake) == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_closed_form_for_diagonal_covariances():
  mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
  var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  # |mu1 - mu2|^2 + sum(v1 + v2 - 2 sqrt(v1 v2)) = 9.25 + (4 + 1 + 0) = 14.25
  expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
  assert expected == pytest.approx(14.25)
  assert metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(14.25, rel=1e-12)


def test_fid_of_a_set_with_itself_is_zero_and_singular_covariances_work():
  rng = np.random.default_rng(1)
  features = _gaussian_features(rng, 40, 64)   # fewer samples than dimensions: singular covariance
  # sqrt of round-off-sized eigenvalues (~1e-15) of the null space leaves ~1e-8 relative error.
  scale = np.trace(np.cov(features, rowvar=False))
  assert abs(metrics.fid_from_features(features, features)) < 1e-7 * scale
  other = _gaussian_features(rng, 30, 64, shift=1.0)
  forward, backward = metrics.fid_from_features(features, other), metrics.fid_from_features(other, features)
  assert forward > 60 and forward == pytest.approx(backward, rel=1e-9)
  with pytest.raises(ValueError, match="same feature network"):
    metrics.fid_from_features(features, other[:, :32])


def test_prdc_hand_computed_example():
  # 1-D features, k = 1: each ball's radius is the distance to the nearest other sample of the same set.
  real = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 16.0])[:, None]   # radii r = 1, 1, 1, 1, 6, 6
  fake = np.array([0.4, 2.9, 4.5, 25.0])[:, None]             # radii s = 2.5, 1.6, 1.6, 20.5
  # Fake -> real balls containing it: 0.4 in {0, 1}; 2.9 in {2, 3}; 4.5 in {10} (5.5 <= 6); 25 in none.
  #   precision = 3/4; density = (2 + 2 + 1 + 0) / (k * 4 fakes) = 1.25.
  # Real -> fake balls containing it: 0, 1, 2 in ball(0.4); 3 in ball(2.9); 10 and 16 in ball(25) -> recall 1.
  # Real balls holding a fake: all but 16 (nearest fake 25 at 9 > 6) -> coverage 5/6.
  got = metrics.prdc(real, fake, k=1)
  assert got == pytest.approx({"precision": 0.75, "recall": 1.0, "density": 1.25, "coverage": 5 / 6})
  # PPA tests only the nearest sample's ball: 4.5's nearest real is 3 (1.5 > 1) -> precision 2/4;
  # real 10's nearest fake is 4.5 (5.5 > 1.6) -> recall 5/6; density divides by 6 reals: 5 / 6.
  ppa = metrics.prdc(real, fake, k=1, ppa_compat=True)
  assert ppa == pytest.approx({"precision": 0.5, "recall": 5 / 6, "density": 5 / 6, "coverage": 5 / 6})


def _prdc_brute_force(real, fake, k):
  d_rr = np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1))
  d_ff = np.sqrt(((fake[:, None] - fake[None]) ** 2).sum(-1))
  d_fr = np.sqrt(((fake[:, None] - real[None]) ** 2).sum(-1))
  r_real, r_fake = np.sort(d_rr, 1)[:, k], np.sort(d_ff, 1)[:, k]   # column 0 is the sample itself
  inside = d_fr <= r_real[None]                                    # [fake, real]: fake in real's ball
  return {"precision": inside.any(1).mean(), "recall": (d_fr <= r_fake[:, None]).any(0).mean(),
          "density": inside.sum() / (k * len(fake)), "coverage": inside.any(0).mean()}


def test_prdc_matches_brute_force_on_random_features():
  rng = np.random.default_rng(2)
  real, fake = rng.normal(size=(70, 5)) + 20, rng.normal(size=(45, 5)) * 1.3 + 20.4
  got = metrics.prdc(real.astype(np.float32), fake.astype(np.float32), k=3, block_size=16)
  assert got == pytest.approx(_prdc_brute_force(real, fake, 3), abs=1e-6)
  with pytest.raises(ValueError, match="more than 3"):
    metrics.prdc(real, fake[:3], k=3)


def test_expected_calibration_error_hand_computed():
  probs = jnp.array([[0.9, 0.1], [0.7, 0.3], [0.35, 0.65], [0.55, 0.45]])
  labels = jnp.array([0, 1, 1, 1])
  # 5 bins: conf 0.9 -> bin 4 (correct); 0.7 and 0.65 -> bin 3 (wrong, correct); 0.55 -> bin 2 (wrong).
  # ECE = (1 * |1 - 0.9| + 2 * |0.5 - 0.675| + 1 * |0 - 0.55|) / 4 = (0.1 + 0.35 + 0.55) / 4 = 0.25
  assert float(metrics.expected_calibration_error(probs, labels, num_bins=5)) == pytest.approx(0.25, abs=1e-6)
  bins = metrics.reliability_bins(probs, labels, num_bins=5)
  np.testing.assert_allclose(bins["count"], [0, 0, 1, 2, 1])
  np.testing.assert_allclose(bins["accuracy"], [0, 0, 0, 0.5, 1])
  # A confidence exactly on an edge (0.6) belongs to the lower bin (0.4, 0.6].
  edge = metrics.reliability_bins(jnp.array([[0.6, 0.4]]), jnp.array([0]), num_bins=5)
  np.testing.assert_allclose(edge["count"], [0, 0, 1, 0, 0])


def test_topk_accuracy():
  logits = jnp.array([[0.1, 0.5, 0.2, 0.9], [2.0, 1.0, 0.0, -1.0], [0.3, 0.2, 0.1, 0.0]])
  labels = jnp.array([1, 3, 0])
  # Ranks of the labels: 2nd, 4th, 1st.
  np.testing.assert_array_equal(metrics.topk_correct(logits, labels, 1), [False, False, True])
  assert float(metrics.topk_accuracy(logits, labels, 1)) == pytest.approx(1 / 3)
  assert float(metrics.topk_accuracy(logits, labels, 2)) == pytest.approx(2 / 3)
  assert float(metrics.topk_accuracy(logits, labels, 4)) == 1.0
  with pytest.raises(ValueError, match="k"):
    metrics.topk_accuracy(logits, labels, 5)


def test_nearest_neighbour_distances_match_brute_force():
  rng = np.random.default_rng(3)
  # Features far from the origin (as pooled CNN features are), sizes not multiples of the chunks.
  queries = (rng.normal(size=(37, 24)) + 30).astype(np.float32)
  refs = (rng.normal(size=(53, 24)) + 30).astype(np.float32)
  exact = ((queries[:, None].astype(np.float64) - refs[None]) ** 2).sum(-1)
  dist, index = metrics.nearest_neighbours(queries, refs, chunk_size=16, query_block=8)
  np.testing.assert_allclose(dist, exact.min(1), rtol=1e-5)
  np.testing.assert_array_equal(index, exact.argmin(1))
  np.testing.assert_allclose(metrics.nearest_neighbour_distances(queries, refs), exact.min(1), rtol=1e-5)
  np.testing.assert_allclose(metrics.pairwise_squared_distances(queries - 30, refs - 30), exact, rtol=1e-4)


def test_nearest_neighbour_distances_by_class():
  rng = np.random.default_rng(4)
  queries, refs = rng.normal(size=(20, 6)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
  query_labels, ref_labels = rng.integers(0, 4, 20), rng.integers(0, 3, 40)   # class 3 has no references
  exact = ((queries[:, None] - refs[None]) ** 2).sum(-1)
  exact = np.where(query_labels[:, None] == ref_labels[None], exact, np.inf).min(1)
  got = metrics.nearest_neighbour_distances_by_class(queries, query_labels, refs, ref_labels, chunk_size=7)
  np.testing.assert_allclose(got, exact, rtol=1e-5)
  assert np.isinf(got[query_labels == 3]).all() and (query_labels == 3).any()
  _, index = metrics.nearest_neighbours(queries, refs, query_labels, ref_labels, chunk_size=7)
  assert (np.asarray(index)[query_labels == 3] == -1).all()
  assert (ref_labels[np.asarray(index)[query_labels != 3]] == query_labels[query_labels != 3]).all()
