"""Convolution-gradient options on this machine's XLA backend: which formulation jaxmia should use, and how
jaxmia's convolutions compare with PyTorch's (oneDNN) on the same shapes in the same run.

    python scripts/bench_conv.py                 # float32, the shapes below (minutes on 2 CPU cores)
    python scripts/bench_conv.py --dtype=bfloat16
    python scripts/bench_conv.py --tables=1x1     # only the 1x1 (bottleneck) table
    python scripts/bench_conv.py --tables=small   # only the kernel-larger-than-input table
    python scripts/bench_conv.py --tables=batchnorm,torch --shapes=BatchNorm   # train-mode BatchNorm only
    python scripts/bench_conv.py --tables=torch --shapes="stage 1"   # only jaxmia vs PyTorch, one shape

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

A third table ('small') times the same training pass for GMI's / KED-MI's 5x5 layers on maps smaller than the
kernel (their networks at 32x32), as `lax.conv_general_dilated` and as jaxmia's patches times a matrix
(`as_patches=True`, what those networks use).

A fourth table ('batchnorm') times train-mode BatchNorm, forward and gradient in one jitted call, at the
activation shapes of a ResNet-50/152 step at 224 px: the per-channel sums as reductions with JAX's gradient, and
as `jaxmia.models.batch_norm`'s XLA:CPU formulation (products with a vector of ones, closed-form gradient).

A fifth table ('torch') times what jaxmia runs (`jaxmia.models.conv.conv_general_dilated`, NHWC; its
`BatchNorm`) against PyTorch's `conv2d` and its gradients (NCHW, float32) on the same shapes: the 3x3 forward,
input and weight gradients, the 1x1 training pass, and train-mode `batch_norm` with its gradient. Its 'compiled'
column says how jaxmia's side is compiled: as jaxmia's training and attack steps are ('jaxmia': their compiler
options, `jaxmia.models.xla_cpu.step_compiler_options`) or with XLA's defaults (the 3x3 passes only). Each side runs
in its own process (PyTorch's is `scripts/bench_torch.py` in the reference environment of
`scripts/setup_reference.sh`), alternating for `--rounds` rounds, each side's median reported
(`jaxmia.benchmarks`); without the reference environment only jaxmia is timed.
"""
import functools

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmia import benchmarks
from jaxmia.models import batch_norm
from jaxmia.models import conv as jaxmia_conv
from jaxmia.models import xla_cpu

flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "jaxmia's dtype (PyTorch runs float32).")
flags.DEFINE_integer("repeats", 3, "Timed calls per cell of the 3x3 and 1x1 tables (median reported).")
flags.DEFINE_list("tables", ["3x3", "1x1", "small", "batchnorm", "torch"],
                  "Tables to print: 3x3, 1x1, small, batchnorm, torch.")
flags.DEFINE_list("shapes", [], "Only the shapes whose names contain one of these (default: all).")
flags.DEFINE_integer("calls", 2, "Calls per side and round in the torch table.")
benchmarks.define_flags()
FLAGS = flags.FLAGS

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
# 5x5 layers of GMI's critic and generator at 32x32 and 64x64 (batch 64): (name, batch,
# height = width, in, out, stride, padding, input dilation); the dilated ones are transposed convolutions.
SMALL_SHAPES = [
    ("critic last 5x5 (32 px)", 64, 4, 256, 512, 2, ((2, 2), (2, 2)), 1),
    ("generator first 5x5^T (32 px)", 64, 2, 512, 256, 1, ((2, 3), (2, 3)), 2),
    ("critic last 5x5 (64 px; output 4x4)", 64, 8, 256, 512, 2, ((2, 2), (2, 2)), 1),
]
# Train-mode BatchNorm inputs of a ResNet-50/152 step at 224 px: (name, batch, height = width, channels)
BATCHNORM_SHAPES = [
    ("BatchNorm stem", 16, 112, 64),
    ("BatchNorm layer1", 16, 56, 256),
    ("BatchNorm layer2", 16, 28, 512),
    ("BatchNorm layer3", 16, 14, 1024),
    ("BatchNorm layer4", 16, 7, 2048),
]
# The torch table's compilations: as jaxmia's training and attack steps compile (`xla_cpu.step_compiler_options`:
# convolutions on XLA's own emitter on XLA:CPU), and with XLA's defaults (convolutions to YNNPACK on XLA:CPU).
COMPILATIONS = {"jaxmia": xla_cpu.step_compiler_options, "XLA default": lambda: None}
LOOP_ITERATIONS = 4
DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def seconds(fn, *args, repeats: int) -> float:
  """Median wall time of `fn(*args)` after one compiling call."""
  jax.block_until_ready(fn(*args))
  return float(np.median([benchmarks.seconds_of(lambda: jax.block_until_ready(fn(*args))) for _ in range(repeats)]))


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


