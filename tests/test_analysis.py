"""Tests of the analysis cores (`jaxmia.analysis`): toy experiment, embedding geometry, gradient stability,
stage ablation, sweep and calibration."""
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxmia import attack
from jaxmia.analysis import ablation, calibration, geometry, gradients, sweep, toy
from jaxmia.config import load_file

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


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


# ----------------------------------------------------------------------------------------------- geometry (Figs. 4-5)


def test_class_distance_stats_hand_made():
  # Two classes on a line (embedded in 3-D, far from the origin): class 0 at x = 0, 1; class 1 at x = 10, 13.
  x = np.array([0.0, 10.0, 1.0, 13.0])
  features = np.stack([x, np.zeros(4), np.zeros(4)], 1) + 1000.0
  labels = np.array([0, 1, 0, 1])
  stats = geometry.class_distance_stats(features, labels, block_size=3)  # 2 blocks, the last one padded
  np.testing.assert_allclose(stats.intra_mean, [1, 3, 1, 3], rtol=1e-4)
  np.testing.assert_allclose(stats.inter_mean, [11.5, 9.5, 10.5, 12.5], rtol=1e-4)
  np.testing.assert_allclose(stats.intra_nearest, [1, 3, 1, 3], rtol=1e-4)
  np.testing.assert_allclose(stats.inter_nearest, [10, 9, 9, 12], rtol=1e-4)
  assert abs(stats.max_distance - 13.0) < 1e-3
  scaled = stats.scaled()
  np.testing.assert_allclose(scaled.inter_nearest, np.array([10, 9, 9, 12]) / 13, rtol=1e-4)


def test_class_distance_stats_brute_force_and_singletons():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(37, 5)) * 3.0
  labels = rng.integers(0, 4, size=37) * 7  # sparse label values
  labels[5] = 100  # a class with one sample: no intra-class values
  stats = geometry.class_distance_stats(features, labels, block_size=8)
  dist = np.linalg.norm(features[:, None] - features[None], axis=-1)
  same = labels[:, None] == labels[None]
  intra = same & ~np.eye(37, dtype=bool)
  for i in range(37):
    if i == 5:
      assert np.isnan(stats.intra_mean[i]) and np.isnan(stats.intra_nearest[i])
    else:
      np.testing.assert_allclose(stats.intra_mean[i], dist[i, intra[i]].mean(), rtol=1e-4)
      np.testing.assert_allclose(stats.intra_nearest[i], dist[i, intra[i]].min(), rtol=1e-4)
    np.testing.assert_allclose(stats.inter_mean[i], dist[i, ~same[i]].mean(), rtol=1e-4)
    np.testing.assert_allclose(stats.inter_nearest[i], dist[i, ~same[i]].min(), rtol=1e-4)
  np.testing.assert_allclose(stats.max_distance, dist.max(), rtol=1e-4)


def test_select_classes_is_seeded_and_complete():
  labels = np.repeat(np.arange(10), 3)
  rows = geometry.select_classes(labels, 4, seed=1)
  assert len(np.unique(labels[rows])) == 4 and len(rows) == 12
  np.testing.assert_array_equal(rows, geometry.select_classes(labels, 4, seed=1))
  np.testing.assert_array_equal(geometry.select_classes(labels, None), np.arange(30))


class _PooledFeatures(nn.Module):
  """A stand-in classifier: features = ReLU(Dense(mean colour)), with the classifiers' call signature."""

  @nn.compact
  def __call__(self, x, train=False, return_features=False):
    features = nn.relu(nn.Dense(6)(x.mean(axis=(1, 2))))
    logits = nn.Dense(3)(features)
    return (logits, features) if return_features else logits


def test_penultimate_features_match_direct_apply():
  model = _PooledFeatures()
  images = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  features = geometry.penultimate_features(model, variables, images, image_size=8, batch_size=2)
  _, expected = model.apply(variables, jnp.asarray(images, jnp.float32) / 127.5 - 1.0, return_features=True)
  assert features.shape == (5, 6) and np.abs(features).sum() > 0
  np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------- gradient stability


def test_cosine_similarity_known_vectors():
  a = jnp.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
  b = jnp.array([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0], [1.0, 0.0]])
  sim = np.asarray(gradients.cosine_similarity(a, b))
  np.testing.assert_allclose(sim[:3], [0.0, 1.0, -1.0], atol=1e-6)
  assert np.isnan(sim[3])
  # [T, B, H, W, C]: step 1 rotates latent 0 by 60 degrees (cos 0.5), step 2 flips latent 1's sign.
  g = np.zeros((3, 2, 2, 1, 1), np.float32)
  g[:, 0, :, 0, 0] = [[1.0, 0.0], [0.5, np.sqrt(0.75)], [0.5, np.sqrt(0.75)]]
  g[:, 1, :, 0, 0] = [[1.0, 2.0], [3.0, 6.0], [-3.0, -6.0]]
  np.testing.assert_allclose(gradients.consecutive_cosine_similarity(g), [[0.5, 1.0], [1.0, -1.0]], atol=1e-6)


