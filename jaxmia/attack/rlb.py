"""RLB-MI (Han et al., CVPR 2023): the black-box model inversion attack by reinforcement learning.

The attacker sees the target's softmax output of an image, nothing else. One soft actor-critic (SAC) agent per
target class learns to move in the latent space of a public generator towards images the target gives to the
class. An episode of class y, with `max_step` steps (official: 1):

1. the state is a latent `z ~ N(0, I)` drawn at the start of the episode;
2. the actor (a tanh-squashed Gaussian policy) proposes an action `a` in `[-1, 1]^D`, and the next state is
   `z' = alpha * z + (1 - alpha) * a` (official `alpha = 0`: the next latent is the action itself);
3. the target scores the images of `z'` and of `a`; the reward is (`reward`)
   `2 log p_y(G(z')) + 2 log p_y(G(a)) + 8 log max(1e-7, p_y(G(z')) - max_{k != y} p_k(G(z')))`;
4. the transition goes to the agent's replay buffer, and once it holds more than `batch_size` transitions,
   every step does one SAC update (`learn`);
5. after the steps, the current policy is tested from a fresh `z ~ N(0, I)` (its actions sampled, as the
   official test does); the test latent with the highest target confidence `p_y` over all episodes (ties: the
   later) is the class's result.

SAC (`learn`, `SacSettings` with the official hyper-parameters): twin critics `Q_1, Q_2` with Polyak-averaged
target copies (tau 0.01), the critic target `r + gamma (1 - done) (min_i Q'_i(s', a') - T log pi(a'|s'))` with
`a' ~ pi(.|s')` from the online actor (there is no target actor), critic loss `0.5 * MSE` each, the actor loss
`T log pi(a|s) - Q_1(s, a)` (the official code uses the first critic only, after its update), and the entropy
temperature `T = exp(log T)` learned with the loss `-log T * (log pi(a|s) + target_entropy)`, target entropy
`-D`. Adam with learning rate 5e-4 for all three, replay batches of 256, discount 0.99, hidden layers 256.
The official log-probability of an action is the mean over its D coordinates, not the sum (`log_prob_reduction
= 'mean'`): against the target entropy `-D`, the temperature then shrinks at every update (T -> 0 over a long
attack, a slowly annealed entropy bonus); 'sum' is textbook SAC.

Where this implementation differs from the official code (each a bug or an implementation detail there, none
a setting of the paper): the Gaussian noise of an action is drawn per coordinate (the official code draws one
scalar for the whole batch of actions); the two critics start from independent initialisations (the official
critics are seeded identically, so they stay equal and the clipped double-Q is void); replay batches are drawn
uniformly with replacement (officially without); the critic target uses the temperature before this update
(the official one is a further update old); a probability of exactly 0 is floored at the smallest normal
float32 before its logarithm (officially -inf).

Batched agents: the agents of a batch of classes run in lockstep, one jitted on-device loop over episodes
(`run_episodes`, `lax.fori_loop`); their SAC updates are vmapped over the agents, and the images of all agents
of a step are rendered and scored in one call. The agent axis is sharded over the device mesh (`attack_classes`).
All agents start from the same network weights (the official code seeds every agent with the same seed); their
episodes use the keys `fold_in(fold_in(class key, episode), purpose)`, so a class's result depends only on the
seed and its class, not on its batch (up to the target's outputs for the same image in batches of other sizes).

Target queries: per episode, `max_step` images of `z'`, `max_step` of `a` (none extra when `alpha = 0`: then
`z' = a` and the one image is scored once; the official code submits it twice) and one test image.

Generator: `probs_fn(variables, z [K, D]) -> probabilities [K, num_classes]` is the only access to the
generator and the target (`black_box_probabilities`). The official prior is GMI's 64x64 DCGAN (z ~ N(0, I_100),
`jaxmia.models.dcgan.Generator`); a StyleGAN2 prior's z is the latent too (mapping, then synthesis,
`latent_renderer`). Any generator module whose `apply(variables, z)` returns images plugs in through
`latent_renderer`; the runner also reads its `z_dim` and `img_resolution`, and stores the results as `[N, 1, D]`
rows that its `synthesis` renders (the DCGAN's interface), or as the StyleGAN2's w.

`run_rlb(config, workdir)` is the resumable runner behind `python -m jaxmia.attack` for `config.kind = 'rlb'`
(configs/attack_rlb_numbers.py, configs/attack_rlb_celeba64.py); it writes the PPA run layout (`latents.npz`
with the result latents as the generator's `w`, `summary.json` with the query counts, `images/`) and one
`rlb/batch_00000.npz` per finished batch of classes (and the unfinished batch's state, `attack_classes`'s
checkpoint, so an interrupted batch resumes where it was). It reuses `jaxmia.attack.run`'s run-layout helpers
(`run_attack` imports this module when it dispatches to it, so the imports go one way at load time).
"""
import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

import jaxmia
from jaxmia import cli, files, parallel, report
from jaxmia.attack import layout, render
from jaxmia.attack.render import ViewSettings
from jaxmia.cli import number, one_of
from jaxmia.models import xla_cpu

# ------------------------------------------------------------------------------------------------------------
# Settings.

REDUCTIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class SacSettings:
  """The SAC agent's knobs (official values; hashable: they key compiled code)."""
  hidden_size: int = 256              # width of the two hidden layers of actor and critics
  discount: float = 0.99              # gamma
  tau: float = 0.01                   # Polyak factor of the target critics
  buffer_size: int = 1_000_000        # replay capacity (transitions; the oldest are overwritten)
  batch_size: int = 256               # replay batch per update; updates start once more are stored
  actor_learning_rate: float = 5e-4   # Adam
  critic_learning_rate: float = 5e-4  # Adam (both critics)
  temperature_learning_rate: float = 5e-4  # Adam on log T
  initial_temperature: float = 1.0    # T at the start (official log T = 0)
  target_entropy: float | None = None  # None: -D (the action dimension)
  log_std_min: float = -20.0          # clamp of the actor's log standard deviation
  log_std_max: float = 2.0
  log_prob_reduction: str = "mean"    # 'mean' over action coordinates (official) or 'sum' (textbook SAC)

  def check(self) -> list[str]:
    problems = []
    if self.hidden_size < 1 or self.batch_size < 1 or self.buffer_size < 1:
      problems.append("hidden_size, batch_size and buffer_size must be >= 1")
    if not 0 <= self.discount <= 1 or not 0 < self.tau <= 1:
      problems.append(f"discount={self.discount} must be in [0, 1] and tau={self.tau} in (0, 1]")
    if min(self.actor_learning_rate, self.critic_learning_rate, self.temperature_learning_rate) <= 0:
      problems.append("learning rates must be > 0")
    if not self.initial_temperature > 0:
      problems.append(f"initial_temperature={self.initial_temperature} must be > 0")
    if not self.log_std_min < self.log_std_max:
      problems.append("log_std_min must be < log_std_max")
    if self.log_prob_reduction not in REDUCTIONS:
      problems.append(f"log_prob_reduction={self.log_prob_reduction!r} must be one of {REDUCTIONS}")
    return problems


@dataclasses.dataclass(frozen=True)
class RlbSettings:
  """The attack's knobs (the RLB config's `attack` section; official values; hashable)."""
  sac: SacSettings = SacSettings()
  max_episodes: int = 40_000          # episodes per class (official 40,000)
  max_step: int = 1                   # steps per episode (official 1)
  alpha: float = 0.0                  # z' = alpha z + (1 - alpha) a (official 0); not the SAC temperature
  reward_weights: tuple[float, float, float] = (2.0, 2.0, 8.0)  # of log p_y(z'), log p_y(a), log margin
  margin_floor: float = 1e-7          # the margin p_y - max_{k != y} p_k is floored here before its log

  @classmethod
  def from_config(cls, config) -> "RlbSettings":
    target_entropy = config.get("target_entropy")
    sac = SacSettings(
        hidden_size=int(config.hidden_size), discount=float(config.discount), tau=float(config.tau),
        buffer_size=int(config.buffer_size), batch_size=int(config.replay_batch_size),
        actor_learning_rate=float(config.actor_learning_rate),
        critic_learning_rate=float(config.critic_learning_rate),
        temperature_learning_rate=float(config.temperature_learning_rate),
        initial_temperature=float(config.initial_temperature),
        target_entropy=None if target_entropy is None else float(target_entropy),
        log_std_min=float(config.log_std_min), log_std_max=float(config.log_std_max),
        log_prob_reduction=str(config.log_prob_reduction))
    settings = cls(sac=sac, max_episodes=int(config.max_episodes), max_step=int(config.max_step),
                   alpha=float(config.alpha), reward_weights=tuple(float(w) for w in config.reward_weights),
                   margin_floor=float(config.margin_floor))
    settings.check()
    return settings

  def check(self) -> None:
    problems = self.sac.check()
    if self.max_episodes < 1 or self.max_step < 1:
      problems.append("max_episodes and max_step must be >= 1")
    if not 0 <= self.alpha <= 1:
      problems.append(f"alpha={self.alpha} must be in [0, 1]")
    if len(self.reward_weights) != 3:
      problems.append(f"reward_weights={self.reward_weights} must be three numbers")
    if not self.margin_floor > 0:
      problems.append(f"margin_floor={self.margin_floor} must be > 0")
    if problems:
      raise ValueError("RLB-MI settings: " + "; ".join(problems) + ".")

  @property
  def queries_per_episode(self) -> int:
    """Images the target scores per episode: z' (and a, unless alpha = 0) at each step, and the test image."""
    return self.max_step * (1 if self.alpha == 0 else 2) + 1

  def replay_capacity(self) -> int:
    """Rows of the replay arrays: the buffer size, or all transitions of the attack when fewer."""
    return min(self.sac.buffer_size, self.max_episodes * self.max_step)


# ------------------------------------------------------------------------------------------------------------
# Networks: PyTorch's default `nn.Linear` initialisation (weights and biases U(+-1/sqrt(fan_in))), as the
# official networks; the critic's output layer U(+-3e-3) (official).

def _uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _linear(features: int, fan_in: int, weight_bound: float | None = None, name: str | None = None) -> nn.Dense:
  bound = 1.0 / math.sqrt(fan_in)
  return nn.Dense(features, kernel_init=_uniform(bound if weight_bound is None else weight_bound),
                  bias_init=_uniform(bound), name=name)


class Actor(nn.Module):
  """`state [..., D] -> (mean, log_std) [..., A]` of the pre-tanh Gaussian; log_std clamped."""
  action_dim: int
  hidden_size: int
  log_std_min: float = -20.0
  log_std_max: float = 2.0

  @nn.compact
  def __call__(self, state):
    x = nn.relu(_linear(self.hidden_size, state.shape[-1], name="fc1")(state))
    x = nn.relu(_linear(self.hidden_size, self.hidden_size, name="fc2")(x))
    mean = _linear(self.action_dim, self.hidden_size, name="mean")(x)
    log_std = _linear(self.action_dim, self.hidden_size, name="log_std")(x)
    return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)


