"""Speed of jaxmia's GMI, KED-MI (GAN training and attack), RLB-MI and BREP-MI beside the official PyTorch code,
in the same run.

    python scripts/bench_lowres.py                  # the six rows at batch 64
    python scripts/bench_lowres.py --quick          # batch 8, 2 rounds, 2 attack iterations per round: a smoke run
    python scripts/bench_lowres.py --rows=rlb_episode,brep_iteration   # the black-box and label-only attacks
    python scripts/bench_lowres.py --rows=gmi_attack --xla_cpu_options=step   # another compilation of a row

Each attack row compiles its jitted core as its attack's config does (`attack.xla_cpu_options`, 'step' or
'default', of configs/attack_<kind>_numbers.py); `--xla_cpu_options` overrides it for all of them.

Rows (float32, CPU, random weights, the official 64x64 settings: z 100, widths 64, Adam 2e-4 (0.5, 0.999),
n_critic 5, 1,000 classes, VGG16-BN target with the low-resolution head):
  GMI GAN       one WGAN-GP iteration: critic step with gradient penalty (weight 10), the generator step every 5th;
                jaxmia: `jaxmia.gan_gmi.compiled_train_step`; official: AI-secure/GMI-Attack's `Generator`, `DGWGAN`.
  KED-MI GAN    one iteration of the (K+1)-class GAN (the target's soft labels of the labelled batch, three
                batches); jaxmia: `jaxmia.gan_kedmi.compiled_train_step`; official: SCccc21/Knowledge-Enriched-DMI's
                `Generator`, `MinibatchDiscriminator`, `VGG16`, `softXEnt`, `log_sum_exp`, `HLoss`.
  GMI attack    one iteration of `jaxmia.attack.gmi.optimize` (identity + prior loss, momentum step, clip) on B
                latents; official: the `inversion` step around GMI's networks and VGG16.
  KED-MI attack one Adam step of `jaxmia.attack.kedmi.optimize` on B classes (one sample each, official);
                official: the `dist_inversion` step around KED-MI's networks and VGG16.
  RLB-MI episode  one episode (max_step 1, alpha 0) of B SAC agents, one per class, of `jaxmia.attack.rlb`
                (`run_episodes`: the B agents vmapped in lockstep): act, render z' with GMI's DCGAN generator,
                score it with the target's softmax, reward, store, one replay update at batch 256 (256-wide
                actor and twin critics, Adam 5e-4), then the test step (act from a fresh z, render, score). Every
                agent's replay memory holds `RLB_STORED` transitions before timing, so every episode updates (as
                after the first 256 episodes of an attack). Official: HanGyojin/RLB-MI's `SAC.Agent` (its
                networks and replay memory) imported unmodified, the episode loop of its `attack.inversion`
                written in bench_torch.py; the official code attacks one class at a time, so its B agents are B
                sequential ones (its step scores the image of z' = a twice, jaxmia once). Rate: episodes x
                agents per second.
  BREP-MI iteration  one boundary-repulsion iteration of `jaxmia.attack.brep.search` on B latents (GMI's DCGAN z,
                official config2.yaml: 32 sphere points, radius 2, x1.3 growth above 75 % inside, step min(r/3, 3),
                repulsion only, clamp [-1.5, 1.5]): the 32 sphere points and the moved point labelled by the target,
                the radius logic and the accept / reject. Each latent starts at a clamped z ~ N(0, I), its class the
                target's label of it, and every round starts again from there. Official: m-kahla/Label-Only-Model-
                Inversion-Attacks-via-Boundary-Repulsion's `gen_points_on_sphere`, `is_target_class`, `decision`
                imported unmodified, the body of `attack_single_target`'s loop written in bench_torch.py; B latents
                in sequence (one class at a time, as officially). Rate: target queries per second (33 per latent
                per iteration; the official loop also recomputes an accepted point's loss, one more forward not
                counted, and asks an evaluation model, left out). jaxmia labels `--brep_points_per_call` sphere
                points of every latent per target call (B x that many images; the official code 32 of one latent).
A round times `n_critic` (5) GAN iterations, or `--attack_steps` attack iterations (episodes for RLB-MI); rates
are images per second (B per iteration) in the first table, the unit of each row in the second. The PyTorch side
is `scripts/bench_torch.py` (cases gmi_gan, kedmi_gan, gmi_attack, kedmi_attack, rlb_episode, brep_iteration) in
the reference environment (`scripts/setup_reference.sh --gmi PATH --kedmi PATH --rlb PATH --brep PATH`): it
imports the official networks, losses, agents and helpers unmodified and writes the step loops around them itself
(the official train and attack scripts cannot be imported); see its docstring for how closely they follow the
official code (the official steps also compute weight gradients that jaxmia's do not: KED-MI's target in the GAN
step, all networks in the GMI and KED-MI attacks). Each row alternates the two sides for `--rounds` rounds
(`jaxmia.benchmarks`); a row whose checkout (GMI, KED-MI, RLB-MI, BREP-MI) the
reference environment lacks times jaxmia alone, with no ratio and a line saying why; the other rows keep theirs.
"""
from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict
import numpy as np

