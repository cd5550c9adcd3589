"""Losses against PPA's PyTorch outputs (`ppa_losses.npz`) and closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_arrays

from jaxmia import losses

FIX = fixture_arrays("ppa_losses")   # loaded by the first test that reads it
SMOOTHINGS = {"p010": 0.1, "p000": 0.0, "m005": -0.05}
REGIMES = ["", "_confident"]


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("name", SMOOTHINGS)
def test_label_smoothing_matches_ppa_value_and_gradient(name, regime):
  logits, labels = FIX["input/logits" + regime], FIX["input/labels"]
  alpha = SMOOTHINGS[name]
  per_example = losses.label_smoothing_cross_entropy(logits, labels, alpha)
  assert per_example.shape == labels.shape
  mean_loss = lambda z: losses.label_smoothing_cross_entropy(z, labels, alpha).mean()
  value, grad = jax.jit(jax.value_and_grad(mean_loss))(logits)
  np.testing.assert_allclose(value, FIX[f"output/ls_ce_{name}{regime}"], rtol=1e-5)
  np.testing.assert_allclose(grad, FIX[f"output/ls_ce_grad_{name}{regime}"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha", [-0.4, 0.3, 1.0])
def test_label_smoothing_is_cross_entropy_with_explicit_soft_targets(alpha):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)) * 3
  labels = np.array([0, 6, 3, 3, 1])
  targets = (1 - alpha) * np.eye(7)[labels] + alpha / 7
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  expected = -(targets * log_probs).sum(-1)
  got = losses.label_smoothing_cross_entropy(logits.astype(np.float32), labels, alpha)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_label_smoothing_rejects_alpha_above_one():
  with pytest.raises(ValueError, match="<= 1"):
    losses.label_smoothing_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1]), 1.5)


def test_label_smoothing_accepts_traced_alpha_from_schedule():
  logits, labels = FIX["input/logits"], FIX["input/labels"]
  schedule = losses.ls_schedule(-0.05, 100)
  step = jax.jit(lambda z, epoch: losses.label_smoothing_cross_entropy(z, labels, schedule(epoch)).mean())
  np.testing.assert_allclose(step(logits, 99), FIX["output/ls_ce_m005"], rtol=1e-5)
  np.testing.assert_allclose(step(logits, 10), FIX["output/ls_ce_p000"], rtol=1e-5)


@pytest.mark.parametrize("regime", REGIMES)
def test_poincare_matches_ppa_value_and_gradient(regime):
  logits, labels = FIX["input/logits" + regime], FIX["input/labels"]

  def mean_loss(z):
    per_example = losses.poincare_loss(z, labels)
    return per_example.mean(), per_example

  (_, values), grad = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))(logits)
  # The reference is float32 with a cancelling `1 - |v|^2` term (about 2e-5 relative error, see README).
  np.testing.assert_allclose(values, FIX["output/poincare" + regime], rtol=1e-4)
  ref = FIX["output/poincare_mean_grad" + regime]
  np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_poincare_against_float64_formula_and_xi():
  rng = np.random.default_rng(1)
  logits, labels = rng.normal(size=(4, 10)), np.array([2, 0, 9, 5])
  for xi in (1e-4, 0.2):
    u = logits / np.abs(logits).sum(-1, keepdims=True)
    v = np.clip(np.eye(10)[labels] - xi, 0, 1)
    delta = 2 * ((u - v) ** 2).sum(-1) / ((1 - (u ** 2).sum(-1)) * (1 - (v ** 2).sum(-1)))
    np.testing.assert_allclose(losses.poincare_loss(logits.astype(np.float32), labels, xi=xi),
                               np.arccosh(1 + delta), rtol=1e-5)
  with pytest.raises(ValueError, match="xi"):
    losses.poincare_loss(logits, labels, xi=1.0)


def test_identity_losses():
  logits = jnp.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
  labels = jnp.array([1, 0])
  np.testing.assert_allclose(losses.logit_loss(logits, labels), [-2.0, 0.0])
  log_probs = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(losses.cross_entropy_identity_loss(logits, labels),
                             [-log_probs[0, 1], -log_probs[1, 0]], rtol=1e-6)


@pytest.mark.parametrize("num_epochs", [100, 80])
def test_ppa_schedule_matches_reference_exactly(num_epochs):
  ref = FIX[f"output/ls_schedule_m005_epochs{num_epochs}"]
  schedule = losses.ls_schedule(-0.05, num_epochs, kind="ppa")
  eager = np.array([schedule(epoch) for epoch in range(num_epochs)])
  np.testing.assert_array_equal(eager, ref.astype(np.float32))
  np.testing.assert_array_equal(jax.jit(jax.vmap(schedule))(jnp.arange(num_epochs)), eager)


def test_smooth_and_constant_schedules():
  smooth = losses.ls_schedule(-0.1, 10, kind="smooth")
  values = np.array([smooth(epoch) for epoch in range(10)])
  # 5 warm-up epochs at 0, then -0.02, -0.04, ..., reaching alpha at the last epoch.
  np.testing.assert_allclose(values, [0, 0, 0, 0, 0, -0.02, -0.04, -0.06, -0.08, -0.1], rtol=1e-6)
  assert float(smooth(25)) == pytest.approx(-0.1)
  ramp_all = losses.ls_schedule(0.3, 3, kind="smooth", warmup_epochs=0)
  np.testing.assert_allclose([ramp_all(e) for e in range(3)], [0.1, 0.2, 0.3], rtol=1e-6)
  constant = losses.ls_schedule(0.1, 7, kind="constant")
  np.testing.assert_allclose([constant(e) for e in range(7)], [0.1] * 7, rtol=1e-7)
  with pytest.raises(ValueError, match="schedule"):
    losses.ls_schedule(0.1, 7, kind="cosine")


@pytest.mark.parametrize("num_epochs", [1, 2, 3, 4, 7, 10, 12, 20, 41, 100])
def test_proportional_schedule_holds_alpha_for_the_last_quarter(num_epochs):
  alpha = -0.05
  values = np.array([float(v) for v in map(losses.ls_schedule(alpha, num_epochs, kind="proportional"),
                                           range(num_epochs))])
  first_half, last_quarter = num_epochs // 2, num_epochs - num_epochs // 4
  np.testing.assert_array_equal(values[:first_half], 0.0)           # α = 0 for the first half
  np.testing.assert_allclose(values[last_quarter:], alpha, rtol=1e-6)  # α for the last quarter
  np.testing.assert_allclose(values[-1], alpha, rtol=1e-6)          # reached whatever the length
  assert np.all(np.diff(np.abs(values)) >= 0)                       # a monotone ramp in between
  ramp = values[first_half:last_quarter]
  np.testing.assert_allclose(ramp, alpha * np.arange(1, len(ramp) + 1) / len(ramp), rtol=1e-6)


def test_proportional_schedule_is_ppa_shaped_at_100_epochs():
  """Same phases as PPA's at 100 epochs (0 before 50, α from 75); only PPA's α/2 -> α jump is gone."""
  ppa = np.array([float(v) for v in map(losses.ls_schedule(-0.05, 100, kind="ppa"), range(100))])
  proportional = np.array([float(v) for v in map(losses.ls_schedule(-0.05, 100, kind="proportional"), range(100))])
  np.testing.assert_array_equal(proportional[:50], ppa[:50])
  np.testing.assert_array_equal(proportional[75:], ppa[75:])
  np.testing.assert_allclose(proportional[74], -0.05, rtol=1e-6)
  np.testing.assert_allclose(ppa[74], -0.025, rtol=1e-6)