class Critic(nn.Module):
  """`(state [..., D], action [..., A]) -> Q [...]`."""
  hidden_size: int

  @nn.compact
  def __call__(self, state, action):
    x = jnp.concatenate([state, action], axis=-1)
    x = nn.relu(_linear(self.hidden_size, x.shape[-1], name="fc1")(x))
    x = nn.relu(_linear(self.hidden_size, self.hidden_size, name="fc2")(x))
    return _linear(1, self.hidden_size, weight_bound=3e-3, name="q")(x)[..., 0]


def squashed_gaussian(mean, log_std, noise, reduction: str = "mean", epsilon: float = 1e-6):
  """A tanh-squashed Gaussian action and its log-probability.

  `a = tanh(mean + std * noise)`; `log pi(a) = log N(u; mean, std) - log(1 - a^2 + epsilon)` per coordinate
  (the change of variables through tanh, epsilon guarding a = +-1), reduced over the last axis by `reduction`
  ('sum': the log-density of the action vector; 'mean': the official per-coordinate mean).
  Shapes: `mean`, `log_std`, `noise` `[..., A]` -> `(action [..., A], log_prob [...])`.
  """
  pre_tanh = mean + jnp.exp(log_std) * noise
  action = jnp.tanh(pre_tanh)
  log_prob = -0.5 * noise ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi) - jnp.log(1 - action ** 2 + epsilon)
  return action, (jnp.mean if reduction == "mean" else jnp.sum)(log_prob, axis=-1)


def soft_update(target, online, tau: float):
  """Polyak averaging of a parameter pytree: `tau * online + (1 - tau) * target`."""
  return jax.tree_util.tree_map(lambda t, o: tau * o + (1 - tau) * t, target, online)


def temperature_loss(log_temperature, log_probs, target_entropy: float):
  """`-log T * mean(log pi + target_entropy)` with the log-probabilities `[B]` held fixed: its gradient raises T
  when the policy's entropy `-log pi` is below the target, and lowers it when above."""
  return -log_temperature * jnp.mean(jax.lax.stop_gradient(log_probs) + target_entropy)


class Agent(NamedTuple):
  """One SAC agent's parameters and optimiser states (a leading agent axis when batched)."""
  actor: Any
  critics: Any            # the two critics' parameters stacked on a leading axis of 2
  target_critics: Any
  log_temperature: jax.Array  # scalar
  actor_opt: Any
  critic_opt: Any
  temperature_opt: Any


class Replay(NamedTuple):
  """A replay buffer as fixed arrays: row i of each is one transition (`[N, ...]`, a leading agent axis when
  batched); which rows hold data is kept outside (`BatchState.transitions`: the same for all agents)."""
  states: jax.Array       # [N, D]
  actions: jax.Array      # [N, D]
  rewards: jax.Array      # [N]
  next_states: jax.Array  # [N, D]
  dones: jax.Array        # [N] float32: 1 at an episode's last step


@dataclasses.dataclass(frozen=True)
class Sac:
  """The networks and optimisers of an agent acting in a D-dimensional latent space (actions are D-dim too)."""
  latent_dim: int
  settings: SacSettings

  @property
  def actor(self) -> Actor:
    s = self.settings
    return Actor(self.latent_dim, s.hidden_size, s.log_std_min, s.log_std_max)

  @property
  def critic(self) -> Critic:
    return Critic(self.settings.hidden_size)

  def optimizers(self):
    s = self.settings
    return (optax.adam(s.actor_learning_rate), optax.adam(s.critic_learning_rate),
            optax.adam(s.temperature_learning_rate))

  @property
  def target_entropy(self) -> float:
    return -float(self.latent_dim) if self.settings.target_entropy is None else self.settings.target_entropy

  def init(self, key) -> Agent:
    """A fresh agent: actor and two independently initialised critics; target critics equal to the critics."""
    actor_key, critic_key = jax.random.split(key)
    state = jnp.zeros((1, self.latent_dim))
    actor = self.actor.init(actor_key, state)["params"]
    critics = jax.vmap(lambda k: self.critic.init(k, state, state)["params"])(jax.random.split(critic_key))
    log_temperature = jnp.log(jnp.float32(self.settings.initial_temperature))
    actor_tx, critic_tx, temperature_tx = self.optimizers()
    return Agent(actor=actor, critics=critics, target_critics=critics, log_temperature=log_temperature,
                 actor_opt=actor_tx.init(actor), critic_opt=critic_tx.init(critics),
                 temperature_opt=temperature_tx.init(log_temperature))

  def policy(self, actor_params, states, noise):
    """Actions and log-probabilities of `states` `[..., D]` for standard normal `noise` `[..., D]`."""
    mean, log_std = self.actor.apply({"params": actor_params}, states)
    return squashed_gaussian(mean, log_std, noise, self.settings.log_prob_reduction)

  def q_values(self, critics, states, actions):
    """Both critics' values `[2, ...]`."""
    return jax.vmap(lambda p: self.critic.apply({"params": p}, states, actions))(critics)

  def learn(self, agent: Agent, batch: Replay, key) -> tuple[Agent, dict]:
    """One SAC update of one agent from a replay batch (`[B, ...]` rows). Returns the agent and its losses."""
    s = self.settings
    next_key, policy_key = jax.random.split(key)
    actor_tx, critic_tx, temperature_tx = self.optimizers()
    temperature = jnp.exp(agent.log_temperature)

    next_actions, next_log_probs = self.policy(
        agent.actor, batch.next_states, jax.random.normal(next_key, batch.next_states.shape))
    next_q = jnp.min(self.q_values(agent.target_critics, batch.next_states, next_actions), axis=0)
    q_target = batch.rewards + s.discount * (1 - batch.dones) * (next_q - temperature * next_log_probs)
    q_target = jax.lax.stop_gradient(q_target)

    def critic_loss(critics):
      q = self.q_values(critics, batch.states, batch.actions)          # [2, B]
      return jnp.sum(0.5 * jnp.mean((q - q_target) ** 2, axis=1))     # the sum of the two critics' losses

    critic_value, critic_grads = jax.value_and_grad(critic_loss)(agent.critics)
    updates, critic_opt = critic_tx.update(critic_grads, agent.critic_opt, agent.critics)
    critics = optax.apply_updates(agent.critics, updates)

    noise = jax.random.normal(policy_key, batch.states.shape)
    first_critic = jax.tree_util.tree_map(lambda p: p[0], critics)

    def actor_loss(actor):
      actions, log_probs = self.policy(actor, batch.states, noise)
      q = self.critic.apply({"params": first_critic}, batch.states, actions)
      return jnp.mean(temperature * log_probs - q), log_probs

    (actor_value, log_probs), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(agent.actor)
    updates, actor_opt = actor_tx.update(actor_grads, agent.actor_opt, agent.actor)
    actor = optax.apply_updates(agent.actor, updates)

    temperature_value, temperature_grad = jax.value_and_grad(temperature_loss)(
        agent.log_temperature, log_probs, self.target_entropy)
    updates, temperature_opt = temperature_tx.update(temperature_grad, agent.temperature_opt,
                                                     agent.log_temperature)
    log_temperature = optax.apply_updates(agent.log_temperature, updates)

    agent = Agent(actor=actor, critics=critics, target_critics=soft_update(agent.target_critics, critics, s.tau),
                  log_temperature=log_temperature, actor_opt=actor_opt, critic_opt=critic_opt,
                  temperature_opt=temperature_opt)
    return agent, {"critic_loss": critic_value, "actor_loss": actor_value, "temperature_loss": temperature_value}


