"""BREP-MI: the boundary-repulsion search on a toy target with half-space classes (answers known in closed form),
its budgets and query counts, per-latent independence and seeds; the attack run through the generator
(resume after an interruption) and the command line on the smoke config.
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_GENERATOR_KWARGS, run_program, save_random_classifier, save_tiny_generator
from jaxmia import parallel
from jaxmia.attack import brep
from jaxmia.attack import run as attack_run
from jaxmia.config import load_file
from jaxmia.evaluate.attack_run import load_attack_run

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
LATENT = (1, 4)  # a latent shaped like a single w: [1, w_dim]


def half_space_labels(points):
  """The toy target: label 1 where the first coordinate is > 0, else 0 (the boundary is x0 = 0)."""
  return (points[:, 0, 0] > 0).astype(jnp.int32)


def toy_settings(**overrides):
  return brep.BrepSettings(**{"max_iterations": 60, **overrides})


@functools.partial(jax.jit, static_argnames="settings")
def toy_search(state, targets, keys, settings, max_iterations):
  """`brep.search` on the toy target, compiled once per (settings, batch size): the iteration limit is traced."""
  return brep.search(state, targets, keys, half_space_labels, settings, max_iterations)


def run_toy(w, targets, keys, settings, active=None, chunk=None):
  """The search to its end, `chunk` iterations per call (None: one call)."""
  w = jnp.asarray(w, jnp.float32)
  active = np.ones(len(w), bool) if active is None else active
  state = brep.init_state(w, active, settings)
  limit = jnp.int32(jnp.iinfo(jnp.int32).max if chunk is None else chunk)
  while bool(jnp.any(~state.done)):
    state = toy_search(state, jnp.asarray(targets), keys, settings, limit)
  return state


def start_points(x0s, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(len(x0s), *LATENT)).astype(np.float32)
  w[:, 0, 0] = x0s
  return w


def test_repulsion_step_is_the_official_closed_form():
  settings = brep.BrepSettings()
  w, r = jnp.array([[0.5, 0.0, 0.0, 0.0]]), 2.0
  e = np.eye(4, dtype=np.float32)[:, None, :] * r        # directions +-r e0, +-r e1
  directions = jnp.asarray(np.concatenate([e[:2], -e[:2]]))
  inside = jnp.array([True, True, False, True])            # only -r e0 crosses the boundary
  moved, radius, grew = brep.repulsion_step(w, directions, inside, r, settings)
  step = min(r / 3, 3.0)
  # Mean over all 4 points of -(outside) * direction, over the radius: +r e0 / 4 / r.
  np.testing.assert_allclose(moved, w + step * np.array([[0.25, 0, 0, 0]]), rtol=1e-6)
  assert float(radius) == r and not bool(grew)              # 3 of 4 inside is not more than 75 %
  # Away from the boundary: the first coordinate grows; the others do not move.
  assert float(moved[0, 0]) > 0.5 and np.all(np.asarray(moved[0, 1:]) == 0)
  # Not repulsion only: inside points pull (+1) and outside points push (-1): (e0 + e1 - (-e0) - e1) r / 4 / r.
  moved, _, _ = brep.repulsion_step(w, directions, inside, r, brep.BrepSettings(repulsion_only=False))
  np.testing.assert_allclose(moved, w + step * np.array([[0.5, 0, 0, 0]]), rtol=1e-6)


@pytest.mark.parametrize("inside_count,grows", [(32, True), (25, True), (24, False), (0, False)])
def test_radius_grows_only_when_more_than_the_official_fraction_is_inside(inside_count, grows):
  settings = brep.BrepSettings()
  w = jnp.zeros(LATENT)
  directions = brep.sphere_directions(jax.random.key(0), w, 2.0, 32)
  np.testing.assert_allclose(jnp.sqrt(jnp.sum(directions ** 2, axis=(1, 2))), 2.0, rtol=1e-5)  # on the sphere
  inside = jnp.arange(32) < inside_count
  _, radius, grew = brep.repulsion_step(w, directions, inside, 2.0, settings)
  assert bool(grew) == grows
  np.testing.assert_allclose(float(radius), 2.0 * 1.3 if grows else 2.0, rtol=1e-6)
  # The step divides by the grown radius (the official order), its size uses the radius before.
  moved, _, _ = brep.repulsion_step(w, directions, inside, 2.0, settings)
  expected = -(2.0 / 3) * np.sum(np.asarray(directions)[inside_count:], axis=0) / 32 / float(radius)
  np.testing.assert_allclose(moved, expected, rtol=1e-5, atol=1e-7)


def test_search_moves_away_from_the_boundary_and_counts_queries():
  settings = toy_settings()
  w = start_points([0.3, 0.1, 1.0, 3.0])
  targets = np.ones(4, np.int32)
  keys = brep.class_keys(jax.random.key(1), [1, 1, 1, 1], 1)
  state = brep.init_state(jnp.asarray(w), np.ones(4, bool), settings)
  step = jax.jit(lambda s: brep.search_iteration(s, jnp.asarray(targets), keys, half_space_labels, settings))
  distance = [np.asarray(state.w[:, 0, 0])]
  radius = [np.asarray(state.radius)]
  for _ in range(settings.max_iterations):
    state = step(state)
    distance.append(np.asarray(state.w[:, 0, 0]))
    radius.append(np.asarray(state.radius))
  distance, radius = np.array(distance), np.array(radius)
  # Every move keeps the point inside the class and never brings it closer to the boundary (the points that
  # cross it all lie on the boundary's side, so their repulsion has a positive first coordinate).
  assert (distance > 0).all() and (np.diff(distance, axis=0) >= 0).all()
  assert (distance[-1] > distance[0] + 1).all()
  assert (np.diff(radius, axis=0) >= 0).all() and (radius[-1] > 2.0).all()
  # Growth is by the official factor; the result is the point at the last growth.
  growths = np.asarray(state.growths)
  np.testing.assert_allclose(radius[-1], 2.0 * 1.3 ** growths, rtol=1e-5)
  assert state.done.all()                                   # the budget of 60 sphere samplings ends the search
  np.testing.assert_array_equal(state.iteration, 60)
  np.testing.assert_array_equal(state.queries, 60 * (32 + 1))  # 32 sphere points and the moved point per iteration
  np.testing.assert_array_equal(state.accepted + state.growths + state.rejected >= 60, True)


def test_budgets_stop_the_search_and_inactive_latents_spend_nothing():
  w = start_points([0.3, 0.5, 0.2])
  keys = brep.class_keys(jax.random.key(2), [1, 1, 1], 1)
  settings = toy_settings(max_iterations=1000, max_queries=10 * 33 + 5)
  state = run_toy(w, np.ones(3, np.int32), keys, settings, active=np.array([True, False, True]), chunk=7)
  np.testing.assert_array_equal(state.queries, [330, 0, 330])  # 10 iterations fit the query budget, not 11
  np.testing.assert_array_equal(state.iteration, [10, 0, 10])
  np.testing.assert_array_equal(state.w[1], w[1])
  # The official termination: max_iterations_at_radius accepted moves without a radius growth.
  settings = toy_settings(max_iterations=10_000, max_iterations_at_radius=3)
  state = run_toy(w, np.ones(3, np.int32), keys, settings)
  assert ((state.accepted - state.last_growth) == 3).all() and (state.iteration < 10_000).all()
  settings = toy_settings(max_iterations=10_000, max_radius=3.0)
  state = run_toy(w, np.ones(3, np.int32), keys, settings)
  assert (state.radius > 3.0).all() and (state.radius <= 3.0 * 1.3).all()


def test_a_latent_does_not_depend_on_its_batch_and_seeds_decide():
  settings = toy_settings()
  w = start_points([0.3, 0.1, 1.0, 0.05, 2.0], seed=3)
  targets = np.ones(5, np.int32)
  keys = brep.class_keys(jax.random.key(7), [3, 5, 8, 9, 11], 1)
  compiled = toy_search._cache_size()
  together = run_toy(w, targets, keys, settings, chunk=11)
  alone = run_toy(w[2:3], targets[2:3], keys[2:3], settings)
  pair = run_toy(w[[4, 2]], targets[[4, 2]], keys[jnp.array([4, 2])], settings, chunk=5)
  for name in brep.BrepState._fields:
    np.testing.assert_array_equal(getattr(together, name)[2], getattr(alone, name)[0], err_msg=name)
    np.testing.assert_array_equal(getattr(together, name)[2], getattr(pair, name)[1], err_msg=name)
  again = run_toy(w, targets, brep.class_keys(jax.random.key(7), [3, 5, 8, 9, 11], 1), settings)
  np.testing.assert_array_equal(together.result(), again.result())
  other = run_toy(w, targets, brep.class_keys(jax.random.key(8), [3, 5, 8, 9, 11], 1), settings)
  assert not np.array_equal(together.result(), other.result())
  assert toy_search._cache_size() == compiled + 3  # one search per batch size (5, 1, 2), whatever the chunk
  # Keys: one per (class, restart), the same whichever other classes are attacked.
  np.testing.assert_array_equal(jax.random.key_data(brep.class_keys(jax.random.key(7), [2, 9], 2))[2:],
                                jax.random.key_data(brep.class_keys(jax.random.key(7), [9], 2)))


@pytest.mark.parametrize("per_call", [1, 5, 32, 40])
def test_labelling_the_sphere_in_calls_changes_only_the_call_size(per_call):
  """`sphere_points_per_call` bounds the images per target call (B x per_call) and leaves every result bit-equal,
  also when it does not divide the 32 sphere points (the last call is padded)."""
  sizes = []

  def recorded_labels(points):
    sizes.append(points.shape[0])  # at trace time: the static size of each call
    return half_space_labels(points)

  w = start_points([0.3, 0.1, 1.0, 0.5], seed=4)
  targets, keys = jnp.ones(4, jnp.int32), brep.class_keys(jax.random.key(5), [1, 2, 3, 4], 1)
  results = {}
  for setting in (0, per_call):
    settings = toy_settings(max_iterations=25, sphere_points_per_call=setting)
    state = brep.init_state(jnp.asarray(w), np.ones(4, bool), settings)
    sizes.clear()
    results[setting] = jax.jit(lambda s: brep.search(s, targets, keys, recorded_labels, settings))(state)
    assert set(sizes) == {4, 4 * min(setting or 32, 32)}  # the moved points, and the sphere per call
  # The latents sharded over the 4 forced devices, labelled in calls: the same search.
  sharding = parallel.data_sharding(parallel.make_mesh())
  state, targets, keys = jax.device_put((brep.init_state(jnp.asarray(w), np.ones(4, bool), settings), targets, keys),
                                        sharding)
  assert len(state.w.sharding.device_set) == 4
  results["sharded"] = jax.jit(lambda s: brep.search(s, targets, keys, half_space_labels, settings))(state)
  for name in brep.BrepState._fields:
    np.testing.assert_array_equal(getattr(results[0], name), getattr(results[per_call], name), err_msg=name)
    np.testing.assert_array_equal(getattr(results[0], name), getattr(results["sharded"], name), err_msg=name)
  assert int(results[0].growths.sum()) > 0  # the labels steered the search (the comparison is not vacuous)


def test_assign_starts_takes_the_first_draws_of_each_class():
  labels = np.array([3, 1, 3, 0, 1, 3])
  np.testing.assert_array_equal(brep.assign_starts(labels, [1, 1, 3, 3, 2]), [1, 4, 0, 2, -1])
  np.testing.assert_array_equal(brep.assign_starts(labels, [3, 3]), [0, 2])   # other classes change nothing


# ------------------------------------------------------------------------------------------------------------
# The attack run through a (tiny) StyleGAN2 and classifier.

def smoke_config(folder):
  config = load_file(CONFIGS / "attack_brep_numbers.py").get_config("smoke")
  config.generator, config.target = str(folder / "generator"), str(folder / "target")
  config.attack.center_crop, config.attack.resize = 16, 16
  return config


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  folder = tmp_path_factory.mktemp("brep_weights")
  save_tiny_generator(folder / "generator")
  save_random_classifier(folder / "target", seed=0, size=16, arch="resnet18", num_classes=3, base_channels=4)
  return folder


@pytest.fixture(scope="module")
def full_run(weights, tmp_path_factory):
  """The smoke attack run in this process, on the 4 forced devices: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("brep_full") / "run"
  return workdir, attack_run.run_attack(smoke_config(weights), workdir)


