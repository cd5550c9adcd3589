"""Hierarchical bootstrap of paired differences: closed forms, an explicit resampling loop, coverage."""
import numpy as np
import pytest

from jaxmia.analysis import statistics


def test_constant_differences_give_a_point_interval():
  out = statistics.hierarchical_bootstrap(np.full((3, 50), -0.2), num_resamples=500)
  assert out["mean"] == pytest.approx(-0.2) and out["low"] == pytest.approx(-0.2) and out["high"] == pytest.approx(-0.2)


def test_matches_explicit_resampling():
  rng = np.random.default_rng(1)
  d = rng.normal(size=(4, 30))
  out = statistics.hierarchical_bootstrap(d, num_resamples=2000, seed=7)
  # The same draws, resampled by indexing.
  draw = np.random.default_rng(7)
  seeds = draw.integers(4, size=(2000, 4))
  classes = draw.integers(30, size=(2000, 30))
  means = np.array([d[s][:, c].mean() for s, c in zip(seeds, classes)])
  np.testing.assert_allclose([out["low"], out["high"]], np.quantile(means, [0.025, 0.975]), rtol=1e-10)
  assert out["mean"] == pytest.approx(d.mean())


def test_nan_cells_are_left_out():
  d = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
  out = statistics.hierarchical_bootstrap(d, num_resamples=300)
  assert out["mean"] == pytest.approx(2.0) and 1.0 <= out["low"] <= out["high"] <= 3.0


def test_seed_level_shift_widens_the_interval():
  """A shift shared by all classes of one seed is seed-level variation: the interval must include it."""
  rng = np.random.default_rng(0)
  noise = rng.normal(scale=0.05, size=(3, 100))
  per_seed = np.array([[0.0], [0.0], [0.3]])
  out = statistics.hierarchical_bootstrap(noise + per_seed, num_resamples=4000)
  assert out["low"] < 0.02 and out["high"] > 0.25   # a class-only bootstrap would give about 0.1 ± 0.01


def test_coverage_of_a_known_mean():
  rng = np.random.default_rng(3)
  hits = 0
  for trial in range(200):
    d = 0.1 + rng.normal(scale=0.2, size=(5, 40)) + rng.normal(scale=0.05, size=(5, 1))
    out = statistics.hierarchical_bootstrap(d, num_resamples=1000, seed=trial)
    hits += out["low"] <= 0.1 <= out["high"]
  assert 0.85 <= hits / 200 <= 1.0


def test_rejects_bad_input():
  with pytest.raises(ValueError, match="seeds, classes"):
    statistics.hierarchical_bootstrap(np.zeros(5))


def test_seed_interval_is_students_t():
  # Three seeds: mean 0.6, sd 0.1, t_{0.975, 2} = 4.3027 (tables), half width 4.3027 * 0.1 / sqrt(3).
  out = statistics.seed_interval([0.5, 0.6, 0.7])
  assert out["mean"] == pytest.approx(0.6) and out["sd"] == pytest.approx(0.1) and out["n"] == 3
  assert out["high"] - 0.6 == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-4)
  assert 0.6 - out["low"] == pytest.approx(out["high"] - 0.6)
  assert statistics.seed_interval([0.5, 0.6, 0.7], confidence=0.5)["high"] < out["high"]
  # Missing values are left out; one value has no spread, none has no mean.
  assert statistics.seed_interval([0.4, None, float("nan")]) == {"mean": 0.4, "sd": None, "low": None, "high": None,
                                                                 "n": 1}
  assert statistics.seed_interval([])["mean"] is None
  with pytest.raises(ValueError, match="confidence"):
    statistics.seed_interval([0.1, 0.2], confidence=1.0)