# ------------------------------------------------------------------------------------------------------------
# The reward and the episodes of a batch of agents.

_TINY = float(jnp.finfo(jnp.float32).tiny)


def reward(probs_state, probs_action, targets, weights=(2.0, 2.0, 8.0), margin_floor: float = 1e-7):
  """The official reward `[K]` from the target's probabilities `[K, C]` of the images of the next latent z'
  (`probs_state`) and of the action (`probs_action`), for target classes `targets` `[K]`:
  `w0 log p_y(z') + w1 log p_y(a) + w2 log max(margin_floor, p_y(z') - max_{k != y} p_k(z'))`."""
  targets = jnp.asarray(targets)[:, None]
  p_state = jnp.take_along_axis(probs_state, targets, axis=-1)[:, 0]
  p_action = jnp.take_along_axis(probs_action, targets, axis=-1)[:, 0]
  others = jnp.where(jnp.arange(probs_state.shape[-1]) == targets, -jnp.inf, probs_state).max(axis=-1)
  log = lambda p: jnp.log(jnp.maximum(p, _TINY))
  return (weights[0] * log(p_state) + weights[1] * log(p_action)
          + weights[2] * jnp.log(jnp.maximum(margin_floor, p_state - others)))


class BatchState(NamedTuple):
  """The attack state of a batch of A agents (one per class), carried through the episode loop."""
  agents: Agent           # leading axis A
  replay: Replay          # [A, N, ...]
  transitions: jax.Array  # int32 scalar: transitions each agent has stored (the same for all: lockstep)
  episode: jax.Array      # int32 scalar: episodes done
  best_z: jax.Array       # [A, D]: the test latent of the highest target confidence so far
  best_score: jax.Array   # [A]: its confidence p_y (-1 before the first episode)
  rewards: jax.Array      # [A, max_episodes]: each episode's mean reward over its steps
  test_scores: jax.Array  # [A, max_episodes]: each episode's test confidence p_y


def init_batch_state(key, num_agents: int, latent_dim: int, settings: RlbSettings) -> BatchState:
  """A batch of `num_agents` fresh agents, all with the network weights drawn from `key` (as the official code
  seeds every agent alike), and empty replay buffers of `settings.replay_capacity()` rows. Jit it (with output
  shardings) to build the buffers on the devices."""
  agent = Sac(latent_dim, settings.sac).init(key)
  agents = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_agents, *x.shape)), agent)
  rows = settings.replay_capacity()
  zeros = lambda *shape: jnp.zeros((num_agents, rows, *shape), jnp.float32)
  replay = Replay(states=zeros(latent_dim), actions=zeros(latent_dim), rewards=zeros(), next_states=zeros(latent_dim),
                  dones=zeros())
  history = jnp.zeros((num_agents, settings.max_episodes), jnp.float32)
  return BatchState(agents=agents, replay=replay, transitions=jnp.int32(0), episode=jnp.int32(0),
                    best_z=jnp.zeros((num_agents, latent_dim), jnp.float32),
                    best_score=jnp.full(num_agents, -1.0, jnp.float32), rewards=history, test_scores=history)


# Purposes of the per-episode keys (fold_in(episode key, purpose)).
_START, _ACT, _LEARN, _TEST_START, _TEST_ACT = range(5)


def _act(sac: Sac, agents: Agent, z, keys):
  """Sampled actions `[A, D]` of the agents' policies in states `z` `[A, D]`, one key per agent."""
  noise = jax.vmap(lambda k: jax.random.normal(k, z.shape[1:]))(keys)
  return jax.vmap(lambda actor, s, e: sac.policy(actor, s, e)[0])(agents.actor, z, noise)