from jaxmia import benchmarks, gan_gmi, gan_kedmi, parallel
from jaxmia.attack import brep, gmi, kedmi, rlb
from jaxmia.attack.render import ViewSettings
from jaxmia.config import load_file
from jaxmia.models import dcgan, vgg, xla_cpu
from jaxmia.models.kedmi_discriminator import MinibatchDiscriminator

ROWS = ("gmi_gan", "kedmi_gan", "gmi_attack", "kedmi_attack", "rlb_episode", "brep_iteration")
NAMES = {"gmi_gan": "GMI GAN", "kedmi_gan": "KED-MI GAN", "gmi_attack": "GMI attack", "kedmi_attack": "KED-MI attack",
         "rlb_episode": "RLB-MI episode", "brep_iteration": "BREP-MI iteration"}
REPOS = {"gmi_gan": "gmi", "gmi_attack": "gmi", "kedmi_gan": "kedmi", "kedmi_attack": "kedmi", "rlb_episode": "rlb",
         "brep_iteration": "brep"}  # the official checkout each row's PyTorch side imports
UNITS = {"rlb_episode": "episodes x agents/s", "brep_iteration": "queries/s"}  # the second table's rows

flags.DEFINE_list("rows", list(ROWS), f"Rows to measure ({', '.join(ROWS)}).")
flags.DEFINE_integer("batch", 64, "Batch: images per GAN iteration, latents (GMI) or classes (KED-MI) per attack.")
flags.DEFINE_integer("attack_steps", 5, "Attack iterations per round.")
flags.DEFINE_integer("brep_points_per_call", 8, "BREP-MI: sphere points of each latent per target call (memory; "
                     "configs/attack_brep_celeba64.py's setting; 0: all 32 at once).")
flags.DEFINE_enum("xla_cpu_options", "config", ["config", "step", "default"], "How the four attack rows compile: "
                  "'config' as each attack's configs/attack_<kind>_numbers.py says (`attack.xla_cpu_options`), or "
                  "'step' / 'default' for all four.")
flags.DEFINE_bool("quick", False, "Smoke run: batch 8, 2 rounds, 2 attack iterations, 1024^2 matmul, 2 s wait "
                  "(flags given explicitly win).")
benchmarks.define_flags()
FLAGS = flags.FLAGS

IMAGE_SIZE, LATENT, NUM_CLASSES, N_CRITIC, LR = 64, 100, 1000, 5, 2e-4
GMI_ATTACK = dict(lr=0.02, momentum=0.9, identity_weight=100.0, clip=1.0)  # official attack.py
KEDMI_ATTACK = dict(lr=0.02, identity_weight=100.0)                       # official dist_inversion
RLB = dict(max_step=1, alpha=0.0, hidden_size=256, replay_batch=256, seed=42, reward_weights=(2.0, 2.0, 8.0),
           margin_floor=1e-7)  # official SAC.py and main.py defaults