def training_pass(impl, stride: int, padding="VALID", dilation: int = 1, jit=jax.jit):
  """Forward, input and weight gradient of a conv (what a training step computes per layer), compiled by `jit`."""
  conv = lambda x, w: impl(x, w, (stride, stride), padding, lhs_dilation=(dilation, dilation),
                           dimension_numbers=DIMENSIONS)

  def forward_and_gradients(x, w, g):
    out, vjp = jax.vjp(conv, x, w)
    return out, vjp(g)

  return jit(forward_and_gradients)


def selected(shapes):
  return [shape for shape in shapes if not FLAGS.shapes or any(name in shape[0] for name in FLAGS.shapes)]


def pointwise_table(report, dtype, repeats: int):
  report.section("1x1 convolutions: forward + input grad + weight grad, GFLOP/s (3 * 2*B*H'*W'*I*O per call)", [
      benchmarks.Column("shape", "shape", str), benchmarks.Column("B", "B", "d"),
      benchmarks.Column("lax", "lax", ".0f"), benchmarks.Column("jaxmia (matmul)", "jaxmia", ".0f"),
      benchmarks.Column("speed-up", "speedup", ".2f")])
  rng = np.random.default_rng(0)
  for name, batch, size, cin, cout, stride in selected(POINTWISE_SHAPES):
    out = -(-size // stride)
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), dtype)
    w = jnp.asarray(rng.standard_normal((1, 1, cin, cout)) / np.sqrt(cin), dtype)
    g = jnp.asarray(rng.standard_normal((batch, out, out, cout)), dtype)
    flop = 3 * 2 * batch * out * out * cin * cout
    times = [seconds(training_pass(impl, stride), x, w, g, repeats=repeats)
             for impl in (lax.conv_general_dilated, jaxmia_conv.conv_general_dilated)]
    report.add(dict(shape=f"{name} {size}x{size}x{cin}->{cout}, stride {stride}", B=batch, lax=flop / times[0] / 1e9,
                    jaxmia=flop / times[1] / 1e9, speedup=times[0] / times[1]))


def batchnorm_pass(normalize):
  """Train-mode BatchNorm's forward and its gradient for x, scale and bias (what a training step computes),
  compiled as jaxmia's steps are."""
  def forward_and_gradients(x, scale, bias, g):
    y, vjp = jax.vjp(lambda x, scale, bias: normalize(x, scale, bias, 1e-5, x.dtype)[0], x, scale, bias)
    return y, vjp(g)

  return jax.jit(forward_and_gradients, compiler_options=xla_cpu.step_compiler_options())


def batchnorm_inputs(batch: int, size: int, channels: int, dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, channels)) + 1.0, dtype)
  g = jnp.asarray(rng.standard_normal((batch, size, size, channels)), dtype)
  return x, jnp.ones((channels,), jnp.float32), jnp.zeros((channels,), jnp.float32), g


def batchnorm_table(report, dtype, repeats: int):
  report.section("Train-mode BatchNorm: forward + gradient, ms per call", [
      benchmarks.Column("shape", "shape", str), benchmarks.Column("B", "B", "d"),
      benchmarks.Column("reductions", "reduce", ".1f"), benchmarks.Column("jaxmia (matmul sums)", "jaxmia", ".1f"),
      benchmarks.Column("speed-up", "speedup", ".2f")])
  for name, batch, size, channels in selected(BATCHNORM_SHAPES):
    args = batchnorm_inputs(batch, size, channels, dtype)
    times = [seconds(batchnorm_pass(normalize), *args, repeats=repeats)
             for normalize in (batch_norm.normalize_with_reductions, batch_norm.normalize_with_matmul_sums)]
    report.add(dict(shape=f"{name} {size}x{size}x{channels}", B=batch, reduce=times[0] * 1e3,
                    jaxmia=times[1] * 1e3, speedup=times[0] / times[1]))


