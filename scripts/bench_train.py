"""Training throughput of `jaxmia.train`'s jitted step beside PPA's PyTorch step, measured in the same run.

    python scripts/bench_train.py                                  # resnet18/152 x B 16/32 x float32/bfloat16
    python scripts/bench_train.py --archs=resnet18 --batches=16 --dtypes=float32 --steps=3

One step is what `python -m jaxmia.train` runs per batch: on-device augmentation of uint8 224x224 images
(random resized crop, colour jitter, flip), forward in train mode, label-smoothing cross-entropy (alpha 0.1),
backward and the Adam update, with the state donated. PPA's step (`Classifier.fit`: forward,
`CrossEntropyLoss(label_smoothing=0.1)`, backward, Adam; always float32) runs on ready-made tensors (no
augmentation), so the comparison slightly favours PyTorch. Each row starts a fresh jaxmia process and a fresh
PyTorch one (`scripts/bench_torch.py` in the reference environment, `scripts/setup_reference.sh`), warms both
up (compilation excluded), then times `--steps` steps on each in `--rounds` interleaved rounds and reports
each side's median seconds per step (`jaxmia.benchmarks`). Without the reference environment it times
jaxmia alone. `JAXMIA_XLA_CPU_FORMULATIONS=0` measures the plain lax formulations (`jaxmia.models.xla_cpu`).
"""
import pathlib

from absl import app, flags

from jaxmia import benchmarks

flags.DEFINE_list("archs", ["resnet18", "resnet152"], "Target architectures.")
flags.DEFINE_list("batches", ["16", "32"], "Batch sizes.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "jaxmia compute dtypes (PyTorch runs float32).")
flags.DEFINE_integer("steps", 3, "Timed steps per side and round.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first one compiles).")
benchmarks.define_flags()
FLAGS = flags.FLAGS
NUM_CLASSES = 530
LABEL_SMOOTHING = 0.1

COLUMNS = [
    benchmarks.Column("target", "arch", str),
    benchmarks.Column("B", "B", "d"),
    benchmarks.Column("dtype", "dtype", str),
    benchmarks.Column("jaxmia s/step", "jaxmia_s", ".3g"),
    benchmarks.Column("jaxmia img/s", "jaxmia_rate", ".3g"),
    benchmarks.Column("PPA img/s (float32)", "torch_rate", ".3g", torch=True),
    *benchmarks.RATIO_COLUMNS,
    benchmarks.Column("other cores", "other_cores", ".2f"),
]


class TrainStep:
  """The jaxmia side of a case: `jaxmia.train`'s step on a fixed random batch."""

  def __init__(self, case):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxmia import classifier, parallel, train
    from jaxmia.config import load_file

    config = load_file(pathlib.Path(__file__).resolve().parents[1] / "configs" / "faces.py").get_config()
    config.model.arch, config.model.dtype, config.init_weights = case["arch"], case["dtype"], ""
    config.batch_size, config.label_smoothing = case["B"], LABEL_SMOOTHING
    mesh = parallel.make_mesh()
    module = train.create_model(config, NUM_CLASSES)
    self.state = train.create_train_state(config, module, jax.random.key(0), steps_per_epoch=100, mesh=mesh)
    self.step = classifier.jit_train_step(train.make_train_step(config, NUM_CLASSES), mesh)
    rng = np.random.default_rng(0)
    self.batch = parallel.shard_batch({
        "image": rng.integers(0, 256, (case["B"], 224, 224, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, case["B"], dtype=np.int32)}, mesh)
    replicated = jax.jit(lambda: (jax.random.key(1), jnp.float32(LABEL_SMOOTHING)),
                         out_shardings=parallel.replicated(mesh))
    self.key, self.alpha = replicated()
    self.block = jax.block_until_ready
    self.steps = case["steps"]
    self.run(case["warmup"])

  def run(self, steps):
    for _ in range(steps):
      self.state, metrics = self.step(self.state, self.batch, self.key, self.alpha)
      self.block(metrics)


def prepare(case: dict):
  """A case's training step, built and warmed up: (a run of `steps` steps, steps)."""
  step = TrainStep(case)
  return lambda: step.run(step.steps), step.steps


handle = benchmarks.case_handler(prepare)  # a worker request: `prepare` a case or time one `round` of it


def main(argv):
  del argv
  if FLAGS.serve:
    benchmarks.serve(handle)
    return
  reference, why = benchmarks.find_reference(FLAGS.reference)
  report = benchmarks.Report("bench_train", COLUMNS, reference=reference, why=why, matmul_size=FLAGS.matmul_size,
                             json_path=FLAGS.json, settings=benchmarks.settings(
                                 FLAGS, ["archs", "batches", "dtypes", "steps", "warmup", "rounds", "max_wait",
                                         "threshold"]))
  for arch in FLAGS.archs:
    for batch in (int(b) for b in FLAGS.batches):
      for dtype in FLAGS.dtypes:
        fields = dict(arch=arch, B=batch, dtype=dtype)
        cases = dict(jaxmia=dict(fields, steps=FLAGS.steps, warmup=FLAGS.warmup),
                     torch=dict(kind="train", arch=arch, B=batch, num_classes=NUM_CLASSES,
                                label_smoothing=LABEL_SMOOTHING, steps=FLAGS.steps, warmup=FLAGS.warmup))
        try:
          with benchmarks.sides(__file__, reference) as workers:
            summaries = benchmarks.compare(workers, cases, FLAGS.rounds, max_wait=FLAGS.max_wait,
                                           threshold=FLAGS.threshold)
          report.add(benchmarks.side_by_side_row(summaries, batch, **fields))
        except benchmarks.WorkerError as e:
          report.add(dict(fields, error=str(e)))
  report.finish()


if __name__ == "__main__":
  app.run(main)