class _RampGenerator(nn.Module):
  """Generator interface; pixel (h, w) of the image of `w` is `tanh(w averaged over layers) * (1 + 0.1 h)`."""
  z_dim: int = 3
  c_dim: int = 0
  w_dim: int = 3
  img_resolution: int = 8
  img_channels: int = 3
  num_ws: int = 2

  def synthesis(self, ws, noise_mode="const"):
    ramp = jnp.broadcast_to(1.0 + 0.1 * jnp.arange(8.0)[:, None, None], (8, 8, 1))
    return jnp.tanh(ws.mean(axis=1))[:, None, None, :] * ramp


class _MeanColourClassifier(nn.Module):

  @nn.compact
  def __call__(self, x):
    return x.mean(axis=(1, 2)) @ self.param("kernel", nn.initializers.normal(2.0), (3, 4))


def _attack_config(num_steps, crop_scale):
  config = load_file(CONFIGS / "attack_facescrub_ffhq.py").get_config("smoke").attack
  config.num_steps, config.identity_loss, config.learning_rate = num_steps, "cross_entropy", 0.3
  config.center_crop, config.resize, config.crop_scale = 8, 8, crop_scale
  return config


@pytest.fixture(scope="module")
def ramp_attack():
  generator, classifier = _RampGenerator(), _MeanColourClassifier()
  variables = classifier.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  inputs = dict(w_init=jax.random.normal(jax.random.key(1), (3, 1, 3)), targets=jnp.array([0, 2, 3]),
                keys=jax.random.split(jax.random.key(2), 3))
  models = dict(generator=generator, generator_variables={}, target_model=classifier, target_variables=variables)
  return inputs, models


def test_attack_gradient_similarity_optimises_like_the_attack(ramp_attack):
  """With random crops (which change the logits of the ramp images) the latents follow `optimize_latents`."""
  inputs, models = ramp_attack
  config = _attack_config(3, (0.3, 1.0))
  w_final, _ = gradients.attack_gradient_similarity(**inputs, **models, config=config)
  np.testing.assert_allclose(w_final, attack.optimize_latents(**inputs, **models, config=config), rtol=1e-5,
                             atol=1e-6)
  assert np.abs(np.asarray(w_final) - np.asarray(inputs["w_init"])).max() > 1e-2


def test_attack_gradient_similarity_closed_form(ramp_attack):
  """Without crops, d loss / d pixel = kernel @ (softmax - onehot) / 64 at every pixel; the mean colour is
  1.35 tanh(w)."""
  inputs, models = ramp_attack
  num_steps = 3
  _, similarity = gradients.attack_gradient_similarity(**inputs, **models, config=_attack_config(num_steps, (1.0, 1.0)))
  assert similarity.shape == (3, num_steps - 1)
  trajectory = [np.asarray(inputs["w_init"])] + [
      np.asarray(attack.optimize_latents(**inputs, **models, config=_attack_config(t, (1.0, 1.0))))
      for t in range(1, num_steps)]
  kernel = np.asarray(models["target_variables"]["params"]["kernel"], np.float64)
  colour = 1.35 * np.tanh(np.stack(trajectory)[:, :, 0])           # [T, B, 3]
  probs = np.asarray(jax.nn.softmax(colour @ kernel))
  direction = (probs - np.eye(4)[np.asarray(inputs["targets"])]) @ kernel.T  # [T, B, 3]
  expected = np.sum(direction[:-1] * direction[1:], -1) / (
      np.linalg.norm(direction[:-1], axis=-1) * np.linalg.norm(direction[1:], axis=-1))
  np.testing.assert_allclose(similarity, expected.T, atol=1e-4)
  assert np.all(np.abs(expected) < 0.9999)  # the direction really changes between steps


# ----------------------------------------------------------------------------------------------- stage ablation