RLB_STORED = 1000    # transitions in every agent's replay memory before timing (> 256: every episode updates)
RLB_HISTORY = 4096   # jaxmia's per-agent episode history and replay rows (> RLB_STORED; the counter restarts)
BREP = dict(sphere_points=32, initial_radius=2.0, radius_expansion=1.3, expansion_fraction=0.75,
            step_size_ratio=1 / 3, max_step_size=3.0, repulsion_only=True, point_clamp=(-1.5, 1.5))  # config2.yaml

COLUMNS = [
    benchmarks.Column("row", "name", str),
    benchmarks.Column("B", "B", "d"),
    benchmarks.Column("jaxmia s/iter", "jaxmia_s", ".3f"),
    benchmarks.Column("jaxmia img/s", "jaxmia_rate", ".3g"),
    benchmarks.Column("official s/iter", "torch_s", ".3f", torch=True),
    benchmarks.Column("official img/s", "torch_rate", ".3g", torch=True),
    *benchmarks.RATIO_COLUMNS,
    benchmarks.Column("other cores", "other_cores", ".2f"),
]
SEARCH_COLUMNS = [
    benchmarks.Column("row", "name", str),
    benchmarks.Column("B", "B", "d"),
    benchmarks.Column("unit", "unit", str),
    benchmarks.Column("jaxmia s/iter", "jaxmia_s", ".3f"),
    benchmarks.Column("jaxmia rate", "jaxmia_rate", ".3g"),
    benchmarks.Column("official s/iter", "torch_s", ".3f", torch=True),
    benchmarks.Column("official rate", "torch_rate", ".3g", torch=True),
    *benchmarks.RATIO_COLUMNS,
    benchmarks.Column("other cores", "other_cores", ".2f"),
]


def gan_config(kind: str, batch: int) -> ConfigDict:
  """The fields of a GAN config the compiled step depends on, at the official 64x64 settings."""
  config = ConfigDict(dict(image_size=IMAGE_SIZE, generator=dict(latent_dim=LATENT, dim=64), discriminator=dict(dim=64),
                           batch_size=batch, optimizer=dict(lr=LR, betas=(0.5, 0.999), eps=1e-8), n_critic=N_CRITIC,
                           compute_dtype="float32"))
  if kind == "gmi_gan":
    config.gp_weight = 10.0
  else:
    config.discriminator.minibatch_kernels, config.discriminator.minibatch_kernel_dim = 64, 50
    config.entropy_weight, config.target_resize = 1e-4, IMAGE_SIZE
  return config


def target_network():
  """The 64x64 VGG16-BN target (low-resolution head), random weights."""
  model = vgg.vgg16_bn(NUM_CLASSES)
  variables = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))
  return model, variables


