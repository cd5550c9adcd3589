"""Plug & Play Attack throughput and peak memory of jaxmia beside PPA's PyTorch, measured in the same run.

    python scripts/bench_attack.py --quick          # FFHQ-256 + ResNet-18, float32, B = 1, 4, 8 (minutes)
    python scripts/bench_attack.py                  # FFHQ-256 and FFHQ-1024, ResNet-18 and -152, float32 and
                                                    # bfloat16, B = 1, 4, 8, 32 and the largest that fits (hours)

Stage 2 is `attack.optimize_latents` (the whole jitted on-device loop: synthesis, centre crop + resize, random
resized crop, target, Poincaré loss, gradient w.r.t. w only, Adam), timed over `--steps` steps per round, against
PPA's `Optimization.optimize` (which also computes the target's weight gradients, as PPA does). jaxmia's loop ends
with a forward pass that scores the returned latents (its telemetry: once per batch in an attack, 1/(2 num_steps) of
its work, but half a step in a benchmark of 2 steps), which PPA's loop does not have, so the time compared is the
steps': the loop of `--steps` steps minus the loop of none, both timed in each round. Its "GFLOP/s" is XLA's
floating-point operation count of a step (`cost_analysis` of the executable that runs: the one-step loop's count
minus the empty loop's) over jaxmia's median step time, and "of matmul" that rate over XLA's 4096² matmul rate
measured before the rows. Stage 1 is `attack.select_initial_latents` (mapping, synthesis, crop + resize, target on
image and mirror image) over a search space of 3 batches, against PPA's `find_initial_w`. Stage 3 is
`attack.robustness_scores` (one synthesis per latent, then `--final_iterations` random resized crops + flips through
the target) against PPA's `scores_by_transform`; its images/s counts augmented target inputs, synthesis included on
jaxmia's side only (PPA's stage 3 gets ready images), so equal speed reads a little below 1x.

Every configuration starts a fresh jaxmia process (its own XLA caches and peak RSS from `getrusage`) and a
fresh PyTorch process (`scripts/bench_torch.py` in the reference environment of `scripts/setup_reference.sh`,
importing PPA's and NVlabs' modules), warms both up, then alternates them for `--rounds` rounds and reports
each side's median (`jaxmia.benchmarks`); PyTorch always runs float32. Without the reference environment only
jaxmia is timed. Weights are random (speed does not depend on them); jaxmia's are initialised once in a
separate process and read from disk, as a real attack reads converted weights, so the initialisation's
compilation does not count in the peak RSS. "other cores" is the CPU time other processes used while a side
was timed (from /proc/stat), in cores: a value well above 0 means the machine was shared. The largest batch
(jaxmia only) is predicted from the measured peak RSS (linear in B) to stay under `--memory_gb`, then measured.
"""
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from jaxmia import benchmarks

flags.DEFINE_bool("quick", False, "FFHQ-256 + ResNet-18, float32, B = 1, 4, 8 only, 2 steps.")
flags.DEFINE_list("generators", ["ffhq256", "ffhq1024"], "Generator shapes (NVlabs' FFHQ configs).")
flags.DEFINE_list("targets", ["resnet18", "resnet152"], "Target architectures.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "jaxmia compute dtypes (PyTorch runs float32).")
flags.DEFINE_list("batches", ["1", "4", "8", "32"], "Stage-2 batch sizes.")
flags.DEFINE_list("initial_batches", ["8", "25"], "Stage-1 batch sizes (FFHQ-256 only).")
flags.DEFINE_integer("final_batch", 25, "Stage-3 batch size.")
flags.DEFINE_integer("steps", 3, "Stage-2 steps per side and round.")
flags.DEFINE_integer("final_iterations", 100, "Stage-3 augmentations per latent.")
flags.DEFINE_float("memory_gb", 16.0, "RSS budget of the extra 'largest batch' configuration (0: skip it).")
flags.DEFINE_list("stages", ["optimize", "initial", "final"], "Attack stages to time.")
flags.DEFINE_string("init", None, "Internal: write network NAME's random weights.")
benchmarks.define_flags()
FLAGS = flags.FLAGS

GENERATORS = {  # NVlabs configs of the FFHQ pickles: 'paper256' and 'stylegan2' (ffhq.pkl, PPA's prior)
    "ffhq256": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                    mapping_kwargs=dict(num_layers=8),
                    synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256)),
    "ffhq1024": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                     mapping_kwargs=dict(num_layers=8),
                     synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256)),
}
NUM_CLASSES = 530