def run_episode(state: BatchState, targets, keys, probs_fn: Callable, settings: RlbSettings) -> BatchState:
  """One episode of every agent: `max_step` steps (act, score, store, learn), then the test of the policy.

  `targets` int `[A]`, `keys` `[A]` the agents' class keys, `probs_fn(z [K, D]) -> [K, C]` the target's
  probabilities of the images of latents (the only access to generator and target).
  """
  sac = Sac(state.best_z.shape[-1], settings.sac)
  capacity = state.replay.rewards.shape[1]
  fold = lambda ks, data: jax.vmap(jax.random.fold_in, in_axes=(0, None))(ks, data)
  episode_keys = fold(keys, state.episode)
  normal = lambda ks: jax.vmap(lambda k: jax.random.normal(k, state.best_z.shape[1:]))(ks)

  def step(t, carry):
    agents, replay, transitions, z, total_reward = carry
    action = _act(sac, agents, z, fold(fold(episode_keys, _ACT), t))
    next_z = settings.alpha * z + (1 - settings.alpha) * action
    probs_state = probs_fn(next_z)
    probs_action = probs_state if settings.alpha == 0 else probs_fn(action)
    r = reward(probs_state, probs_action, targets, settings.reward_weights, settings.margin_floor)
    done = jnp.where(t == settings.max_step - 1, 1.0, 0.0) * jnp.ones_like(r)
    row = transitions % capacity
    put = lambda buffer, value: jax.lax.dynamic_update_index_in_dim(buffer, value, row, axis=1)
    replay = Replay(states=put(replay.states, z), actions=put(replay.actions, action), rewards=put(replay.rewards, r),
                    next_states=put(replay.next_states, next_z), dones=put(replay.dones, done))
    transitions = transitions + 1
    learn_keys = fold(fold(episode_keys, _LEARN), t)

    def learn_all(agents):
      def learn_one(agent, replay, key):
        index_key, update_key = jax.random.split(key)
        size = jnp.minimum(transitions, capacity)
        rows = jax.random.randint(index_key, (settings.sac.batch_size,), 0, size)
        return sac.learn(agent, jax.tree_util.tree_map(lambda x: x[rows], replay), update_key)[0]
      return jax.vmap(learn_one)(agents, replay, learn_keys)

    agents = jax.lax.cond(transitions > settings.sac.batch_size, learn_all, lambda a: a, agents)
    return agents, replay, transitions, next_z, total_reward + r

  z = normal(fold(episode_keys, _START))
  agents, replay, transitions, _, total_reward = jax.lax.fori_loop(
      0, settings.max_step, step, (state.agents, state.replay, state.transitions, z, jnp.zeros_like(state.best_score)))

  def test_step(t, z):
    action = _act(sac, agents, z, fold(fold(episode_keys, _TEST_ACT), t))
    return settings.alpha * z + (1 - settings.alpha) * action

  z_test = jax.lax.fori_loop(0, settings.max_step, test_step, normal(fold(episode_keys, _TEST_START)))
  score = jnp.take_along_axis(probs_fn(z_test), targets[:, None], axis=-1)[:, 0]
  better = score >= state.best_score
  record = lambda history, value: jax.lax.dynamic_update_index_in_dim(history, value, state.episode, axis=1)
  return BatchState(agents=agents, replay=replay, transitions=transitions, episode=state.episode + 1,
                    best_z=jnp.where(better[:, None], z_test, state.best_z),
                    best_score=jnp.where(better, score, state.best_score),
                    rewards=record(state.rewards, total_reward / settings.max_step),
                    test_scores=record(state.test_scores, score))


def run_episodes(state: BatchState, targets, keys, probs_fn: Callable, settings: RlbSettings, count) -> BatchState:
  """`count` more episodes (a traced int; never past `settings.max_episodes`) in one on-device loop. Jit it with
  `probs_fn` and `settings` fixed."""
  stop = jnp.minimum(state.episode + count, settings.max_episodes)
  return jax.lax.while_loop(lambda s: s.episode < stop,
                            lambda s: run_episode(s, targets, keys, probs_fn, settings), state)


def class_keys(key, classes):
  """The key of each class's agent `[len(classes)]`: `fold_in(key, class)`, whatever else is attacked."""
  return jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.asarray(np.asarray(classes), jnp.uint32))


# ------------------------------------------------------------------------------------------------------------
# The black box: latents -> generator images -> target probabilities.

def latent_renderer(generator, truncation_psi: float = 1.0, truncation_cutoff=None) -> Callable:
  """`render(generator_variables, z [K, D]) -> images [K, R, R, C]` for the agent's latent z: a StyleGAN2-like
  generator (one with a `mapping` method) maps z to w, then synthesises; any other generator module (GMI's
  DCGAN) is `generator.apply(variables, z)`."""
  if hasattr(generator, "mapping"):
    def render_stylegan(generator_variables, z):
      ws = generator.apply(generator_variables, z, None, truncation_psi=truncation_psi,
                           truncation_cutoff=truncation_cutoff, method="mapping")
      return generator.apply(generator_variables, ws, noise_mode="const", method="synthesis")
    return render_stylegan
  return lambda generator_variables, z: generator.apply(generator_variables, z)


def black_box_probabilities(render_fn: Callable, target_model, view: ViewSettings) -> Callable:
  """`probs_fn(variables, z [K, D]) -> [K, C]`: the target's softmax of the view (`render.target_view`) of the
  images `render_fn(generator_variables, z)`, `variables = (generator_variables, target_variables)`."""
  def probs_fn(variables, z):
    generator_variables, target_variables = variables
    images = render_fn(generator_variables, z)
    inputs = render.target_view(images, clamp=view.clamp, center_crop=view.center_crop, resize=view.resize)
    return jax.nn.softmax(target_model.apply(target_variables, inputs).astype(jnp.float32), axis=-1)
  return probs_fn