def test_stage_combinations_swap_one_stage():
  combos = ablation.stage_combinations(3, stages=(1, 3))
  assert combos[:3] == [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
  assert len(combos) == len(set(combos)) == 3 + 2 * 3 * 2
  assert (2, 0, 0) in combos and (0, 0, 2) in combos and (0, 2, 0) not in combos
  for combo in combos[3:]:
    main, stage, other = ablation.describe(combo)
    assert stage in (1, 3) and other != main
    rebuilt = [main] * 3
    rebuilt[stage - 1] = other
    assert tuple(rebuilt) == combo
  assert ablation.describe((1, 1, 1)) == (1, None, None)
  with pytest.raises(ValueError, match="stages"):
    ablation.stage_combinations(2, stages=(4,))


# ----------------------------------------------------------------------------------------------- sweep (Fig. 2)


def test_sweep_advantages_are_differences_to_alpha_zero():
  records = [
      {"alpha": 0.0, "samples_per_class": 10, "metrics": {"acc_top1": 0.5, "xi_train": None}},
      {"alpha": 0.1, "samples_per_class": 10, "metrics": {"acc_top1": 0.75, "xi_train": 0.2}},
      {"alpha": -0.05, "samples_per_class": 10, "metrics": {"acc_top1": 0.125, "xi_train": 0.1}},
      {"alpha": 0.0, "samples_per_class": None, "metrics": {"acc_top1": 0.25, "xi_train": 0.3}},
      {"alpha": 0.1, "samples_per_class": None, "metrics": {"acc_top1": 0.5, "xi_train": 0.5}},
      {"alpha": 0.1, "samples_per_class": 5, "metrics": {"acc_top1": 0.5, "xi_train": 0.5}},  # no α = 0 at 5
  ]
  assert sweep.advantages(records, "acc_top1") == {10: {0.1: 0.25, -0.05: -0.375}, None: {0.1: 0.25}}
  xi = sweep.advantages(records, "xi_train")
  assert np.isnan(xi[10][0.1]) and np.isnan(xi[10][-0.05]) and abs(xi[None][0.1] - 0.2) < 1e-12
  assert sweep.run_name(-0.05, None) == "alpha-0.05_spcall" and sweep.run_name(0.1, 25) == "alpha0.1_spc25"


# ----------------------------------------------------------------------------------------------- calibration


def test_calibration_measure_hand_made():
  # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins (0.8, 0.9] and (0.5, 0.6] of 10.
  probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]], np.float32)
  labels = np.array([0, 1, 1])
  m = calibration.measure(probs, labels)
  assert m["test_accuracy"] == pytest.approx(2 / 3) and m["confidence"] == pytest.approx(0.8)
  # ECE = 2/3 * |0.5 - 0.9| + 1/3 * |1 - 0.6|
  assert m["ece"] == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.4, abs=1e-6)
  assert m["bins"]["count"][8] == 2 and m["bins"]["count"][5] == 1 and sum(m["bins"]["count"]) == 3


def test_calibration_summary_pools_bins_by_count():
  def record(seed, ece, count, accuracy):
    return {"alpha": 0.1, "seed": seed, "test_accuracy": 0.9, "ece": ece, "confidence": 0.8,
            "bins": {"count": count, "accuracy": accuracy, "confidence": [0.25, 0.75]}}
  summary = calibration.summarize([record(0, 0.1, [1, 3], [1.0, 0.5]), record(1, 0.3, [3, 1], [0.0, 1.0])])
  stats = summary[0.1]
  assert stats["ece"]["mean"] == pytest.approx(0.2) and stats["ece"]["sd"] == pytest.approx(np.sqrt(0.02))
  assert stats["bins"]["count"] == [4, 4]
  np.testing.assert_allclose(stats["bins"]["accuracy"], [0.25, 0.625])   # (1*1 + 3*0) / 4, (3*0.5 + 1*1) / 4
  np.testing.assert_allclose(stats["bins"]["confidence"], [0.25, 0.75])


def test_calibration_of_a_trained_target_equals_the_training_report(tmp_path):
  """The exported model measured by `run_calibration` gives the accuracy, ECE and confidence `jaxmia.train`
  reported at its last epoch (two code paths: training's sharded eval step, the analysis' batched apply)."""
  from jaxmia import train  # pylint: disable=g-import-not-at-top  (orbax, TFDS)
  config = load_file(CONFIGS / "digits.py").get_config("smoke")
  config.label_smoothing, config.seed = 0.1, 3
  _, final = train.train_and_evaluate(config, tmp_path / calibration.run_name(0.1, 3))
  (record,) = calibration.run_calibration(config, [0.1], [3], tmp_path)   # reuses the exported model
  assert record["name"] == "alpha0.1_seed3"
  assert record["test_accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-6)
  assert record["ece"] == pytest.approx(final["test_ece"], abs=1e-5)
  assert record["confidence"] == pytest.approx(final["test_confidence"], abs=1e-5)
