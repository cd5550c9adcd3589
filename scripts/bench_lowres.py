"""Speed of jaxmia's GMI and KED-MI (GAN training and attack) beside the official PyTorch code, in the same run.

    python scripts/bench_lowres.py                  # the four rows at batch 64
    python scripts/bench_lowres.py --quick          # batch 8, 2 rounds, 2 attack iterations per round: a smoke run

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
A round times `n_critic` (5) GAN iterations, or `--attack_steps` attack iterations; rates are images per second
(B per iteration). The PyTorch side is `scripts/bench_torch.py` (cases gmi_gan, kedmi_gan, gmi_attack,
kedmi_attack) in the reference environment (`scripts/setup_reference.sh --gmi PATH --kedmi PATH`): it imports
the official networks and losses unmodified and writes the step loops around them itself (the official train and
attack scripts cannot be imported); see its docstring for how closely they follow the official code (the
official steps also compute weight gradients that jaxmia's do not: KED-MI's target in the GAN step, all networks
in the attacks). Each row alternates the two sides for `--rounds` rounds (`jaxmia.benchmarks`); without the
reference environment or its GMI / KED-MI checkouts only jaxmia is timed.
"""
from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict
import numpy as np

from jaxmia import benchmarks, gan_gmi, gan_kedmi, parallel
from jaxmia.attack import gmi, kedmi
from jaxmia.attack.render import ViewSettings
from jaxmia.models import dcgan, vgg
from jaxmia.models.kedmi_discriminator import MinibatchDiscriminator

ROWS = ("gmi_gan", "kedmi_gan", "gmi_attack", "kedmi_attack")
NAMES = {"gmi_gan": "GMI GAN", "kedmi_gan": "KED-MI GAN", "gmi_attack": "GMI attack", "kedmi_attack": "KED-MI attack"}

flags.DEFINE_list("rows", list(ROWS), f"Rows to measure ({', '.join(ROWS)}).")
flags.DEFINE_integer("batch", 64, "Batch: images per GAN iteration, latents (GMI) or classes (KED-MI) per attack.")
flags.DEFINE_integer("attack_steps", 5, "Attack iterations per round.")
flags.DEFINE_bool("quick", False, "Smoke run: batch 8, 2 rounds, 2 attack iterations, 1024^2 matmul, 2 s wait "
                  "(flags given explicitly win).")
benchmarks.define_flags()
FLAGS = flags.FLAGS

IMAGE_SIZE, LATENT, NUM_CLASSES, N_CRITIC, LR = 64, 100, 1000, 5, 2e-4
GMI_ATTACK = dict(lr=0.02, momentum=0.9, identity_weight=100.0, clip=1.0)  # official attack.py
KEDMI_ATTACK = dict(lr=0.02, identity_weight=100.0)                       # official dist_inversion

COLUMNS = [
    benchmarks.Column("row", "name", str),
    benchmarks.Column("B", "B", "d"),
    benchmarks.Column("jaxmia s/iter", "jaxmia_s", ".3f"),
    benchmarks.Column("jaxmia img/s", "jaxmia_rate", ".3g"),
    benchmarks.Column("official s/iter", "torch_s", ".3f", torch=True),
    benchmarks.Column("official img/s", "torch_rate", ".3g", torch=True),
    benchmarks.Column("ratio", "ratio", benchmarks.times_cell, torch=True, ratio=True),
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


def prepare_attack(case):
  batch, steps = case["B"], case["steps"]
  generator = dcgan.Generator(latent_dim=LATENT, dim=64, image_size=IMAGE_SIZE, channels=3)
  g_vars = jax.jit(generator.init)(jax.random.key(0), jnp.zeros((1, LATENT)))
  target, t_vars = target_network()
  view = ViewSettings(clamp=True, center_crop=IMAGE_SIZE, resize=IMAGE_SIZE, dtype="float32")
  targets = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
  if case["kind"] == "gmi_attack":
    discriminator = dcgan.Discriminator(dim=64, image_size=IMAGE_SIZE)
    d_vars = jax.jit(discriminator.init)(jax.random.key(1), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))
    settings = gmi.GmiSettings(iterations=2**30, learning_rate=GMI_ATTACK["lr"], momentum=GMI_ATTACK["momentum"],
                               identity_weight=GMI_ATTACK["identity_weight"], clip=GMI_ATTACK["clip"])
    losses = gmi.network_losses(generator, discriminator, target, view, settings)
    variables = (g_vars, d_vars, t_vars)
    optimize = jax.jit(lambda state, targets, variables: gmi.optimize(
        state, targets, lambda z, t: losses(z, t, variables), settings, steps))
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
        state, targets, keys, variables, fns, settings, steps)[0])
    state = kedmi.init_state(batch, LATENT, settings)
    advance = lambda state: optimize(state, targets, keys, variables)
  holder = dict(state=state)

  def run():
    holder["state"] = jax.block_until_ready(advance(holder["state"]))

  run()  # compiles and warms up
  return run, steps


def prepare(case: dict):
  """(a run of one round, iterations it covers) of a case, compiled and warmed up."""
  return (prepare_gan if case["kind"].endswith("_gan") else prepare_attack)(case)


handle = benchmarks.case_handler(prepare)  # a worker request: `prepare` a case or time one `round` of it


def torch_case(kind: str, batch: int, steps: int) -> dict:
  """The PyTorch worker's case of a row (scripts/bench_torch.py)."""
  common = dict(kind=kind, B=batch, latent_dim=LATENT, num_classes=NUM_CLASSES)
  if kind.endswith("_gan"):
    extra = dict(gp_weight=10.0) if kind == "gmi_gan" else dict(entropy_weight=1e-4)
    return dict(common, image_size=IMAGE_SIZE, n_critic=N_CRITIC, lr=LR, **extra)
  return dict(common, steps=steps, **(GMI_ATTACK if kind == "gmi_attack" else KEDMI_ATTACK))


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
  reference, why = benchmarks.find_reference(FLAGS.reference, needs=("gmi", "kedmi"))
  report = benchmarks.Report("bench_lowres", COLUMNS, reference=reference, why=why, matmul_size=FLAGS.matmul_size,
                             json_path=FLAGS.json, settings=benchmarks.settings(
                                 FLAGS, ["rows", "batch", "attack_steps", "quick", "rounds", "max_wait", "threshold"]))
  for kind in (r for r in ROWS if r in FLAGS.rows):
    cases = {"jaxmia": dict(kind=kind, B=FLAGS.batch, steps=FLAGS.attack_steps),
             "torch": torch_case(kind, FLAGS.batch, FLAGS.attack_steps)}
    try:
      with benchmarks.sides(__file__, reference) as workers:
        summaries = benchmarks.compare(workers, {k: cases[k] for k in workers}, FLAGS.rounds,
                                       max_wait=FLAGS.max_wait, threshold=FLAGS.threshold)
      report.add(benchmarks.side_by_side_row(summaries, FLAGS.batch, name=NAMES[kind], B=FLAGS.batch, kind=kind))
    except benchmarks.WorkerError as e:
      report.add(dict(name=NAMES[kind], error=str(e)))
  report.finish()


if __name__ == "__main__":
  app.run(main)
