"""Convolution-gradient options on this machine's XLA backend: which formulation jaxmia should use.

    python scripts/bench_conv.py                 # float32, the shapes below (about 2 minutes on 2 CPU cores)
    python scripts/bench_conv.py --dtype bfloat16
    python scripts/bench_conv.py --tables 1x1     # only the 1x1 (bottleneck) table

For 3x3 convolutions of ResNet and StyleGAN2 FFHQ-256 shapes it prints GFLOP/s of
  * the forward pass;
  * the input gradient as JAX writes it (`lax.conv_general_dilated`) and with jaxmia's
    `jaxmia.models.conv.conv_general_dilated` (the kernel's I/O axes swapped in memory), each once as a plain
    jitted call and once per iteration of a jitted `lax.fori_loop` — the attack runs its steps in such a loop;
  * the weight gradient as XLA computes it and as nine tap-wise matrix products (the alternative issue #3
    proposed; written here, not in jaxmia);
and for the loops whether XLA:CPU compiled the convolution into a YNNPACK fusion ('YNN') or its generic
convolution ('generic'; also what other backends print). jaxmia keeps the materialised-kernel input gradient and
XLA's own weight gradient because of what this table measures.

A second table times 1x1 convolutions of ResNet bottleneck shapes (forward, input and weight gradient in one
jitted call) as `lax.conv_general_dilated` and as jaxmia's strided slice + matrix product.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmia.models import conv as jaxmia_conv

# (name, batch, height = width, in channels, out channels)
SHAPES = [
    ("ResNet stage 1", 16, 56, 64, 64),
    ("ResNet stage 2", 16, 28, 128, 128),
    ("ResNet stage 3", 16, 14, 256, 256),
    ("StyleGAN2-256 64 px", 1, 64, 256, 256),
    ("StyleGAN2-256 128 px", 4, 128, 128, 128),
]
# 1x1 convolutions of ResNet-50/152 bottlenecks at 224 px: (name, batch, height = width, in, out, stride)
POINTWISE_SHAPES = [
    ("layer1 conv1", 16, 56, 256, 64, 1),
    ("layer1 conv3", 16, 56, 64, 256, 1),
    ("layer2 conv3", 16, 28, 128, 512, 1),
    ("layer3 conv1", 16, 14, 1024, 256, 1),
    ("layer4 conv3", 16, 7, 512, 2048, 1),
    ("layer3 downsample", 16, 28, 512, 1024, 2),
]
LOOP_ITERATIONS = 4
DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def seconds(fn, *args, repeats: int) -> float:
  """Median wall time of `fn(*args)` after one compiling call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def convolution_kind(fn, *args) -> str:
  """'YNN' if XLA:CPU compiled the (single) convolution of `fn` into a YNNPACK fusion, else 'generic'."""
  return "YNN" if "__ynn_fusion" in fn.lower(*args).compile().as_text() else "generic"


def make_conv(impl):
  return lambda x, w: impl(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DIMENSIONS)


def input_gradient(impl):
  conv = make_conv(impl)
  return lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]


def looped(step):
  """`LOOP_ITERATIONS` dependent applications of `step(x, w, g)` inside one `fori_loop`."""
  return jax.jit(lambda x, w, g: lax.fori_loop(0, LOOP_ITERATIONS, lambda i, x: step(x, w, g) * 1e-3, x))


def tapwise_weight_gradient(x, g):
  """`[3, 3, I, O]` weight gradient of a stride-1, pad-1 conv as nine `[I, B*H*W] @ [B*H*W, O]` products."""
  h, w = g.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.stack([jnp.stack([jnp.einsum("bhwi,bhwo->io", padded[:, dy:dy + h, dx:dx + w], g)
                               for dx in range(3)]) for dy in range(3)])


def pointwise_training_pass(impl, stride: int):
  """Forward, input and weight gradient of a 1x1 conv (what a training step computes per layer)."""
  conv = lambda x, w: impl(x, w, (stride, stride), "VALID", dimension_numbers=DIMENSIONS)

  def forward_and_gradients(x, w, g):
    out, vjp = jax.vjp(conv, x, w)
    return out, vjp(g)

  return jax.jit(forward_and_gradients)


