"""Training throughput of `jaxmia.train`'s jitted step, beside PPA's PyTorch numbers on the same CPU.

    python scripts/bench_train.py                                  # resnet18/152 x B 16/32 x float32/bfloat16
    python scripts/bench_train.py --archs resnet18 --batches 16 --dtypes float32 --steps 3

One step is what `python -m jaxmia.train` runs per batch: on-device augmentation of uint8 224x224 images
(random resized crop, colour jitter, flip), forward in train mode, label-smoothing cross-entropy (alpha 0.1),
backward and the Adam update, with the state donated. PPA's step (`../shared/bench/baseline.md`, section 4)
is forward, `CrossEntropyLoss(label_smoothing=0.1)`, backward and Adam on ready-made tensors (no
augmentation), so the comparison slightly favours PyTorch. Compilation is excluded (warm-up steps); each
number is the median of `--steps` timed steps, each row measured in a fresh process (rows measured one after
another in one process came out up to 30% slower, though the host's own speed varied too: hence the matmul
rate printed before and after the rows). `JAXMIA_XLA_CPU_FORMULATIONS=0` measures the plain lax
formulations (`jaxmia.models.xla_cpu`).
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import classifier, parallel, train
from jaxmia.config import load_file

faces = load_file(pathlib.Path(__file__).resolve().parents[1] / "configs" / "faces.py")

# PPA `Classifier.fit` step on this machine (torch 2.13 CPU, 2 threads), images/s: baseline.md section 4.
PPA_IMAGES_PER_SECOND = {("resnet18", 16): 14.8, ("resnet18", 32): 12.1,
                         ("resnet152", 16): 1.93, ("resnet152", 32): 1.86}
NUM_CLASSES = 530


def bench(arch: str, batch_size: int, dtype: str, steps: int, warmup: int) -> float:
  """Median seconds per training step."""
  config = faces.get_config()
  config.model.arch, config.model.dtype, config.init_weights = arch, dtype, ""
  config.batch_size, config.label_smoothing = batch_size, 0.1
  mesh = parallel.make_mesh()
  module = train.create_model(config, NUM_CLASSES)
  state = train.create_train_state(config, module, jax.random.key(0), steps_per_epoch=100, mesh=mesh)
  step = classifier.jit_train_step(train.make_train_step(config, NUM_CLASSES), mesh)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({
      "image": rng.integers(0, 256, (batch_size, 224, 224, 3), dtype=np.uint8),
      "label": rng.integers(0, NUM_CLASSES, batch_size, dtype=np.int32)}, mesh)
  replicated = jax.jit(lambda: (jax.random.key(1), jnp.float32(0.1)), out_shardings=parallel.replicated(mesh))
  key, alpha = replicated()
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, metrics = step(state, batch, key, alpha)
    jax.block_until_ready(metrics)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_gflops() -> float:
  """XLA's float32 GFLOP/s on a 4096x4096 matrix product now: how busy the host is (278 when quiet)."""
  a = jnp.ones((4096, 4096), jnp.float32)
  product = jax.jit(lambda a: a @ a)
  jax.block_until_ready(product(a))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(product(a))
    times.append(time.perf_counter() - start)
  return 2 * 4096**3 / statistics.median(times) / 1e9


def bench_in_subprocess(arch: str, batch_size: int, dtype: str, steps: int, warmup: int) -> float:
  """`bench(...)` in a fresh Python process (this script with `--row`)."""
  command = [sys.executable, __file__, "--row", json.dumps([arch, batch_size, dtype]), "--steps", str(steps),
             "--warmup", str(warmup)]
  output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  return json.loads(output.strip().splitlines()[-1])["seconds"]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--archs", default="resnet18,resnet152")
  parser.add_argument("--batches", default="16,32")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median reported)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one compiles)")
  parser.add_argument("--row", help=argparse.SUPPRESS)  # '[arch, batch, dtype]': measure one row, print JSON
  args = parser.parse_args()
  if args.row:
    print(json.dumps({"seconds": bench(*json.loads(args.row), args.steps, args.warmup)}))
    return
  print(f"jax {jax.__version__}, devices: {jax.devices()}; 4096^2 matmul {matmul_gflops():.0f} GFLOP/s")
  print("| target | batch | dtype | jaxmia s/step | jaxmia images/s | PPA PyTorch images/s | speed-up |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for arch in args.archs.split(","):
    for batch_size in (int(b) for b in args.batches.split(",")):
      for dtype in args.dtypes.split(","):
        seconds = bench_in_subprocess(arch, batch_size, dtype, args.steps, args.warmup)
        ours = batch_size / seconds
        ppa = PPA_IMAGES_PER_SECOND.get((arch, batch_size))
        ratio = f"{ours / ppa:.2f}x" if ppa else "n/a"
        print(f"| {arch} | {batch_size} | {dtype} | {seconds:.2f} | {ours:.2f} | {ppa or 'n/a'} | {ratio} |",
              flush=True)
  print(f"4096^2 matmul after the rows: {matmul_gflops():.0f} GFLOP/s")


if __name__ == "__main__":
  main()
