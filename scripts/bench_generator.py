"""Speed of the StyleGAN2 synthesis network: images/s forward and forward+backward (gradient w.r.t. ws).

Shapes are those of the public FFHQ-256 (`--cfg=paper256`: channel_base 16384) and FFHQ-1024 (channel_base
32768) generators, with random weights (plain init). The backward pass differentiates w.r.t. ws only, with
the generator frozen, as in a model inversion attack step.

    python scripts/bench_generator.py                        # JAX, beside the PPA baseline numbers
    python scripts/bench_generator.py --torch-python /tmp/torchvenv/bin/python \\
        --sg2-dir /tmp/ref/NVlabs+stylegan2-ada-pytorch     # also time NVlabs' PyTorch generator here
    python scripts/bench_generator.py --compare-modconv --res 256   # style modulation variants (see below)

`--compare-modconv` also times two alternatives to the formulation jaxmia uses (activations scaled by the
styles around one shared-kernel conv; stride-2 transposed convs split into polyphase stride-1 convs):
`grouped`, per-sample modulated kernels run as one grouped conv (NVlabs' fused path), and `dilated`,
transposed convs as one `lhs_dilation` conv. The torch side runs in a subprocess that imports NVlabs'
`training.networks` from `--sg2-dir` at run time.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

from jaxmia.models import stylegan2 as sg2
from jaxmia.models import stylegan2_ops as ops

CONFIGS = {
    256: dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3, mapping_kwargs={"num_layers": 8},
              synthesis_kwargs={"channel_base": 16384, "channel_max": 512, "conv_clamp": 256, "num_fp16_res": 4}),
    1024: dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs={"num_layers": 8},
               synthesis_kwargs={"channel_base": 32768, "channel_max": 512, "conv_clamp": 256, "num_fp16_res": 4}),
}
# PPA / NVlabs PyTorch on this machine (../shared/bench/baseline.md), seconds per image, synthesis only.
BASELINE = {(256, 1, "fwd+bwd"): 0.72, (256, 4, "fwd+bwd"): 1.34}

TORCH_SNIPPET = r"""
import json, sys, time, statistics
import torch
sys.path.insert(0, sys.argv[1])
from training.networks import Generator
cfg, batches, reps = json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
G = Generator(**cfg).eval().requires_grad_(False)
out = []
for b in batches:
  ws = torch.randn([b, G.num_ws, G.w_dim])
  for mode in ("fwd", "fwd+bwd"):
    def step():
      if mode == "fwd":
        with torch.no_grad():
          G.synthesis(ws, noise_mode="const", force_fp32=True)
      else:
        w = ws.clone().requires_grad_(True)
        G.synthesis(w, noise_mode="const", force_fp32=True).square().sum().backward()
    step()
    times, cpu = [], []
    for _ in range(reps):
      t, c = time.perf_counter(), time.process_time()
      step()
      times.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
    out.append({"batch": b, "mode": mode, "seconds": statistics.median(times), "cpu": statistics.median(cpu)})
print(json.dumps(out))
"""


def grouped_modulated_conv2d(x, kernel, styles, taps=None, *, demodulate=True, up=1):
  """NVlabs' fused formulation: per-sample modulated (and demodulated) kernels, vmapped into a grouped conv."""
  styles = styles.astype(jnp.float32)
  kernels = kernel[None] * styles[:, None, None, :, None]  # [B, k, k, I, O]
  if demodulate:
    kernels = kernels * lax.rsqrt(jnp.sum(jnp.square(kernels), axis=(1, 2, 3), keepdims=True) + 1e-8)
  one = lambda xi, ki: ops.conv2d_resample(xi[None], ki.astype(x.dtype), taps, up=up)[0]
  return jax.vmap(one)(x, kernels)


def dilated_conv_transpose2x(x, kernel):
  """Stride-2 transposed conv as one convolution of the zero-dilated input with the flipped kernel."""
  k = kernel.shape[0]
  return lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), [(k - 1, k - 1)] * 2, lhs_dilation=(2, 2),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


VARIANTS = {
    "jaxmia": {},
    "grouped": {"modulated_conv2d": grouped_modulated_conv2d},
    "dilated": {"conv_transpose2x": dilated_conv_transpose2x},
}