def test_interrupted_run_resumes_to_the_uninterrupted_result(weights, full_run, tmp_path, monkeypatch):
  config = smoke_config(weights)
  full_dir, summary = full_run
  real, calls = brep.attack_latents, []

  def interrupted_after_one_batch(*args, **kwargs):
    if calls:
      raise KeyboardInterrupt
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(brep, "attack_latents", interrupted_after_one_batch)
  with pytest.raises(KeyboardInterrupt):
    attack_run.run_attack(config, tmp_path / "resumed")
  assert sorted(p.name for p in (tmp_path / "resumed" / "brep").iterdir()) == ["batch_00000.npz"]
  monkeypatch.setattr(brep, "attack_latents", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
  calls.clear()
  resumed = attack_run.run_attack(config, tmp_path / "resumed")
  assert len(calls) == 1  # only the unfinished batch was searched again

  with np.load(full_dir / "latents.npz") as full, np.load(tmp_path / "resumed" / "latents.npz") as again:
    assert sorted(full.files) == sorted(again.files)
    for name in full.files:
      np.testing.assert_array_equal(full[name], again[name], err_msg=name)
    latents = {name: full[name] for name in full.files}
  assert summary["queries"] == resumed["queries"]
  found = latents["initial_found"]
  np.testing.assert_array_equal(latents["queries"] % (config.attack.sphere_points + 1), 0)
  assert (latents["queries"][~found] == 0).all() and (latents["queries"][found] > 0).all()
  assert summary["queries"]["total"] == int(latents["queries"].sum())
  assert summary["queries"]["start_draws"] == summary["num_start_draws"]
  assert summary["kind"] == "brep" and summary["queries"]["per_class"] == {
      int(c): int(latents["queries"][latents["targets"] == c].sum()) for c in np.unique(latents["targets"])}
  run = load_attack_run(full_dir)  # what jaxmia.evaluate reads
  np.testing.assert_array_equal(run.selected_w, latents["optimized_w"])
  assert run.initial_w is not None and run.optimized_w.shape == (len(latents["targets"]), 1, 8)

  config.seed = 8
  with pytest.raises(ValueError, match="different settings"):
    attack_run.run_attack(config, tmp_path / "resumed")


def test_command_line_runs_the_smoke_config_as_on_four_devices(weights, full_run, tmp_path):
  args = ["--config=configs/attack_brep_numbers.py:smoke", f"--workdir={tmp_path / 'run'}",
          f"--config.generator={weights / 'generator'}", f"--config.target={weights / 'target'}",
          "--config.attack.center_crop=16", "--config.attack.resize=16", "--config.attack.sphere_points_per_call=5"]
  code, stderr = run_program("jaxmia.attack", *args, timeout=300)
  assert code == 0, stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["kind"] == "brep" and len(summary["devices"]) == 1
  assert summary["queries"] == json.loads(json.dumps(full_run[1]["queries"]))
  assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == [f"class_000{c}.png" for c in range(3)]
  assert TINY_GENERATOR_KWARGS["w_dim"] == load_attack_run(tmp_path / "run").optimized_w.shape[-1]
  # One device labelling 5 sphere points per call (the child process) and the 4 forced devices labelling all 32
  # at once (this process) give the same attack.
  with np.load(tmp_path / "run" / "latents.npz") as one, np.load(full_run[0] / "latents.npz") as four:
    for name in ("targets", "initial_indices", "queries", "iterations", "growths", "rejected"):
      np.testing.assert_array_equal(one[name], four[name], err_msg=name)
    for name in ("initial_w", "optimized_w", "final_w", "radius"):
      np.testing.assert_allclose(one[name], four[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("variant", [None, "smoke"])
def test_config_has_the_official_defaults_and_bad_values_are_named(variant, tmp_path):
  config = load_file(CONFIGS / "attack_brep_numbers.py").get_config(variant)
  settings = brep.BrepSettings.from_config(config.attack)
  official = brep.BrepSettings()
  for name in ("sphere_points", "initial_radius", "radius_expansion", "expansion_fraction", "step_size_ratio",
               "max_step_size", "max_iterations_at_radius", "repulsion_only", "max_radius"):
    assert getattr(settings, name) == getattr(official, name), name
  assert (official.sphere_points, official.initial_radius, official.radius_expansion) == (32, 2.0, 1.3)
  config.attack.sphere_points, config.attack.point_clamp = 0, (1.5, -1.5)
  with pytest.raises(ValueError, match="attack.sphere_points.*attack.point_clamp|attack.point_clamp.*sphere_points"):
    attack_run.run_attack(config, tmp_path / "bad")
  config = load_file(CONFIGS / "attack_brep_numbers.py").get_config(variant)
  config.attack.xla_cpu_options = "fast"
  with pytest.raises(ValueError, match=r"config.attack.xla_cpu_options='fast' must be one of \('step', 'default'\)"):
    attack_run.run_attack(config, tmp_path / "bad")
  config.kind = "no_such_attack"
  with pytest.raises(ValueError, match="config.kind='no_such_attack' is not an attack"):
    attack_run.run_attack(config, tmp_path / "bad")
  assert not (tmp_path / "bad").exists()