COLUMNS = [
    benchmarks.Column("stage", "stage", str),
    benchmarks.Column("generator", "gen", str),
    benchmarks.Column("target", "target", str),
    benchmarks.Column("dtype", "dtype", str),
    benchmarks.Column("B", "B", "d"),
    benchmarks.Column("jaxmia s/step", "s_per_step", ".3g"),
    benchmarks.Column("jaxmia img/s", "jaxmia_rate", ".3g"),
    benchmarks.Column("jaxmia GFLOP/s", "gflops", ".3g"),
    benchmarks.Column("of matmul", "matmul_share", benchmarks.percent_cell),
    benchmarks.Column("PPA img/s", "torch_rate", ".3g", torch=True),
    *benchmarks.RATIO_COLUMNS,
    benchmarks.Column("jaxmia peak RSS GiB", "jaxmia_rss_gb", ".2f"),
    benchmarks.Column("PPA peak RSS GiB", "torch_rss_gb", ".2f", torch=True),
    benchmarks.Column("jaxmia setup s", "setup_s", ".0f"),
    benchmarks.Column("other cores", "other_cores", ".2f"),
]


# ------------------------------------------------------------------------------------------------------------
# Worker: the jaxmia side of one configuration in this process.

def _attack_config(num_steps, dtype, crop):
  import ml_collections
  return ml_collections.ConfigDict(dict(
      num_steps=num_steps, learning_rate=0.005, b1=0.1, b2=0.1, eps=1e-8, lr_schedule="constant",
      lr_milestones=(), lr_gamma=0.1, identity_loss="poincare", discriminator_loss_weight=0.0, clamp=False,
      center_crop=crop, resize=224, crop_scale=(0.9, 1.0), crop_ratio=(1.0, 1.0), remat="none", dtype=dtype))


def _init_fns():
  """{name: (module, init thunk)} for the networks a configuration needs; the thunks run only in `--init`."""
  import jax
  import jax.numpy as jnp

  from jaxmia import models
  from jaxmia.models.stylegan2 import Generator

  generators = {g: Generator(**kwargs) for g, kwargs in GENERATORS.items()}
  targets = {t: models.create_classifier(t, NUM_CLASSES) for t in ("resnet18", "resnet152")}
  fns = {g: (m, lambda m=m: m.init(jax.random.key(0), jnp.zeros((1, 512)), None)) for g, m in generators.items()}
  fns.update({t: (m, lambda m=m: m.init(jax.random.key(1), jnp.zeros((1, 224, 224, 3))))
              for t, m in targets.items()})
  return fns


def _weights_file(name: str) -> str:
  return os.path.join(tempfile.gettempdir(), f"jaxmia_bench_attack_{name}.npz")


def write_random_weights(name: str):
  """Initialises network `name` and saves its variables' leaves (run in its own process: see `load_weights`)."""
  import jax
  import numpy as np

  _, init = _init_fns()[name]
  leaves = jax.tree_util.tree_leaves(jax.jit(init)())
  np.savez(_weights_file(name), *[np.asarray(leaf) for leaf in leaves])


