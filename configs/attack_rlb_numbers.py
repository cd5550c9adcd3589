"""RLB-MI, the black-box reinforcement-learning attack, on the embedded 100-class numbers target (no download).

    python -m jaxmia.train --config=configs/numbers.py --workdir=runs/numbers
    python -m jaxmia.attack --config=configs/attack_rlb_numbers.py --workdir=runs/rlb_numbers
    python -m jaxmia.evaluate --config=configs/evaluate_digits.py --run_dir=runs/rlb_numbers  # + numbers fields

The attacker sees only the target's softmax output (`jaxmia.attack.rlb`). One SAC agent per class acts in the
z space of the shipped `converted_weights/numbers2_stylegan2` prior (z [128]: the two digits' latents; an
action in [-1, 1]^128 is mapped and synthesised). The agent, the reward and the episodes are the official
RLB-MI defaults (HanGyojin/RLB-MI: main.py, SAC.py), except the budget `max_episodes`: the official 40,000
episodes per class (each a replay update of batch 256 on 256-wide networks and two rendered, scored images)
are an accelerator's budget; on a CPU host, lower it here (the result is the best test image so far, so a
shorter attack is an earlier snapshot of the same one). `:smoke` is a seconds-long pipeline check
(6 classes in two batches, 12 episodes, small networks).
"""
import ml_collections
from ml_collections import config_dict


def get_config(arg=None) -> ml_collections.ConfigDict:
  """`arg`: None for the numbers attack, 'smoke' for a few-second pipeline check."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown RLB-MI config variant {arg!r}; use no variant or ':smoke'.")
  config = ml_collections.ConfigDict()
  config.kind = "rlb"             # the attack: 'ppa' (Plug & Play, the default), 'brep' or 'rlb' (this one)
  config.seed = 42                # seeds the agents' initial weights and every class's episodes
  config.generator = "converted_weights/numbers2_stylegan2"  # "" = the seeded random_generator below
  config.random_generator = ml_collections.ConfigDict(dict(  # NVlabs Generator kwargs of the seeded random prior
      z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
      synthesis_kwargs=dict(channel_base=2048, channel_max=64)))
  config.target = "runs/numbers/model"  # what configs/numbers.py exports (slim ResNet-18, 100 classes, 32x32)
  config.targets = "all"          # "all", "N" (the first N classes) or a list of classes, e.g. "[0, 7, 42]"
  # A workdir holding an attack with other settings (run.json): False stops with the differing fields; True
  # deletes that attack's outputs (its evaluation included) and starts fresh. Same settings: resumed either way.
  config.overwrite = False

  # The agent's latent: the generator's z (a StyleGAN2 maps it to w with this truncation before synthesis).
  config.latent = ml_collections.ConfigDict()
  config.latent.truncation_psi = 1.0   # 1: no truncation (the official DCGAN prior has none)
  config.latent.truncation_cutoff = config_dict.placeholder(int)  # None: truncate all ws

  config.attack = ml_collections.ConfigDict()
  # How an image becomes the target's input (also read by jaxmia.evaluate): generator image -> clamp -> crop -> resize.
  config.attack.center_crop = 32        # numbers are centred: no crop
  config.attack.resize = 32             # the target's input size
  config.attack.clamp = True            # clamp images to [-1, 1] (a black-box attacker submits valid images)
  config.attack.dtype = "float32"       # compute dtype of generator and target: 'float32' or 'bfloat16'
  # XLA:CPU compilation of the attack's core: 'step' as the training and PPA steps (faster at the official 64x64
  # shapes on an Intel Xeon, docs/speed.md), 'default' XLA's own choices (configs/lowres_study.py's cells ran so)
  config.attack.xla_cpu_options = "step"
  # Agents (classes) run together: one resume unit, divisible by the devices; each holds a replay buffer of
  # min(buffer_size, max_episodes * max_step) transitions.
  config.attack.batch_size = 20         # agents per batch
  config.attack.episodes_per_call = 500  # episodes per jitted call (a progress line at most every 30 s)
  config.attack.checkpoint_minutes = 10.0  # save the unfinished batch (agents, replay) this often; 0: every call
  # Episodes (jaxmia.attack.rlb.RlbSettings); official values unless noted.
  config.attack.max_episodes = 4000     # episodes per class (not official: 40,000; see the module docstring)
  config.attack.max_step = 1            # steps per episode
  config.attack.alpha = 0.0             # next latent = alpha * z + (1 - alpha) * action (not the SAC temperature)
  config.attack.reward_weights = (2.0, 2.0, 8.0)  # of log p_y(z'), log p_y(action), log of the confidence margin
  config.attack.margin_floor = 1e-7     # the margin p_y - max_{k != y} p_k is floored here before its log
  # The SAC agent (jaxmia.attack.rlb.SacSettings); official values.
  config.attack.hidden_size = 256       # width of the two hidden layers of actor and critics
  config.attack.discount = 0.99         # gamma
  config.attack.tau = 0.01              # Polyak factor of the target critics
  config.attack.buffer_size = 1_000_000  # replay capacity (transitions)
  config.attack.replay_batch_size = 256  # transitions per update; updates start once more are stored
  config.attack.actor_learning_rate = 5e-4   # Adam
  config.attack.critic_learning_rate = 5e-4  # Adam (both critics)
  config.attack.temperature_learning_rate = 5e-4  # Adam on the log of the entropy temperature
  config.attack.initial_temperature = 1.0  # the entropy temperature T at the start (log T = 0)
  config.attack.target_entropy = config_dict.placeholder(float)  # None: -(latent dimension)
  config.attack.log_std_min = -20.0     # lower clamp of the actor's log standard deviation
  config.attack.log_std_max = 2.0       # upper clamp of the actor's log standard deviation
  config.attack.log_prob_reduction = "mean"  # 'mean' over the action's coordinates (official) or 'sum'

  config.output = ml_collections.ConfigDict()
  config.output.images_per_class = 1    # images in each class's grid (the result: one per class; 0: no grids)
  config.output.image_size = 32         # pixel size of each grid image

  if arg == "smoke":
    config.targets = "6"
    config.attack.batch_size = 4
    config.attack.max_episodes = 12
    config.attack.episodes_per_call = 5
    config.attack.hidden_size = 16
    config.attack.replay_batch_size = 8
  return config
