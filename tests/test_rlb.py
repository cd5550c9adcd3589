"""RLB-MI: the SAC pieces against direct computations (tanh-Gaussian log-probability, one update's critic loss,
target critics and temperature), the official reward, agents learning a toy black box (the reward goes up;
a class's agent does not depend on its batch; seeds decide); the attack run through a generator (resume after
an interruption, one device = four) and the command line on the smoke config.
"""
import json
import pathlib
import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from conftest import run_program, save_random_classifier, save_tiny_generator
from jaxmia import model_store
from jaxmia.attack import rlb
from jaxmia.attack import run as attack_run
from jaxmia.config import load_file
from jaxmia.evaluate.attack_run import load_attack_run
from jaxmia.models import dcgan

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


# ------------------------------------------------------------------------------------------------------------
# SAC pieces.

def test_squashed_gaussian_log_prob_is_the_change_of_variables():
  rng = np.random.default_rng(0)
  mean, log_std, noise = (jnp.asarray(rng.normal(size=(5, 3)), jnp.float32) for _ in range(3))
  log_std = 0.5 * log_std
  for reduction, reduce in (("sum", np.sum), ("mean", np.mean)):
    action, log_prob = rlb.squashed_gaussian(mean, log_std, noise, reduction, epsilon=0.0)
    u = mean + jnp.exp(log_std) * noise
    np.testing.assert_allclose(action, np.tanh(u), rtol=1e-6)
    # log N(u; mean, std) - log |d tanh / du|, the derivative by autodiff.
    dtanh = jax.vmap(jax.vmap(jax.grad(jnp.tanh)))(u)
    expected = norm.logpdf(u, mean, jnp.exp(log_std)) - jnp.log(dtanh)
    np.testing.assert_allclose(log_prob, reduce(np.asarray(expected), axis=-1), rtol=1e-4, atol=1e-4)
  # In one dimension the density of the action integrates to 1 over (-1, 1).
  a = np.linspace(-1, 1, 20_001)[1:-1]
  m, s = 0.3, 0.8
  _, log_prob = rlb.squashed_gaussian(jnp.full((len(a), 1), m), jnp.full((len(a), 1), np.log(s)),
                                      jnp.asarray((np.arctanh(a) - m) / s)[:, None], "sum", epsilon=0.0)
  np.testing.assert_allclose(np.trapezoid(np.exp(np.asarray(log_prob, np.float64)), a), 1.0, atol=1e-3)
  # The official epsilon keeps saturated actions finite.
  _, log_prob = rlb.squashed_gaussian(jnp.array([[30.0]]), jnp.array([[0.0]]), jnp.array([[0.0]]))
  assert np.isfinite(log_prob).all()


def test_soft_update_and_temperature_loss():
  target = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(-4.0)}}
  online = {"a": jnp.array([3.0, 0.0]), "b": {"c": jnp.array(4.0)}}
  updated = rlb.soft_update(target, online, 0.25)
  np.testing.assert_allclose(updated["a"], [1.5, 1.5])
  np.testing.assert_allclose(updated["b"]["c"], -2.0)
  copied = rlb.soft_update(target, online, 1.0)
  assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, copied, online)))
  log_probs = jnp.array([1.0, 3.0])
  loss, (grad_t, grad_p) = jax.value_and_grad(rlb.temperature_loss, argnums=(0, 1))(jnp.float32(0.5), log_probs, -1.0)
  np.testing.assert_allclose(loss, -0.5 * (2.0 - 1.0))
  np.testing.assert_allclose(grad_t, -(2.0 - 1.0))   # entropy -log pi = -2 below the target 1: T grows
  np.testing.assert_array_equal(grad_p, 0.0)          # the log-probabilities are held fixed
  assert float(jax.grad(rlb.temperature_loss)(jnp.float32(0.0), jnp.array([-5.0]), -1.0)) > 0  # above: T shrinks


