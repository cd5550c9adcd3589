"""Tests of the analysis cores (`jaxmia.analysis`): toy experiment, embedding geometry, gradient stability."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia.analysis import toy


# ----------------------------------------------------------------------------------------------- toy (Fig. 1)


def test_blob_counts_follow_sklearn_rule():
  np.testing.assert_array_equal(toy.blob_counts(500, 3), [167, 167, 166])
  np.testing.assert_array_equal(toy.blob_counts(6, 3), [2, 2, 2])


def test_sample_blobs_statistics():
  points, labels = toy.sample_blobs(jax.random.key(0), 30_000, toy.BLOB_CENTRES, std=1.6)
  points, labels = np.asarray(points), np.asarray(labels)
  assert points.shape == (30_000, 2) and points.dtype == np.float32
  np.testing.assert_array_equal(np.bincount(labels), [10_000] * 3)
  for label, centre in enumerate(toy.BLOB_CENTRES):
    members = points[labels == label]
    # Standard error of the mean is 1.6 / 100 = 0.016; of the sd about 0.011.
    np.testing.assert_allclose(members.mean(0), centre, atol=0.06)
    np.testing.assert_allclose(members.std(0), [1.6, 1.6], atol=0.05)
  np.testing.assert_allclose(np.corrcoef(points[labels == 0].T)[0, 1], 0.0, atol=0.03)


def _reference_attack(weights, start, target, lr, threshold, max_steps):
  """Plain numpy gradient descent on -log softmax(W x)[target] (independent of the jax implementation)."""
  x, path = np.asarray(start, np.float64), [np.asarray(start, np.float64)]
  for step in range(max_steps + 1):
    logits = weights @ x
    p = np.exp(logits - logits.max())
    p /= p.sum()
    if p[target] > threshold or step == max_steps:
      return step, x, p[target], np.array(path)
    x = x - lr * weights.T @ (p - np.eye(len(p))[target])
    path.append(x)


def test_gradient_attack_matches_reference_and_stops_at_threshold():
  weights = np.array([[1.0, 0.0], [0.0, 1.0], [-0.5, 0.5]])
  start, target = np.array([2.0, -1.0]), 2
  steps_ref, point_ref, conf_ref, path_ref = _reference_attack(weights, start, target, 0.1, 0.9, 10_000)
  assert 50 < steps_ref < 10_000  # a non-trivial walk
  w = jnp.asarray(weights, jnp.float32)
  result = jax.jit(lambda s: toy.gradient_attack(lambda x: w @ x, s, target, learning_rate=0.1, threshold=0.9,
                                                 max_steps=10_000))(jnp.asarray(start, jnp.float32))
  assert int(result.steps) == steps_ref
  np.testing.assert_allclose(result.point, point_ref, rtol=1e-4)
  np.testing.assert_allclose(result.confidence, conf_ref, rtol=1e-5)
  assert float(result.confidence) > 0.9
  np.testing.assert_allclose(result.path[:steps_ref + 1], path_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(result.path[steps_ref + 1:], np.broadcast_to(point_ref, (10_000 - steps_ref, 2)),
                             rtol=1e-4)
  # The point just before the end was still below the threshold.
  logits = weights @ np.asarray(result.path[steps_ref - 1], np.float64)
  assert np.exp(logits[target] - np.logaddexp.reduce(logits)) <= 0.9


def test_gradient_attack_gives_up_at_max_steps():
  w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  result = toy.gradient_attack(lambda x: w @ x, jnp.array([5.0, 0.0]), 1, learning_rate=0.01, threshold=0.99,
                               max_steps=7)
  steps_ref, point_ref, _, _ = _reference_attack(np.eye(2), [5.0, 0.0], 1, 0.01, 0.99, 7)
  assert int(result.steps) == steps_ref == 7
  np.testing.assert_allclose(result.point, point_ref, rtol=1e-5)
  assert float(result.confidence) < 0.99


def test_toy_training_confidence_follows_alpha():
  """The mechanism behind Fig. 1: negative α makes the model more confident on its training data, positive α less.

  A shortened run (1,000 of the 5,000 SGD steps, otherwise the paper's settings); with α = 0.05 the optimum of the
  loss is a softmax of 1 - α + α / 3 ≈ 0.967 on the true class, and the negative-α loss drops below zero.
  """
  settings = dataclasses.replace(toy.ToySettings(), train_steps=1000)
  key = jax.random.key(0)
  points, labels = toy.sample_blobs(jax.random.fold_in(key, 1))
  alphas = jnp.array([0.05, 0.0, -0.05])
  variables, loss_curve = jax.jit(jax.vmap(lambda a: toy.train_toy_model(key, points, labels, a, settings)))(alphas)
  model = toy.ToyMLP()
  probs = jax.vmap(lambda v: jax.nn.softmax(model.apply(v, points)))(variables)
  np.testing.assert_array_equal(np.argmax(probs, -1), np.broadcast_to(labels, (3, len(labels))))
  confidence = np.asarray(probs.max(-1).mean(-1))
  assert confidence[0] < confidence[1] < confidence[2], confidence
  assert confidence[0] < 1 - 0.05 + 0.05 / 3
  assert np.all(loss_curve[:, -1] < loss_curve[:, 0])
  assert loss_curve[2, -1] < 0 < loss_curve[1, -1] < loss_curve[0, -1]
  # The head has no bias and BatchNorm keeps running statistics (PyTorch's architecture).
  assert set(variables["params"]["head"]) == {"kernel"}
  assert variables["batch_stats"]["bn0"]["mean"].shape == (3, 20)