def pointwise_table(dtype, repeats: int):
  print("\n1x1 convolutions: forward + input grad + weight grad, GFLOP/s (3 * 2*B*H'*W'*I*O per call)\n")
  print("| shape | B | lax | jaxmia (matmul) | speed-up |")
  print("|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for name, batch, size, cin, cout, stride in POINTWISE_SHAPES:
    out = -(-size // stride)
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), dtype)
    w = jnp.asarray(rng.standard_normal((1, 1, cin, cout)) / np.sqrt(cin), dtype)
    g = jnp.asarray(rng.standard_normal((batch, out, out, cout)), dtype)
    flop = 3 * 2 * batch * out * out * cin * cout
    times = [seconds(pointwise_training_pass(impl, stride), x, w, g, repeats=repeats)
             for impl in (lax.conv_general_dilated, jaxmia_conv.conv_general_dilated)]
    rates = [flop / t / 1e9 for t in times]
    print(f"| {name} {size}x{size}x{cin}->{cout}, stride {stride} | {batch} | {rates[0]:.0f} | {rates[1]:.0f} "
          f"| {times[0] / times[1]:.2f}x |", flush=True)


def three_by_three_table(dtype, repeats: int):
  print("| shape | B | forward | input grad lax | input grad jaxmia | input grad lax, loop "
        "| input grad jaxmia, loop | weight grad XLA | weight grad tap-wise |")
  print("|---|---|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for name, batch, size, cin, cout in SHAPES:
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), dtype)
    w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), dtype)
    g = jnp.asarray(rng.standard_normal((batch, size, size, cout)), dtype)
    flop = 2 * batch * size * size * cin * cout * 9
    rate = lambda s: f"{flop / s / 1e9:.0f}"
    forward = rate(seconds(jax.jit(make_conv(lax.conv_general_dilated)), x, w, repeats=repeats))
    cells = []
    for impl in (lax.conv_general_dilated, jaxmia_conv.conv_general_dilated):
      cells.append(rate(seconds(jax.jit(input_gradient(impl)), x, w, g, repeats=repeats)))
    for impl in (lax.conv_general_dilated, jaxmia_conv.conv_general_dilated):
      step = input_gradient(impl)
      # The carry is the cotangent, so iterations depend on each other (x and g have equal shapes: I == O).
      loop = looped(lambda x, w, g, step=step: step(g, w, x))
      per_iteration = seconds(loop, x, w, g, repeats=repeats) / LOOP_ITERATIONS
      cells.append(f"{rate(per_iteration)} ({convolution_kind(loop, x, w, g)})")
    xla_weight = jax.jit(lambda x, g: jax.vjp(lambda k: make_conv(lax.conv_general_dilated)(x, k), w)[1](g)[0])
    cells.append(rate(seconds(xla_weight, x, g, repeats=repeats)))
    cells.append(rate(seconds(jax.jit(tapwise_weight_gradient), x, g, repeats=repeats)))
    print(f"| {name} {size}x{size}x{cin}->{cout} | {batch} | {forward} | " + " | ".join(cells) + " |", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median reported)")
  parser.add_argument("--tables", default="3x3,1x1", help="which tables to print: 3x3, 1x1 or both")
  args = parser.parse_args()
  dtype = jnp.dtype(args.dtype)
  tables = args.tables.split(",")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.dtype}; median of {args.repeats}\n")
  if "3x3" in tables:
    print(f"3x3 convolutions, GFLOP/s (2*B*H*W*I*O*9 per pass); loop = per iteration of a {LOOP_ITERATIONS}-step "
          "fori_loop\n")
    three_by_three_table(dtype, args.repeats)
  if "1x1" in tables:
    pointwise_table(dtype, args.repeats)


if __name__ == "__main__":
  main()