def test_one_update_against_direct_computations():
  sac = rlb.Sac(3, rlb.SacSettings(hidden_size=8, discount=0.0, tau=0.1))
  agent = sac.init(jax.random.key(0))
  # Twin critics start independent; the target critics start equal to them.
  assert not np.allclose(agent.critics["fc1"]["kernel"][0], agent.critics["fc1"]["kernel"][1])
  rng = np.random.default_rng(1)
  batch = rlb.Replay(states=jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
                     actions=jnp.asarray(rng.uniform(-1, 1, size=(6, 3)), jnp.float32),
                     rewards=jnp.asarray(rng.normal(size=6), jnp.float32),
                     next_states=jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), dones=jnp.zeros(6))
  new, losses = jax.jit(sac.learn)(agent, batch, jax.random.key(2))
  # discount 0: the critic target is the reward, each critic's loss 0.5 * MSE, their sum reported.
  q = np.stack([np.asarray(sac.critic.apply({"params": jax.tree_util.tree_map(lambda p: p[i], agent.critics)},
                                            batch.states, batch.actions)) for i in range(2)])
  np.testing.assert_allclose(losses["critic_loss"], np.sum(0.5 * np.mean((q - np.asarray(batch.rewards)) ** 2, 1)),
                             rtol=1e-5)
  # Polyak: target = 0.1 * updated critics + 0.9 * old target (= old critics).
  for name in ("fc1", "q"):
    np.testing.assert_allclose(new.target_critics[name]["kernel"],
                               0.1 * new.critics[name]["kernel"] + 0.9 * agent.critics[name]["kernel"], rtol=1e-5)
  # Adam's first step moves log T by the learning rate against the gradient's sign; with the official mean
  # log-probability (|log pi| << 3) and target entropy -3, the entropy is above target, so T shrinks.
  np.testing.assert_allclose(new.log_temperature, -5e-4, rtol=1e-4)
  assert not np.allclose(new.actor["fc1"]["kernel"], agent.actor["fc1"]["kernel"])   # the actor was updated


def test_reward_is_the_official_formula():
  rng = np.random.default_rng(3)
  probs_state = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
  probs_action = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
  probs_state[0] = [0.05, 0.7, 0.1, 0.1, 0.05]     # the target (1) on top: the margin counts
  probs_state[1] = [0.6, 0.2, 0.1, 0.05, 0.05]     # below another class: the margin is floored
  probs_action[2, 3] = 0.0                         # a probability of 0 is floored before its log
  targets = np.array([1, 1, 0, 3])
  got = np.asarray(rlb.reward(jnp.asarray(probs_state), jnp.asarray(probs_action), jnp.asarray(targets)))
  for i, y in enumerate(targets):
    p, q = float(probs_state[i, y]), float(probs_action[i, y])
    margin = p - max(np.delete(probs_state[i], y))
    expected = 2 * np.log(p) + 2 * np.log(max(q, np.finfo(np.float32).tiny)) + 8 * np.log(max(1e-7, margin))
    np.testing.assert_allclose(got[i], expected, rtol=1e-5, err_msg=str(i))
  np.testing.assert_allclose(got[0], 2 * np.log(0.7) + 2 * np.log(probs_action[0, 1]) + 8 * np.log(0.6), rtol=1e-5)
  np.testing.assert_allclose(got[1], 2 * np.log(0.2) + 2 * np.log(probs_action[1, 1]) + 8 * np.log(1e-7), rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# Agents on a toy black box: three classes on a 2-D latent, class c's logit 4 <z, u_c>.

DIRECTIONS = jnp.array([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]])


def toy_probs(z):
  return jax.nn.softmax(4 * z @ DIRECTIONS.T, axis=-1)


def toy_settings(**overrides):
  return rlb.RlbSettings(**{"sac": rlb.SacSettings(hidden_size=32, batch_size=32), "max_episodes": 300, **overrides})


_RUNS = {}


def run_toy(classes, seed, settings, episodes):
  """Agents of `classes` after `episodes` episodes (one compile per batch size and settings)."""
  key = (len(classes), settings)
  if key not in _RUNS:
    _RUNS[key] = jax.jit(lambda s, t, k, n: rlb.run_episodes(s, t, k, toy_probs, settings, n))
  keys = rlb.class_keys(jax.random.key(seed), classes)
  state = rlb.init_batch_state(jax.random.key(0), len(classes), 2, settings)
  return _RUNS[key](state, jnp.asarray(classes, jnp.int32), keys, jnp.int32(episodes))