def _compiled(probs_fn: Callable, cache, settings: RlbSettings, latent_dim: int, mesh, xla_cpu_options: str):
  def build():
    def init(key, num_agents):
      return init_batch_state(key, num_agents, latent_dim, settings)

    if mesh is None:
      init_jit = jax.jit(init, static_argnums=1)
    else:
      data, replicated = parallel.data_sharding(mesh), parallel.replicated(mesh)
      shape = jax.eval_shape(lambda key: init(key, mesh.devices.size), jax.random.key(0))
      shardings = jax.tree_util.tree_map(lambda x: data if x.ndim else replicated, shape)
      init_jit = jax.jit(init, static_argnums=1, out_shardings=shardings)

    def episodes(state, targets, keys, variables, count):
      return run_episodes(state, targets, keys, lambda z: probs_fn(variables, z), settings, count)

    return init_jit, jax.jit(episodes, compiler_options=xla_cpu.compiler_options(xla_cpu_options))

  if cache is None:
    return build()
  modules, cache_settings = cache
  return render.cached_jit("rlb", modules, (cache_settings, settings, latent_dim, mesh, xla_cpu_options), build)


def attack_classes(targets, keys, *, probs_fn: Callable, variables, latent_dim: int, settings: RlbSettings,
                   init_key, mesh=None, episodes_per_call: int = 1000, cache=None,
                   progress: Callable[[BatchState], None] | None = None, checkpoint=None,
                   checkpoint_seconds: float = 600.0, xla_cpu_options: str = xla_cpu.DEFAULT_COMPILATION) -> BatchState:
  """RLB-MI agents of one batch of classes, run to `settings.max_episodes`; returns the final state on the host.

  Args:
    targets: int `[A]` the class of each agent; keys: `[A]` their keys (`class_keys`).
    probs_fn: `(variables, z [K, latent_dim]) -> [K, C]` target probabilities (`black_box_probabilities`).
    variables: the pytree `probs_fn` reads (generator and target weights), replicated over `mesh` if given.
    init_key: the key of the agents' initial network weights (the same for every batch).
    mesh: a `('data',)` mesh to shard the agents over (A divisible by its devices); None: one device.
    episodes_per_call: episodes per jitted call (`progress(state)` is called after each).
    cache: `(modules, settings)` that determine `probs_fn`, to reuse its compiled loop across calls
      (`render.cached_jit`); None compiles afresh.
    checkpoint: a `.npz` path for the whole state (agents, replay buffers, episode count), written after a call
      when `checkpoint_seconds` have passed since the last write (0: after every call); a state found there
      (of this batch's shapes) is resumed from. The state is exact and every episode's keys come from its index,
      so a resumed batch ends as an uninterrupted one.
    xla_cpu_options: how the episodes compile ('step' or 'default', `models.xla_cpu.compiler_options`).
  """
  targets = jnp.asarray(targets, jnp.int32)
  if mesh is not None:
    parallel.check_batch_size(len(targets), mesh, "RLB-MI batch of classes")
    targets, keys = jax.device_put((targets, keys), parallel.data_sharding(mesh))
  init, episodes = _compiled(probs_fn, cache, settings, latent_dim, mesh, xla_cpu_options)
  state = init(init_key, len(targets))
  if checkpoint is not None and pathlib.Path(checkpoint).exists():
    state = _read_state(pathlib.Path(checkpoint), state)
  last_write = time.monotonic()
  while int(state.episode) < settings.max_episodes:
    state = episodes(state, targets, keys, variables, jnp.int32(episodes_per_call))
    if (checkpoint is not None and int(state.episode) < settings.max_episodes
        and time.monotonic() - last_write >= checkpoint_seconds):
      _write_state(pathlib.Path(checkpoint), state)
      last_write = time.monotonic()
    if progress is not None:
      progress(state)
  return BatchState(*parallel.to_host(tuple(state)))


def _write_state(path: pathlib.Path, state: BatchState) -> None:
  leaves = parallel.to_host(jax.tree_util.tree_leaves(state))
  if jax.process_index() == 0:
    files.atomic_write(path, lambda f: np.savez(f, *leaves))


def _read_state(path: pathlib.Path, template: BatchState) -> BatchState:
  """The state saved at `path`, placed as `template`'s leaves are; `template` (after a warning) when the file
  does not read or holds another state's shapes."""
  leaves, treedef = jax.tree_util.tree_flatten(template)
  try:
    with np.load(path) as f:
      arrays = [f[f"arr_{i}"] for i in range(len(leaves))]
  except Exception as e:  # zipfile, zlib, numpy and OS errors all mean "unreadable"
    logging.warning("%s is unreadable (%s: %s); starting the batch afresh.", path, type(e).__name__, e)
    return template
  if any(a.shape != x.shape or a.dtype != x.dtype for a, x in zip(arrays, leaves)):
    logging.warning("%s holds another batch's state; starting the batch afresh.", path)
    return template
  put = lambda a, x: jax.make_array_from_callback(a.shape, x.sharding, lambda index: a[index])
  state = jax.tree_util.tree_unflatten(treedef, [put(a, x) for a, x in zip(arrays, leaves)])
  logging.info("Resuming the batch at episode %d from %s.", int(state.episode), path)
  return state


# ------------------------------------------------------------------------------------------------------------
# The runner: `python -m jaxmia.attack` with config.kind = 'rlb'.