def load_weights(name: str):
  """(module, variables) of network `name` with seeded random weights, read from disk as a real attack reads
  converted weights; the initialisation ran in another process, so its compilation is not in this peak RSS."""
  import jax
  import numpy as np

  module, init = _init_fns()[name]
  shapes, treedef = jax.tree_util.tree_flatten(jax.eval_shape(init))

  def read():
    if not os.path.exists(_weights_file(name)):
      return []
    with np.load(_weights_file(name)) as stored:
      return [jax.device_put(stored[f"arr_{i}"]) for i in range(len(stored.files))]

  leaves = read()
  if [leaf.shape for leaf in leaves] != [s.shape for s in shapes]:  # absent, or from another network version
    subprocess.run([sys.executable, __file__, f"--init={name}"], check=True)
    leaves = read()
  return module, jax.tree_util.tree_unflatten(treedef, leaves)


def prepare(case: dict):
  """(function timed once per round, images or steps it covers) of a configuration, compiled and warmed up."""
  import jax
  import ml_collections
  import numpy as np

  from jaxmia import attack
  from jaxmia.attack import final_selection, optimize

  generator, generator_variables = load_weights(case["gen"])
  target, target_variables = load_weights(case["target"])
  batch, dtype = case["B"], case["dtype"]
  targets = np.arange(batch) % NUM_CLASSES
  keys = attack.latent_keys(jax.random.key(2), np.arange(batch))
  w = np.asarray(generator.apply(generator_variables, jax.random.normal(jax.random.key(3), (batch, 512)), None,
                                 truncation_psi=0.5, truncation_cutoff=8, method="mapping")[:, :1])
  models_kw = dict(generator=generator, generator_variables=generator_variables, target_model=target,
                   target_variables=target_variables)
  info = {}
  if case["stage"] == "optimize":
    loops = {n: _attack_config(n, dtype, 0) for n in {0, 1, case["steps"]}}  # steps per compiled loop
    optimize_seconds = lambda n: benchmarks.seconds_of(
        lambda: attack.optimize_latents(w, targets, keys, config=loops[n], **models_kw).block_until_ready())
    # The compared work is the steps: the loop of `steps` steps minus the loop of none, whose closing forward pass
    # scores the returned latents (once per batch in an attack; PPA's loop has no such pass).
    run = lambda: optimize_seconds(case["steps"]) - optimize_seconds(0)
    units = case["steps"]
    # XLA's count takes the loop's body once whatever its trip count: a step is the one-step loop minus none.
    counts = [benchmarks.lowered_flops(optimize.lower_optimization(w, targets, keys, config=loops[n], **models_kw))
              for n in (0, 1)]
    info["flops_per_unit"] = counts[1] - counts[0]
  elif case["stage"] == "initial":
    config = ml_collections.ConfigDict(dict(search_space_size=3 * batch, batch_size=batch, truncation_psi=0.5,
                                            truncation_cutoff=8, clamp=True, center_crop=0, resize=224,
                                            horizontal_flip=True, dtype=dtype))
    run = lambda: jax.block_until_ready(
        attack.select_initial_latents(jax.random.key(4), targets[:1], config=config, **models_kw))
    units = 3 * batch
  else:
    config = ml_collections.ConfigDict(dict(
        samples_per_target=1, iterations=case["iterations"], crop_scale=(0.5, 0.9), crop_ratio=(0.8, 1.2),
        horizontal_flip=True, clamp=False, center_crop=0, resize=224, batch_size=batch, dtype=dtype))
    run = lambda: jax.block_until_ready(final_selection.select_final_latents(w, targets, keys, config=config,
                                                                             **models_kw))
    units = batch * case["iterations"]
  run()
  return run, units, info


handle = benchmarks.case_handler(prepare)  # a worker request: `prepare` a configuration or time one `round`


# ------------------------------------------------------------------------------------------------------------
# Driver: fresh worker processes per configuration, interleaved rounds, the table.

def torch_case(case: dict) -> dict:
  """The same configuration on PPA's side (float32)."""
  gen = GENERATORS[case["gen"]]
  common = dict(target=case["target"], num_classes=NUM_CLASSES, B=case["B"])
  if case["stage"] == "final":
    return dict(common, kind="attack_final", iterations=case["iterations"])
  crop = round(gen["img_resolution"] * 800 / 1024)  # PPA's FFHQ configs: CenterCrop(800) of 1024, scaled
  if case["stage"] == "initial":
    return dict(common, kind="attack_initial", generator=gen, crop=crop)
  return dict(common, kind="attack_optimize", generator=gen, crop=crop, steps=case["steps"])