def prepare_gan(case):
  kind, batch = case["kind"], case["B"]
  config = gan_config(kind, batch)
  mesh = parallel.make_mesh()
  images = [jax.device_put(np.random.default_rng(i).integers(0, 256, (batch, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
                           parallel.data_sharding(mesh)) for i in range(3)]
  if kind == "gmi_gan":
    step = gan_gmi.compiled_train_step(gan_gmi.step_config(config), mesh)
    call = lambda state, key: step(state, images[0], key)
    state = gan_gmi.create_state(config, jax.random.key(0))
  else:
    target, target_variables = target_network()
    step = gan_kedmi.compiled_train_step(gan_kedmi.step_config(config), NUM_CLASSES, target, mesh)
    target_variables = parallel.replicate(target_variables, mesh)
    call = lambda state, key: step(state, *images, target_variables, key)
    state = gan_kedmi.create_state(config, NUM_CLASSES, jax.random.key(0))
  holder = dict(state=state)
  key = jax.random.key(1)

  def run():
    for _ in range(N_CRITIC):  # the state is donated: keep only the newest
      holder["state"], metrics = call(holder["state"], key)
    jax.block_until_ready((holder["state"], metrics))

  run()  # compiles and warms up
  return run, N_CRITIC


def attack_view(case):
  """(the target's view of the 64x64 images, the compiler options of the row's jitted core) of an attack row: the
  attack's `ViewSettings` and `xla_cpu.compiler_options` as its config compiles it."""
  view = ViewSettings(clamp=True, center_crop=IMAGE_SIZE, resize=IMAGE_SIZE, dtype="float32",
                      xla_cpu_options=case["xla_cpu_options"])
  return view, xla_cpu.compiler_options(view.xla_cpu_options)


def prepare_attack(case):
  batch, steps = case["B"], case["steps"]
  generator = dcgan.Generator(latent_dim=LATENT, dim=64, image_size=IMAGE_SIZE, channels=3)
  g_vars = jax.jit(generator.init)(jax.random.key(0), jnp.zeros((1, LATENT)))
  target, t_vars = target_network()
  view, options = attack_view(case)
  targets = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
  if case["kind"] == "gmi_attack":
    discriminator = dcgan.Discriminator(dim=64, image_size=IMAGE_SIZE)
    d_vars = jax.jit(discriminator.init)(jax.random.key(1), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))
    settings = gmi.GmiSettings(iterations=2**30, learning_rate=GMI_ATTACK["lr"], momentum=GMI_ATTACK["momentum"],
                               identity_weight=GMI_ATTACK["identity_weight"], clip=GMI_ATTACK["clip"])
    losses = gmi.network_losses(generator, discriminator, target, view, settings)
    variables = (g_vars, d_vars, t_vars)
    optimize = jax.jit(lambda state, targets, variables: gmi.optimize(
        state, targets, lambda z, t: losses(z, t, variables), settings, steps), compiler_options=options)
    state = gmi.init_state(gmi.initial_latents(jax.random.split(jax.random.key(2), batch), LATENT))
    advance = lambda state: optimize(state, targets, variables)
  else:
    discriminator = MinibatchDiscriminator(num_classes=NUM_CLASSES)
    d_vars = jax.jit(discriminator.init)(jax.random.key(1), jnp.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3)))
    settings = kedmi.KedmiSettings(iterations=2**30, learning_rate=KEDMI_ATTACK["lr"],
                                   identity_weight=KEDMI_ATTACK["identity_weight"])
    fns = kedmi.score_fns(generator, discriminator, target, view)
    keys = kedmi.class_keys(jax.random.key(2), np.arange(batch))
    variables = (g_vars, d_vars, t_vars)
    optimize = jax.jit(lambda state, targets, keys, variables: kedmi.optimize(
        state, targets, keys, variables, fns, settings, steps)[0], compiler_options=options)
    state = kedmi.init_state(batch, LATENT, settings)
    advance = lambda state: optimize(state, targets, keys, variables)
  holder = dict(state=state)

  def run():
    holder["state"] = jax.block_until_ready(advance(holder["state"]))

  run()  # compiles and warms up
  return run, steps


def dcgan_generator():
  """GMI's 64x64 DCGAN generator (z 100, width 64), random weights."""
  generator = dcgan.Generator(latent_dim=LATENT, dim=64, image_size=IMAGE_SIZE, channels=3)
  return generator, jax.jit(generator.init)(jax.random.key(0), jnp.zeros((1, LATENT)))