_STATE = ("rlb/*.npz", "latents.npz", "summary.json")
_OUTPUTS = _STATE + ("rlb", "images", report.EVALUATION_DIR, "*.tmp")
_RESULTS = ("z", "score", "rewards", "test_scores")
_flag = one_of(True, False)

CONFIG_RULES = (
    ("seed", "an integer", number(integer=True)),
    ("overwrite", "True or False", _flag),
    ("latent.truncation_psi", "a finite number", number()),
    ("latent.truncation_cutoff", "None or an integer >= 0", lambda v: v is None or number(0, integer=True)(v)),
    ("attack.batch_size", "a positive integer", layout.positive_int),
    ("attack.episodes_per_call", "a positive integer", layout.positive_int),
    ("attack.checkpoint_minutes", ">= 0", number(0)),
    ("attack.max_episodes", "a positive integer", layout.positive_int),
    ("attack.max_step", "a positive integer", layout.positive_int),
    ("attack.alpha", "in [0, 1]", number(0, 1)),
    ("attack.reward_weights", "three numbers", lambda v: len(v) == 3 and all(number()(w) for w in v)),
    ("attack.margin_floor", "> 0", number(0, low_open=True)),
    ("attack.hidden_size", "a positive integer", layout.positive_int),
    ("attack.discount", "in [0, 1]", number(0, 1)),
    ("attack.tau", "in (0, 1]", number(0, 1, low_open=True)),
    ("attack.buffer_size", "a positive integer", layout.positive_int),
    ("attack.replay_batch_size", "a positive integer", layout.positive_int),
    ("attack.actor_learning_rate", "> 0", number(0, low_open=True)),
    ("attack.critic_learning_rate", "> 0", number(0, low_open=True)),
    ("attack.temperature_learning_rate", "> 0", number(0, low_open=True)),
    ("attack.initial_temperature", "> 0", number(0, low_open=True)),
    ("attack.target_entropy", "None (-latent dimension) or a number", lambda v: v is None or number()(v)),
    ("attack.log_std_min", "a finite number", number()),
    ("attack.log_std_max", "a finite number", number()),
    ("attack.log_prob_reduction", f"one of {REDUCTIONS}", one_of(*REDUCTIONS)),
    ("output.images_per_class", "an integer >= 0 (0: no grids)", number(0, integer=True)),
    ("output.image_size", "a positive integer", layout.positive_int),
)


def _episode_progress(report_progress, batch: int, num_batches: int, max_episodes: int):
  """An `attack_classes` progress callback: episodes over all batches, with the batch's mean best confidence."""
  def report_state(state: BatchState) -> None:
    episode = int(state.episode)
    done = batch * max_episodes + episode
    recent = np.asarray(parallel.to_host(state.rewards))[:, max(0, episode - 100):episode]
    report_progress(done, f"batch {batch + 1}/{num_batches}, episode {episode}: best target confidence "
                          f"{float(np.mean(parallel.to_host(state.best_score))):.3f} (mean over the batch), reward "
                          f"{float(np.mean(recent)):.3g} (mean of the last {recent.shape[1]} episodes)")
  return report_state