def measure(case: dict, reference, matmul_gflops=None) -> dict:
  """One table row: both sides of `case` (jaxmia alone without `reference`) in interleaved rounds; for stage 2
  also jaxmia's rate in XLA-counted GFLOP/s and its share of the machine's matmul rate `matmul_gflops`."""
  try:
    with benchmarks.sides(__file__, reference) as workers:
      summaries = benchmarks.compare(workers, dict(jaxmia=case, torch=torch_case(case)), FLAGS.rounds,
                                     max_wait=FLAGS.max_wait, threshold=FLAGS.threshold)
  except benchmarks.WorkerError as e:
    return dict(case, error=str(e))
  per_unit = case["B"] if case["stage"] == "optimize" else 1.0  # images per step, or per image
  row = benchmarks.side_by_side_row(summaries, per_unit, **case)
  row["setup_s"] = summaries["jaxmia"]["setup_s"]
  if case["stage"] == "optimize":
    row["s_per_step"] = row["jaxmia_s"]
  row.update(benchmarks.flop_rate(summaries["jaxmia"], matmul_gflops))
  return row


def main(argv):
  del argv
  if FLAGS.init:
    write_random_weights(FLAGS.init)
    return
  if FLAGS.serve:
    benchmarks.serve(handle)
    return
  if FLAGS.quick:
    FLAGS.generators, FLAGS.targets, FLAGS.dtypes, FLAGS.batches = ["ffhq256"], ["resnet18"], ["float32"], \
        ["1", "4", "8"]
    FLAGS.steps, FLAGS.memory_gb = 2, 0.0
  reference, why = benchmarks.find_reference(FLAGS.reference, needs=("ppa", "sg2"))
  report = benchmarks.Report("bench_attack", COLUMNS, reference=reference, why=why,
                             matmul_size=FLAGS.matmul_size, json_path=FLAGS.json, settings=benchmarks.settings(
                                 FLAGS, ["quick", "generators", "targets", "dtypes", "batches", "initial_batches",
                                         "final_batch", "steps", "final_iterations", "memory_gb", "stages",
                                         "rounds", "max_wait", "threshold"]))
  matmul = report.record["matmul"]["gflops_before"]
  record = lambda case, reference=reference: report.add(measure(case, reference, matmul))
  for gen in FLAGS.generators:
    for target in FLAGS.targets:
      for dtype in FLAGS.dtypes:
        base = dict(gen=gen, target=target, dtype=dtype)
        if "optimize" in FLAGS.stages:
          rows = [record(dict(base, stage="optimize", B=int(b), steps=FLAGS.steps)) for b in FLAGS.batches]
          fits = [(r["B"], r["jaxmia_rss_gb"]) for r in rows if "error" not in r]
          if FLAGS.memory_gb > 0 and len(fits) >= 2:
            (b0, m0), (b1, m1) = fits[-2], fits[-1]
            per_latent = max((m1 - m0) / (b1 - b0), 1e-3)
            largest = int(b1 + (FLAGS.memory_gb - m1) / per_latent) // 4 * 4
            if largest > b1:  # beyond what PPA fits in the same memory: jaxmia alone
              record(dict(base, stage="optimize", B=largest, steps=1), None)
        if "initial" in FLAGS.stages and gen == "ffhq256":
          for b in FLAGS.initial_batches:
            record(dict(base, stage="initial", B=int(b)))
        if "final" in FLAGS.stages and gen == FLAGS.generators[0]:
          record(dict(base, stage="final", B=FLAGS.final_batch, iterations=FLAGS.final_iterations))
  report.finish()


if __name__ == "__main__":
  app.run(main)