def test_agents_learn_the_toy_task_independently_of_their_batch():
  settings = toy_settings()
  state = run_toy([0, 1, 2], seed=0, settings=settings, episodes=300)
  rewards, scores = np.asarray(state.rewards), np.asarray(state.test_scores)
  assert int(state.episode) == 300 and int(state.transitions) == 300
  # Updates start after 32 transitions: the reward of the first 30 episodes is chance, that of the last 30 high.
  first, last = rewards[:, :30].mean(1), rewards[:, -30:].mean(1)
  assert (last > first + 20).all() and (np.median(rewards[:, -30:], axis=1) > -3).all(), (first, last)
  assert (scores[:, -30:].mean(1) > 0.8).all() and (scores[:, :30].mean(1) < 0.6).all(), scores.mean(1)
  # The result is the best test latent: its confidence is the best of all episodes, and it is that latent's.
  np.testing.assert_allclose(state.best_score, scores.max(1))
  np.testing.assert_allclose(toy_probs(state.best_z)[np.arange(3), np.arange(3)], state.best_score, rtol=1e-5)
  # A class's agent does not depend on the batch it runs in (other neighbours, another row), and the seed
  # decides.
  moved = run_toy([1, 2, 2], seed=0, settings=settings, episodes=60)
  again = run_toy([0, 1, 2], seed=0, settings=settings, episodes=60)
  np.testing.assert_allclose(moved.rewards[0, :60], again.rewards[1, :60], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(moved.best_z[0], again.best_z[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(moved.best_z[1:], np.asarray(again.best_z)[[2, 2]], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(again.rewards[:, :60], state.rewards[:, :60])   # deterministic
  other = run_toy([0, 1, 2], seed=1, settings=settings, episodes=60)
  assert not np.allclose(other.rewards[:, :60], again.rewards[:, :60])


@pytest.mark.slow
def test_multi_step_episodes_mix_the_latent_and_store_every_step():
  settings = toy_settings(max_episodes=40, max_step=3, alpha=0.5)
  assert settings.queries_per_episode == 3 * 2 + 1 and toy_settings().queries_per_episode == 2
  state = run_toy([0, 2], seed=4, settings=settings, episodes=40)
  assert int(state.transitions) == 120 and settings.replay_capacity() == 120
  replay = jax.tree_util.tree_map(np.asarray, state.replay)
  # Each step's next latent mixes the state and the action; each episode's last step is done.
  np.testing.assert_allclose(replay.next_states, 0.5 * replay.states + 0.5 * replay.actions, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(replay.dones[0], np.tile([0, 0, 1], 40))
  np.testing.assert_allclose(replay.states[:, 1::3], replay.next_states[:, 0::3])   # steps chain within episodes
  assert (np.abs(replay.actions) <= 1).all()
  capped = toy_settings(max_episodes=40, max_step=3, sac=rlb.SacSettings(hidden_size=32, batch_size=32,
                                                                          buffer_size=50))
  assert capped.replay_capacity() == 50
  state = run_toy([0, 2], seed=4, settings=capped, episodes=40)
  assert state.replay.rewards.shape == (2, 50) and int(state.transitions) == 120   # a ring buffer


# ------------------------------------------------------------------------------------------------------------
# The attack run through a (tiny) StyleGAN2 and classifier.

def smoke_config(folder):
  config = load_file(CONFIGS / "attack_rlb_numbers.py").get_config("smoke")
  config.generator, config.target = str(folder / "generator"), str(folder / "target")
  config.attack.center_crop, config.attack.resize = 16, 16
  return config


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  folder = tmp_path_factory.mktemp("rlb_weights")
  save_tiny_generator(folder / "generator")
  save_random_classifier(folder / "target", seed=0, size=16, arch="resnet18", num_classes=6, base_channels=4)
  return folder


@pytest.fixture(scope="module")
def full_run(weights, tmp_path_factory):
  """The smoke attack run in this process, on the 4 forced devices: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("rlb_full") / "run"
  return workdir, attack_run.run_attack(smoke_config(weights), workdir)


def test_interrupted_run_resumes_to_the_uninterrupted_result(weights, full_run, tmp_path, monkeypatch):
  config = smoke_config(weights)
  full_dir, summary = full_run
  real, calls = rlb.attack_classes, []

  def interrupted_after_one_batch(*args, **kwargs):
    if calls:
      raise KeyboardInterrupt
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(rlb, "attack_classes", interrupted_after_one_batch)
  with pytest.raises(KeyboardInterrupt):
    attack_run.run_attack(config, tmp_path / "resumed")
  assert sorted(p.name for p in (tmp_path / "resumed" / "rlb").iterdir()) == ["batch_00000.npz"]
  monkeypatch.setattr(rlb, "attack_classes", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
  calls.clear()
  resumed = attack_run.run_attack(config, tmp_path / "resumed")
  assert len(calls) == 1  # only the unfinished batch ran again

  with np.load(full_dir / "latents.npz") as full, np.load(tmp_path / "resumed" / "latents.npz") as again:
    assert sorted(full.files) == sorted(again.files)
    for name in full.files:
      np.testing.assert_array_equal(full[name], again[name], err_msg=name)
    latents = {name: full[name] for name in full.files}
  np.testing.assert_array_equal(latents["targets"], np.arange(6))
  assert summary["queries"] == resumed["queries"] == {"total": 6 * 12 * 2, "per_class": 24, "per_episode": 2,
                                                      "episodes": 12}
  np.testing.assert_array_equal(latents["queries"], 24)
  assert summary["kind"] == "rlb" and summary["num_selected"] == 6
  # The result of each class is its best test latent, stored as the generator's w for the evaluation.
  np.testing.assert_allclose(latents["final_scores"], latents["test_scores"].max(1))
  run = load_attack_run(full_dir)
  assert run.optimized_w.shape[0] == 6 and run.optimized_w.shape[-1] == 8
  np.testing.assert_array_equal(run.selected_targets, np.arange(6))
  assert sorted(p.name for p in (full_dir / "images").iterdir()) == [f"class_000{c}.png" for c in range(6)]

  config.seed = 8
  with pytest.raises(ValueError, match="different settings"):
    attack_run.run_attack(config, tmp_path / "resumed")


def test_a_batch_interrupted_midway_resumes_from_its_checkpoint(weights, full_run, tmp_path, monkeypatch):
  config = smoke_config(weights)
  config.attack.checkpoint_minutes = 0.0   # the batch's state after every call (of 5 episodes)

  def stop_after_the_first_call(*args):
    def report(state):
      raise KeyboardInterrupt
    return report

  monkeypatch.setattr(rlb, "_episode_progress", stop_after_the_first_call)
  with pytest.raises(KeyboardInterrupt):
    attack_run.run_attack(config, tmp_path / "run")
  partial = tmp_path / "run" / "rlb" / "batch_00000.partial.npz"
  assert partial.exists()
  episodes = []
  monkeypatch.setattr(rlb, "_episode_progress", lambda *args: lambda state: episodes.append(int(state.episode)))
  attack_run.run_attack(config, tmp_path / "run")
  assert episodes[:3] == [10, 12, 5]   # batch 0 went on from episode 5; batch 1 started afresh
  assert not partial.exists()
  with np.load(full_run[0] / "latents.npz") as full, np.load(tmp_path / "run" / "latents.npz") as again:
    for name in full.files:
      np.testing.assert_array_equal(full[name], again[name], err_msg=name)


def test_command_line_runs_the_smoke_config_as_on_four_devices(weights, full_run, tmp_path):
  args = ["--config=configs/attack_rlb_numbers.py:smoke", f"--workdir={tmp_path / 'run'}",
          f"--config.generator={weights / 'generator'}", f"--config.target={weights / 'target'}",
          "--config.attack.center_crop=16", "--config.attack.resize=16"]
  code, stderr = run_program("jaxmia.attack", *args, timeout=300)
  assert code == 0, stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["kind"] == "rlb" and len(summary["devices"]) == 1
  assert summary["queries"] == full_run[1]["queries"]
  # One device (the child process) and the 4 forced devices (this process) give the same attack.
  with np.load(tmp_path / "run" / "latents.npz") as one, np.load(full_run[0] / "latents.npz") as four:
    for name in ("z", "optimized_w", "rewards", "test_scores", "final_scores"):
      np.testing.assert_allclose(one[name], four[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("variant", [None, "smoke"])
def test_config_has_the_official_defaults_and_bad_values_are_named(variant, tmp_path):
  config = load_file(CONFIGS / "attack_rlb_numbers.py").get_config(variant)
  settings = rlb.RlbSettings.from_config(config.attack)
  official = rlb.RlbSettings()
  assert (official.max_episodes, official.max_step, official.alpha, official.reward_weights) == (
      40_000, 1, 0.0, (2.0, 2.0, 8.0))
  sac = rlb.SacSettings()
  assert (sac.hidden_size, sac.batch_size, sac.discount, sac.tau, sac.actor_learning_rate,
          sac.initial_temperature, sac.log_prob_reduction) == (256, 256, 0.99, 0.01, 5e-4, 1.0, "mean")
  assert (settings.max_step, settings.alpha, settings.reward_weights, settings.margin_floor) == (
      official.max_step, official.alpha, official.reward_weights, official.margin_floor)
  if variant is None:
    assert settings.sac == sac
  config.attack.tau, config.attack.log_prob_reduction = 0.0, "max"
  with pytest.raises(ValueError, match="attack.tau.*attack.log_prob_reduction"):
    attack_run.run_attack(config, tmp_path / "bad")
  assert not (tmp_path / "bad").exists()


def test_latent_renderer_takes_a_generator_without_mapping():
  class TinyDcgan(nn.Module):   # z -> image, as GMI's DCGAN
    @nn.compact
    def __call__(self, z):
      return jnp.tanh(nn.Dense(4 * 4 * 3)(z)).reshape(-1, 4, 4, 3)

  module = TinyDcgan()
  variables = module.init(jax.random.key(0), jnp.zeros((1, 5)))
  z = jax.random.normal(jax.random.key(1), (2, 5))
  render_fn = rlb.latent_renderer(module)
  np.testing.assert_array_equal(render_fn(variables, z), module.apply(variables, z))

  class TinyTarget(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(x.reshape(len(x), -1))

  target = TinyTarget()
  target_variables = target.init(jax.random.key(2), jnp.zeros((1, 4, 4, 3)))
  view = rlb.ViewSettings(clamp=True, center_crop=4, resize=4, dtype="float32")
  probs = rlb.black_box_probabilities(render_fn, target, view)((variables, target_variables), z)
  expected = jax.nn.softmax(target.apply(target_variables, module.apply(variables, z)), axis=-1)
  np.testing.assert_allclose(probs, expected, rtol=1e-5)


@pytest.mark.slow
def test_smoke_config_on_the_shipped_numbers_prior_through_the_command_line(tmp_path):
  """The embedded task: the shipped numbers prior (z [128] of two digits) against a 100-class 32x32 target."""
  save_random_classifier(tmp_path / "target", seed=1, size=32, arch="resnet18", num_classes=100, base_channels=4)
  args = ["--config=configs/attack_rlb_numbers.py:smoke", f"--workdir={tmp_path / 'run'}",
          f"--config.target={tmp_path / 'target'}", "--config.attack.max_episodes=10"]
  code, stderr = run_program("jaxmia.attack", *args, timeout=300)
  assert code == 0, stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["config"]["generator"] == "converted_weights/numbers2_stylegan2"
  assert summary["queries"]["total"] == 6 * 10 * 2
  run = load_attack_run(tmp_path / "run")
  with np.load(tmp_path / "run" / "latents.npz") as latents:
    assert latents["z"].shape == (6, 128) and (np.abs(latents["z"]) <= 1).all()   # actions: tanh-squashed
  # The result latents are stored as the prior's w (mapping of z), what the evaluation renders.
  assert run.optimized_w.shape[0] == 6 and run.optimized_w.shape[-1] == 128


@pytest.mark.slow
def test_celeba64_config_runs_with_gmi_generator(tmp_path):
  """configs/attack_rlb_celeba64.py with a (tiny) GMI DCGAN: a z -> image generator without a mapping network."""
  module = load_file(CONFIGS / "attack_rlb_celeba64.py")
  config = module.get_config()
  assert config.attack.max_episodes == 40_000 and rlb.RlbSettings.from_config(config.attack).sac == rlb.SacSettings()
  assert module.OFFICIAL_TARGETS == random.Random(42).sample(range(1000), 100)
  assert len(attack_run.resolve_targets(config.targets, 1000)) == 100
  g_kwargs = dict(latent_dim=100, dim=4, image_size=64, channels=3)
  generator = dcgan.Generator(**g_kwargs)
  model_store.save_model(tmp_path / "generator", jax.jit(generator.init)(jax.random.key(0), jnp.zeros((1, 100))),
                         kind="dcgan_generator", module_kwargs=g_kwargs)
  save_random_classifier(tmp_path / "target", seed=2, size=64, arch="resnet18", num_classes=1000, base_channels=4)
  config.generator, config.target = str(tmp_path / "generator"), str(tmp_path / "target")
  config.targets = str(module.OFFICIAL_TARGETS[:4])
  config.attack.batch_size, config.attack.max_episodes, config.attack.episodes_per_call = 4, 10, 10
  config.attack.hidden_size, config.attack.replay_batch_size = 16, 8
  summary = attack_run.run_attack(config, tmp_path / "run")
  assert summary["queries"]["per_class"] == 10 * 2
  run = load_attack_run(tmp_path / "run")
  with np.load(tmp_path / "run" / "latents.npz") as latents:
    np.testing.assert_array_equal(run.optimized_w[:, 0], latents["z"])   # z itself, as [N, 1, 100] rows
  np.testing.assert_array_equal(run.selected_targets, module.OFFICIAL_TARGETS[:4])
  assert len(list((tmp_path / "run" / "images").iterdir())) == 4