def time_jax(res, batches, reps, variant, dtype):
  """[(batch, mode, wall seconds per call, process CPU seconds per call)] for one shape and formulation."""
  originals = {name: getattr(ops, name) for name in VARIANTS[variant]}
  for name, fn in VARIANTS[variant].items():
    setattr(ops, name, fn)  # the modules look these up at trace time
  try:
    generator = sg2.Generator(**CONFIGS[res], dtype=dtype)
    variables = jax.jit(lambda: generator.init(jax.random.key(0), jnp.zeros((1, 512)), None,
                                               noise_mode="const"))()
    forward = jax.jit(lambda v, ws: generator.apply(v, ws, noise_mode="const", method="synthesis"))
    backward = jax.jit(jax.grad(lambda ws, v: jnp.sum(jnp.square(
        generator.apply(v, ws, noise_mode="const", method="synthesis")))))
    rows = []
    for b in batches:
      ws = jax.random.normal(jax.random.key(b), (b, generator.num_ws, generator.w_dim))
      for mode, call in (("fwd", lambda: forward(variables, ws)), ("fwd+bwd", lambda: backward(ws, variables))):
        jax.block_until_ready(call())  # compile and warm up
        times, cpu = [], []
        for _ in range(reps):
          t, c = time.perf_counter(), time.process_time()
          jax.block_until_ready(call())
          times.append(time.perf_counter() - t)
          cpu.append(time.process_time() - c)
        rows.append((b, mode, statistics.median(times), statistics.median(cpu)))
    return rows
  finally:
    for name, fn in originals.items():
      setattr(ops, name, fn)


def time_torch(args, res, batches):
  cfg = json.dumps(CONFIGS[res])
  result = subprocess.run([args.torch_python, "-c", TORCH_SNIPPET, args.sg2_dir, cfg, json.dumps(batches),
                           str(args.reps)], capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f"The PyTorch timing subprocess failed:\n{result.stderr[-3000:]}")
  return {(r["batch"], r["mode"]): (r["seconds"], r["cpu"]) for r in json.loads(result.stdout.strip().splitlines()[-1])}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--res", type=int, nargs="+", default=[256, 1024], choices=sorted(CONFIGS))
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8], help="batch sizes at 256")
  parser.add_argument("--batch-1024", type=int, nargs="+", default=[1, 4],
                      help="batch sizes at 1024 (B=8 fwd+bwd needs > 10 GB)")
  parser.add_argument("--reps", type=int, default=3, help="timed calls per entry (median reported)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--compare-modconv", action="store_true", help="also time the alternative formulations")
  parser.add_argument("--torch-python", help="python of a venv with torch, to time NVlabs' generator")
  parser.add_argument("--sg2-dir", help="checkout of NVlabs/stylegan2-ada-pytorch (with --torch-python)")
  args = parser.parse_args()
  if bool(args.torch_python) != bool(args.sg2_dir):
    parser.error("--torch-python and --sg2-dir go together")

  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; synthesis only, noise_mode='const', median of {args.reps} calls")
  print("CPU columns: process CPU seconds per image (all threads), a contention-robust measure of work when "
        "other jobs share the machine.")
  header = ("| generator | B | pass | variant | jax s/call | jax img/s | jax CPU s/img | torch img/s | torch CPU s/img "
            "| speed-up |")
  print(header + "\n|" + "---|" * (header.count("|") - 1))
  variants = list(VARIANTS) if args.compare_modconv else ["jaxmia"]
  for res in args.res:
    batches = args.batch if res == 256 else args.batch_1024
    torch_times = time_torch(args, res, batches) if args.torch_python else {}
    for variant in variants:
      for b, mode, seconds, cpu in time_jax(res, batches, args.reps, variant, jnp.dtype(args.dtype)):
        ref, ref_cpu = torch_times.get((b, mode), (None, None))
        ref_note = ""
        if ref is None and (res, b, mode) in BASELINE:
          ref, ref_note = BASELINE[(res, b, mode)] * b, " (baseline.md)"
        torch_cell = f"{b / ref:.2f}{ref_note}" if ref else "-"
        torch_cpu = f"{ref_cpu / b:.3f}" if ref_cpu else "-"
        speedup = f"{ref / seconds:.2f}x" if ref else "-"
        print(f"| FFHQ-{res} | {b} | {mode} | {variant} | {seconds:.3f} | {b / seconds:.2f} | {cpu / b:.3f} | "
              f"{torch_cell} | {torch_cpu} | {speedup} |", flush=True)


if __name__ == "__main__":
  main()