def prepare_rlb(case):
  """B RLB-MI agents (`rlb.run_episodes`, jitted as `rlb.attack_classes` jits it), each replay memory holding
  `RLB_STORED` random transitions; a round is `steps` episodes (the episode counter restarts each round, so the
  history arrays stay `RLB_HISTORY` long)."""
  batch, steps = case["B"], case["steps"]
  generator, g_vars = dcgan_generator()
  target, t_vars = target_network()
  view, options = attack_view(case)
  probs_fn = rlb.black_box_probabilities(rlb.latent_renderer(generator), target, view)
  sac = rlb.SacSettings(hidden_size=RLB["hidden_size"], batch_size=RLB["replay_batch"])
  settings = rlb.RlbSettings(sac=sac, max_episodes=RLB_HISTORY, max_step=RLB["max_step"], alpha=RLB["alpha"],
                             reward_weights=RLB["reward_weights"], margin_floor=RLB["margin_floor"])
  state = jax.jit(lambda key: rlb.init_batch_state(key, batch, LATENT, settings))(jax.random.key(1))
  rng = np.random.default_rng(0)
  filled = {name: jnp.asarray(rng.standard_normal(x.shape, np.float32))
            for name, x in state.replay._asdict().items() if name != "dones"}
  state = state._replace(replay=state.replay._replace(**filled, dones=jnp.ones_like(state.replay.dones)),
                         transitions=jnp.int32(RLB_STORED))
  targets = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
  keys = rlb.class_keys(jax.random.key(2), np.arange(batch))
  variables = (g_vars, t_vars)
  episodes = jax.jit(lambda state, targets, keys, variables, count: rlb.run_episodes(
      state, targets, keys, lambda z: probs_fn(variables, z), settings, count), compiler_options=options)
  holder = dict(state=state)

  def run():
    state = holder["state"]._replace(episode=jnp.int32(0))
    holder["state"] = jax.block_until_ready(episodes(state, targets, keys, variables, jnp.int32(steps)))

  run()  # compiles and warms up
  return run, steps


def prepare_brep(case):
  """B BREP-MI latents (`brep.search` for `steps` iterations, labels by `brep.image_labels`), each round from
  the same starting points: z ~ N(0, I) clamped as the official draws, each labelled as its class."""
  batch, steps = case["B"], case["steps"]
  generator, g_vars = dcgan_generator()
  target, t_vars = target_network()
  view, options = attack_view(case)
  settings = brep.BrepSettings(**BREP, sphere_points_per_call=case["points_per_call"])
  labels = lambda gv, tv: lambda w: brep.image_labels(w, gv, tv, generator=generator, target_model=target, view=view)
  starts = jnp.clip(jax.random.normal(jax.random.key(2), (batch, 1, LATENT)), *BREP["point_clamp"])
  targets = jax.jit(lambda w, gv, tv: labels(gv, tv)(w))(starts, g_vars, t_vars)
  keys = brep.class_keys(jax.random.key(3), np.arange(batch), 1)
  state = jax.jit(lambda w: brep.init_state(w, jnp.ones(batch, bool), settings))(starts)
  search = jax.jit(lambda state, targets, keys, gv, tv: brep.search(
      state, targets, keys, labels(gv, tv), settings, max_iterations=steps), compiler_options=options)

  def run():
    jax.block_until_ready(search(state, targets, keys, g_vars, t_vars))

  run()  # compiles and warms up
  return run, steps


def prepare(case: dict):
  """(a run of one round, iterations it covers) of a case, compiled and warmed up."""
  kind = case["kind"]
  if kind == "rlb_episode":
    return prepare_rlb(case)
  if kind == "brep_iteration":
    return prepare_brep(case)
  return (prepare_gan if kind.endswith("_gan") else prepare_attack)(case)


handle = benchmarks.case_handler(prepare)  # a worker request: `prepare` a case or time one `round` of it


def torch_case(kind: str, batch: int, steps: int) -> dict:
  """The PyTorch worker's case of a row (scripts/bench_torch.py)."""
  common = dict(kind=kind, B=batch, latent_dim=LATENT, num_classes=NUM_CLASSES)
  if kind == "rlb_episode":
    return dict(common, steps=steps, stored=RLB_STORED, **RLB)
  if kind == "brep_iteration":
    return dict(common, steps=steps, **BREP)
  if kind.endswith("_gan"):
    extra = dict(gp_weight=10.0) if kind == "gmi_gan" else dict(entropy_weight=1e-4)
    return dict(common, image_size=IMAGE_SIZE, n_critic=N_CRITIC, lr=LR, **extra)
  return dict(common, steps=steps, **(GMI_ATTACK if kind == "gmi_attack" else KEDMI_ATTACK))