def run_rlb(config, workdir) -> dict:
  """Runs (or resumes) RLB-MI as `config` (configs/attack_rlb_numbers.py) describes; returns the summary.

  Keys: the agents' initial weights come from `fold_in(seed key, 1)` (shared by all classes), the episodes of
  class c from `fold_in(fold_in(seed key, 2), c)`. One agent per target class; the classes run in batches of
  `attack.batch_size` agents (the last batch repeats its last class), each saved to `rlb/batch_NNNNN.npz` when
  its episodes are done; the unfinished batch's whole state is saved to `rlb/batch_NNNNN.partial.npz` every
  `attack.checkpoint_minutes`, so a rerun resumes within it. The result of a class is its best
  test latent, written to `latents.npz` as the generator's w (what `jaxmia.evaluate` renders), its z beside.
  """
  cli.check_config(config, CONFIG_RULES + tuple(layout.view_rules("attack")))
  settings = RlbSettings.from_config(config.attack)
  workdir = files.check_workdir(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(int(config.attack.batch_size), mesh, "attack.batch_size")

  generator, generator_variables = layout.load_generator(config)
  target_model, target_variables = layout.load_weights(config.target, "Target model", "target")
  if getattr(generator, "c_dim", 0):
    raise ValueError(f"The generator is conditional (c_dim={generator.c_dim}); RLB-MI needs an unconditional one.")
  view = layout.view_of(config, "attack", generator.img_resolution)
  record = layout.fingerprint(config, generator_variables=generator_variables if config.generator else None,
                                  target_variables=target_variables, discriminator_variables=None)
  generator_c = render.with_compute_dtype(generator, view.dtype)
  target_c = render.with_compute_dtype(target_model, view.dtype)
  variables = parallel.replicate((generator_variables, target_variables), mesh)
  num_classes = layout.count_classes(target_model, target_variables, view.resize)
  classes = layout.resolve_targets(config.targets, num_classes)
  latent_dim = int(generator.z_dim)
  truncation = (float(config.latent.truncation_psi), config.latent.truncation_cutoff)
  render_fn = latent_renderer(generator_c, *truncation)
  probs_fn = black_box_probabilities(render_fn, target_c, view)

  layout.claim_workdir(workdir, record, state=_STATE, outputs=_OUTPUTS, overwrite=bool(config.get("overwrite", False)))
  seed_key = jax.random.key(config.seed)
  init_key, keys = jax.random.fold_in(seed_key, 1), class_keys(jax.random.fold_in(seed_key, 2), classes)
  logging.info("RLB-MI on %d classes (one SAC agent each, %d episodes of %d step(s)) on %d device(s); workdir %s.",
               len(classes), settings.max_episodes, settings.max_step, mesh.devices.size, workdir)

  t0 = time.monotonic()
  batch_size, num_agents = int(config.attack.batch_size), len(classes)
  num_batches = -(-num_agents // batch_size)
  (workdir / "rlb").mkdir(exist_ok=True)
  results = {name: [] for name in _RESULTS}
  report_progress = None
  for batch, start in enumerate(range(0, num_agents, batch_size)):
    stop = min(start + batch_size, num_agents)
    path = workdir / "rlb" / f"batch_{batch:05d}.npz"
    partial = workdir / "rlb" / f"batch_{batch:05d}.partial.npz"  # the unfinished batch's state
    n = stop - start
    expected = {"z": (n, latent_dim), "score": (n,), "rewards": (n, settings.max_episodes),
                "test_scores": (n, settings.max_episodes), "classes": (n,)}
    cached = layout.read_cached(path, expected) if path.exists() else None
    if cached is not None and not np.array_equal(cached["classes"], classes[start:stop]):
      cached = None
    if cached is None:
      if report_progress is None:
        logging.info("RLB-MI: classes %d-%d of %d in batches of %d agents.", start, num_agents, num_agents,
                     batch_size)
        report_progress = layout.progress_bar(num_batches * settings.max_episodes, "episodes", "RLB-MI",
                                               done=batch * settings.max_episodes)
      rows = np.minimum(np.arange(start, start + batch_size), num_agents - 1)  # the last batch repeats its end
      state = attack_classes(
          classes[rows], keys[rows], probs_fn=probs_fn, variables=variables, latent_dim=latent_dim,
          settings=settings, init_key=init_key, mesh=mesh, episodes_per_call=int(config.attack.episodes_per_call),
          cache=((generator_c, target_c), (view, truncation)),
          progress=_episode_progress(report_progress, batch, num_batches, settings.max_episodes),
          checkpoint=partial, checkpoint_seconds=60.0 * float(config.attack.get("checkpoint_minutes", 10.0)),
          xla_cpu_options=view.xla_cpu_options)
      cached = {"z": state.best_z[:n], "score": state.best_score[:n], "rewards": state.rewards[:n],
                "test_scores": state.test_scores[:n], "classes": classes[start:stop]}
      layout.save_npz(path, start=start, stop=stop, **cached)
      if jax.process_index() == 0:
        partial.unlink(missing_ok=True)
    for name in _RESULTS:
      results[name].append(cached[name])
  results = {name: np.concatenate(parts) for name, parts in results.items()}
  timings = {"attack_seconds": time.monotonic() - t0}

  w = _latents_to_w(results["z"], generator, generator_variables, truncation, mesh,
                    int(config.attack.batch_size))
  targets, kept, scores = classes, np.arange(num_agents), results["score"].astype(np.float32)
  queries = np.full(num_agents, settings.max_episodes * settings.queries_per_episode, np.int64)
  layout.save_npz(
      workdir / "latents.npz", targets=targets, optimized_w=w, final_scores=scores, selected_indices=kept,
      selected_w=w, selected_targets=targets, selected_scores=scores, z=results["z"], queries=queries,
      rewards=results["rewards"], test_scores=results["test_scores"])
  layout.write_grids(workdir, w, targets, generator, generator_variables, config, mesh)
  rewards = results["rewards"]
  window = max(1, min(100, settings.max_episodes // 10))
  summary = {
      "kind": "rlb",
      "config": json.loads(config.to_json_best_effort()),
      "num_classes_attacked": num_agents,
      "num_latents": num_agents,
      "num_selected": num_agents,
      "mean_final_score_selected": float(np.mean(scores)),
      "per_class_mean_selected_score": {int(c): float(s) for c, s in zip(targets, scores)},
      "queries": {"total": int(queries.sum()), "per_class": int(queries[0]),
                  "per_episode": settings.queries_per_episode, "episodes": settings.max_episodes},
      "reward": {f"mean_first_{window}_episodes": float(np.mean(rewards[:, :window])),
                 f"mean_last_{window}_episodes": float(np.mean(rewards[:, -window:]))},
      "timings": timings,
      "devices": [str(d) for d in mesh.devices.flat],
      "versions": {"jaxmia": jaxmia.__version__, "jax": jax.__version__},
  }
  layout.save_json(workdir / "summary.json", summary)
  logging.info("Done: RLB-MI on %d classes, %s target queries (%d per class); best target confidence %.3f "
               "(mean over classes); results in %s.", num_agents, f"{summary['queries']['total']:,}",
               summary["queries"]["per_class"], summary["mean_final_score_selected"], workdir)
  return summary


def _latents_to_w(z, generator, generator_variables, truncation, mesh, batch_size: int) -> np.ndarray:
  """The generator's w `[N, num_ws, w_dim]` of the result latents z `[N, D]` (what the evaluation renders), or,
  for a generator without a mapping network, z itself as `[N, 1, D]`."""
  if not hasattr(generator, "mapping"):
    return np.asarray(z, np.float32)[:, None]
  psi, cutoff = truncation

  def build():
    return jax.jit(lambda z, gv: generator.apply(gv, z, None, truncation_psi=psi, truncation_cutoff=cutoff,
                                                 method="mapping"))

  to_w = render.cached_jit("rlb_mapping", (generator,), truncation, build)
  gv = parallel.replicate(generator_variables, mesh)
  return np.asarray(parallel.map_arrays(lambda z: to_w(z, gv), (np.asarray(z, np.float32),), batch_size, mesh=mesh),
                    np.float32)