def small_input_table(report, dtype, repeats: int):
  report.section("5x5 convolutions on maps smaller than the kernel: forward + input grad + weight grad, GFLOP/s "
                 "(XLA's cost analysis of lax's pass)", [
      benchmarks.Column("shape", "shape", str), benchmarks.Column("B", "B", "d"),
      benchmarks.Column("lax", "lax", ".1f"), benchmarks.Column("jaxmia (patches)", "jaxmia", ".1f"),
      benchmarks.Column("speed-up", "speedup", ".1f")])
  rng = np.random.default_rng(0)
  for name, batch, size, cin, cout, stride, padding, dilation in selected(SMALL_SHAPES):
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), dtype)
    w = jnp.asarray(rng.standard_normal((5, 5, cin, cout)) / np.sqrt(25 * cin), dtype)
    passes = [training_pass(impl, stride, padding, dilation) for impl in (
        lax.conv_general_dilated, functools.partial(jaxmia_conv.conv_general_dilated, as_patches=True))]
    out = jax.eval_shape(lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding, (dilation,) * 2,
                                                               dimension_numbers=DIMENSIONS), x, w)
    g = jnp.asarray(rng.standard_normal(out.shape), dtype)
    flop = benchmarks.compiled_flops(passes[0], x, w, g)
    times = [seconds(fn, x, w, g, repeats=repeats) for fn in passes]
    report.add(dict(shape=f"{name} {size}x{size}x{cin}->{cout}", B=batch, lax=flop / times[0] / 1e9,
                    jaxmia=flop / times[1] / 1e9, speedup=times[0] / times[1]))


def three_by_three_table(report, dtype, repeats: int):
  columns = [benchmarks.Column(h, k, str) for h, k in (
      ("shape", "shape"), ("B", "B"), ("forward", "forward"), ("input grad lax", "input_lax"),
      ("input grad jaxmia", "input_jaxmia"), ("input grad lax, loop", "input_lax_loop"),
      ("input grad jaxmia, loop", "input_jaxmia_loop"), ("weight grad XLA", "weight_xla"),
      ("weight grad tap-wise", "weight_tapwise"))]
  report.section(f"3x3 convolutions, GFLOP/s (2*B*H*W*I*O*9 per pass); loop = per iteration of a "
                 f"{LOOP_ITERATIONS}-step fori_loop", columns)
  rng = np.random.default_rng(0)
  for name, batch, size, cin, cout in selected(SHAPES):
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
    keys = [c.key for c in columns]
    report.add(dict(zip(keys, [f"{name} {size}x{size}x{cin}->{cout}", str(batch), forward, *cells])))