def row_compilation(kind: str, choice: str) -> str | None:
  """An attack row's `xla_cpu_options` ('step' or 'default'): `choice`, or for 'config' its attack config's; None
  for the GAN rows (GAN trainings compile with XLA's defaults)."""
  if kind.endswith("_gan"):
    return None
  if choice != "config":
    return choice
  attack = kind.split("_")[0]
  return load_file(benchmarks.ROOT / "configs" / f"attack_{attack}_numbers.py").get_config().attack.xla_cpu_options


def apply_quick():
  """--quick's defaults for the flags not given explicitly."""
  for name, value in dict(batch=8, rounds=2, attack_steps=2, matmul_size=1024, max_wait=2.0).items():
    if not FLAGS[name].present:
      FLAGS[name].value = value


def main(argv):
  del argv
  if FLAGS.serve:
    benchmarks.serve(handle)
    return
  if FLAGS.quick:
    apply_quick()
  unknown = sorted(set(FLAGS.rows) - set(ROWS))
  if unknown:
    raise app.UsageError(f"error: unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
  if FLAGS.batch < 2:
    raise app.UsageError("error: --batch must be at least 2 (KED-MI's minibatch discrimination)")
  rows = [r for r in ROWS if r in FLAGS.rows]
  per_row = benchmarks.references_per_row(FLAGS.reference, {r: REPOS[r] for r in rows})
  found = [ref for ref, _ in per_row.values() if ref]  # the header names the environment any row found
  reference, why = (found[0], "") if found else per_row[rows[0]]
  report = benchmarks.Report("bench_lowres", reference=reference, why=why, matmul_size=FLAGS.matmul_size,
                             json_path=FLAGS.json, settings=benchmarks.settings(
                                 FLAGS, ["rows", "batch", "attack_steps", "brep_points_per_call", "xla_cpu_options",
                                         "quick", "rounds", "max_wait", "threshold"]))
  section, missing = None, []
  for kind in rows:
    search = kind in UNITS
    if section != search:
      report.section("RLB-MI and BREP-MI (rate in the row's unit; an iteration is an episode of all B agents or an "
                     "iteration of all B latents)" if search else None, SEARCH_COLUMNS if search else COLUMNS)
      section = search
    cases = {"jaxmia": dict(kind=kind, B=FLAGS.batch, steps=FLAGS.attack_steps,
                            xla_cpu_options=row_compilation(kind, FLAGS.xla_cpu_options),
                            **({"points_per_call": FLAGS.brep_points_per_call} if kind == "brep_iteration" else {})),
             "torch": torch_case(kind, FLAGS.batch, FLAGS.attack_steps)}
    per_iteration = FLAGS.batch * (BREP["sphere_points"] + 1 if kind == "brep_iteration" else 1)
    fields = dict(name=NAMES[kind], B=FLAGS.batch, kind=kind, **({"unit": UNITS[kind]} if search else {}))
    row_reference, row_why = per_row[kind]
    if reference and not row_reference:
      fields["no_reference_reason"] = row_why
      missing.append(f"{NAMES[kind]}: {benchmarks.no_reference_line(row_why)}")
    try:
      with benchmarks.sides(__file__, row_reference) as workers:
        summaries = benchmarks.compare(workers, {k: cases[k] for k in workers}, FLAGS.rounds,
                                       max_wait=FLAGS.max_wait, threshold=FLAGS.threshold)
      report.add(benchmarks.side_by_side_row(summaries, per_iteration, **fields))
    except benchmarks.WorkerError as e:
      report.add(dict(name=NAMES[kind], error=str(e)))
  for line in missing:
    report.print(line)
  report.finish()


if __name__ == "__main__":
  app.run(main)