def torch_cases():
  """(name, flop per call, case) of every convolution in the torch table."""
  cases = []
  for name, batch, size, cin, cout in selected(SHAPES):
    flop = 2 * batch * size * size * cin * cout * 9
    for op in ("forward", "input_grad", "weight_grad"):
      for compiled in COMPILATIONS:
        cases.append((f"{name} {size}x{size}x{cin}->{cout}", flop, dict(
            B=batch, size=size, cin=cin, cout=cout, k=3, stride=1, op=op, compiled=compiled)))
  for name, batch, size, cin, cout, stride in selected(POINTWISE_SHAPES):
    out = -(-size // stride)
    cases.append((f"{name} {size}x{size}x{cin}->{cout}, stride {stride}", 3 * 2 * batch * out * out * cin * cout,
                  dict(B=batch, size=size, cin=cin, cout=cout, k=1, stride=stride, op="training", compiled="jaxmia")))
  for name, batch, size, channels in selected(BATCHNORM_SHAPES):
    # "GB/s": the activation bytes of x, dy, y and dx, one pass each (the least any implementation moves).
    cases.append((f"{name} {size}x{size}x{channels}", 4 * 4 * batch * size * size * channels,
                  dict(B=batch, size=size, cin=channels, op="batchnorm", compiled="jaxmia")))
  return cases


def case_function(case: dict, dtype):
  """(jaxmia's jitted function, its arguments) of a torch-table case: a convolution pass or a BatchNorm pass."""
  if case["op"] == "batchnorm":
    return batchnorm_pass(batch_norm.normalize_train), batchnorm_inputs(case["B"], case["size"], case["cin"], dtype)
  k, stride = case["k"], case["stride"]
  rng = np.random.default_rng(0)
  out = -(-case["size"] // stride)
  x = jnp.asarray(rng.standard_normal((case["B"], case["size"], case["size"], case["cin"])), dtype)
  w = jnp.asarray(rng.standard_normal((k, k, case["cin"], case["cout"])) / np.sqrt(k * k * case["cin"]), dtype)
  g = jnp.asarray(rng.standard_normal((case["B"], out, out, case["cout"])), dtype)
  conv = make_conv(jaxmia_conv.conv_general_dilated)
  jit = functools.partial(jax.jit, compiler_options=COMPILATIONS[case["compiled"]]())
  return {
      "forward": (jit(conv), (x, w)),
      "input_grad": (jit(input_gradient(jaxmia_conv.conv_general_dilated)), (x, w, g)),
      "weight_grad": (jit(lambda x, g: jax.vjp(lambda k: conv(x, k), w)[1](g)[0]), (x, g)),
      "training": (training_pass(jaxmia_conv.conv_general_dilated, stride, jit=jit), (x, w, g)),
  }[case["op"]]


def prepare(case: dict):
  """jaxmia's side of a torch-table case, compiled: (a run of `calls` calls, calls)."""
  fn, args = case_function(case, jnp.dtype(case["dtype"]))
  jax.block_until_ready(fn(*args))
  return lambda: [jax.block_until_ready(fn(*args)) for _ in range(case["calls"])], case["calls"]


handle = benchmarks.case_handler(prepare)  # a worker request: `prepare` a case or time one `round` of it


def torch_table(report, reference):
  title = ("jaxmia's convolutions and BatchNorm (NHWC) beside PyTorch's (NCHW, float32), GFLOP/s (BatchNorm: GB/s "
           "of x, dy, y and dx), measured side by side" if reference else
           "jaxmia's convolutions and BatchNorm (NHWC), GFLOP/s (BatchNorm: GB/s of x, dy, y and dx)")
  report.section(title, [
      benchmarks.Column("shape", "shape", str), benchmarks.Column("pass", "op", str),
      benchmarks.Column("compiled", "compiled", str), benchmarks.Column("B", "B", "d"),
      benchmarks.Column("jaxmia", "jaxmia_rate", ".0f"),
      benchmarks.Column("PyTorch", "torch_rate", ".0f", torch=True),
      *benchmarks.RATIO_COLUMNS,
      benchmarks.Column("other cores", "other_cores", ".2f")])
  try:
    with benchmarks.sides(__file__, reference) as workers:
      for shape, flop, case in torch_cases():
        cases = dict(jaxmia=dict(case, calls=FLAGS.calls, dtype=FLAGS.dtype),
                     torch=dict(case, calls=FLAGS.calls, kind="batchnorm" if case["op"] == "batchnorm" else "conv"))
        summaries = benchmarks.compare(workers, cases, FLAGS.rounds, max_wait=FLAGS.max_wait,
                                       threshold=FLAGS.threshold)
        report.add(benchmarks.side_by_side_row(summaries, flop / 1e9, shape=shape, **case))
  except benchmarks.WorkerError as e:
    report.add(dict(shape="torch table", error=str(e)))


def main(argv):
  del argv
  if FLAGS.serve:
    benchmarks.serve(handle)
    return
  dtype = jnp.dtype(FLAGS.dtype)
  reference, why = (benchmarks.find_reference(FLAGS.reference) if "torch" in FLAGS.tables
                    else (None, "no torch table asked for"))
  report = benchmarks.Report("bench_conv", reference=reference, why=why, matmul_size=FLAGS.matmul_size,
                             json_path=FLAGS.json, settings=benchmarks.settings(
                                 FLAGS, ["dtype", "repeats", "tables", "shapes", "calls", "rounds", "max_wait",
                                         "threshold"]))
  report.print(f"{FLAGS.dtype}; median of {FLAGS.repeats} calls in the 3x3, 1x1, small and batchnorm tables, of "
               f"{FLAGS.rounds} rounds in the torch table")
  if "3x3" in FLAGS.tables:
    three_by_three_table(report, dtype, FLAGS.repeats)
  if "1x1" in FLAGS.tables:
    pointwise_table(report, dtype, FLAGS.repeats)
  if "small" in FLAGS.tables:
    small_input_table(report, dtype, FLAGS.repeats)
  if "batchnorm" in FLAGS.tables:
    batchnorm_table(report, dtype, FLAGS.repeats)
  if "torch" in FLAGS.tables:
    torch_table(report, reference)
  report.finish()


if __name__ == "__main__":
  app.run(main)
