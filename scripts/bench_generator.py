"""Speed of the StyleGAN2 synthesis network beside NVlabs' PyTorch one, measured in the same run: images/s
forward and forward+backward (gradient w.r.t. ws).

Shapes are those of the public FFHQ-256 (`--cfg=paper256`: channel_base 16384) and FFHQ-1024 (channel_base
32768) generators, with random weights (plain init). The backward pass differentiates w.r.t. ws only, with
the generator frozen, as in a model inversion attack step.

    python scripts/bench_generator.py                        # jaxmia beside NVlabs' generator
    python scripts/bench_generator.py --compare_modconv --res=256   # style modulation variants (see below)

The PyTorch side is NVlabs' `training.networks.Generator` imported at run time by `scripts/bench_torch.py` in
the reference environment (`scripts/setup_reference.sh`); both sides live in their own processes for a whole
resolution, and every row alternates them for `--rounds` rounds (`jaxmia.benchmarks`, each side's median).
Without the reference environment only jaxmia is timed.

`--compare_modconv` also times two alternatives to the formulation jaxmia uses (activations scaled by the
styles around one shared-kernel conv; stride-2 transposed convs split into polyphase stride-1 convs):
`grouped`, per-sample modulated kernels run as one grouped conv (NVlabs' fused path), and `dilated`,
transposed convs as one `lhs_dilation` conv; they take their turns in the same rounds.
"""

from absl import app, flags
import jax
import jax.numpy as jnp
from jax import lax

from jaxmia import benchmarks
from jaxmia.models import stylegan2 as sg2
from jaxmia.models import stylegan2_ops as ops

flags.DEFINE_list("res", ["256", "1024"], "Generator resolutions (256, 1024).")
flags.DEFINE_list("batch", ["1", "4", "8"], "Batch sizes at 256.")
flags.DEFINE_list("batch_1024", ["1", "4"], "Batch sizes at 1024 (B = 8 forward + backward needs > 10 GB).")
flags.DEFINE_integer("calls", 1, "Calls per side and round.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "jaxmia's compute dtype (PyTorch runs float32).")
flags.DEFINE_bool("compare_modconv", False, "Also time the alternative formulations.")
benchmarks.define_flags()
FLAGS = flags.FLAGS

CONFIGS = {
    256: dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3, mapping_kwargs={"num_layers": 8},
              synthesis_kwargs={"channel_base": 16384, "channel_max": 512, "conv_clamp": 256, "num_fp16_res": 4}),
    1024: dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs={"num_layers": 8},
               synthesis_kwargs={"channel_base": 32768, "channel_max": 512, "conv_clamp": 256, "num_fp16_res": 4}),
}

COLUMNS = [
    benchmarks.Column("generator", "generator", str),
    benchmarks.Column("B", "B", "d"),
    benchmarks.Column("pass", "mode", str),
    benchmarks.Column("variant", "variant", str),
    benchmarks.Column("jaxmia s/call", "jaxmia_s", ".3f"),
    benchmarks.Column("jaxmia img/s", "jaxmia_rate", ".3g"),
    benchmarks.Column("jaxmia CPU s/img", "jaxmia_cpu_s_per_img", ".3f"),
    benchmarks.Column("NVlabs img/s", "torch_rate", ".3g", torch=True),
    benchmarks.Column("NVlabs CPU s/img", "torch_cpu_s_per_img", ".3f", torch=True),
    *benchmarks.RATIO_COLUMNS,
    benchmarks.Column("other cores", "other_cores", ".2f"),
]


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


VARIANTS = {
    "jaxmia": {},
    "grouped": {"modulated_conv2d": grouped_modulated_conv2d},
    "dilated": {"conv_transpose2x": dilated_conv_transpose2x},
}

_generators = {}


def prepare(case: dict):
  """The jitted call of a case (resolution, batch, pass, variant), traced with the variant's ops, warmed up:
  (a run of `calls` calls, calls)."""
  res, batch, dtype = case["res"], case["B"], jnp.dtype(case["dtype"])
  if (res, dtype) not in _generators:
    generator = sg2.Generator(**CONFIGS[res], dtype=dtype)
    variables = jax.jit(lambda: generator.init(jax.random.key(0), jnp.zeros((1, 512)), None,
                                               noise_mode="const"))()
    _generators[res, dtype] = generator, variables
  generator, variables = _generators[res, dtype]
  synthesis = lambda v, ws: generator.apply(v, ws, noise_mode="const", method="synthesis")
  if case["mode"] == "fwd":
    fn = jax.jit(synthesis)
  else:
    fn = jax.jit(jax.grad(lambda v, ws: jnp.sum(jnp.square(synthesis(v, ws))), argnums=1))
  ws = jax.random.normal(jax.random.key(batch), (batch, generator.num_ws, generator.w_dim))
  originals = {name: getattr(ops, name) for name in VARIANTS[case["variant"]]}
  for name, replacement in VARIANTS[case["variant"]].items():
    setattr(ops, name, replacement)  # the modules look these up at trace time
  try:
    jax.block_until_ready(fn(variables, ws))  # traces, compiles and warms up
  finally:
    for name, original in originals.items():
      setattr(ops, name, original)
  return lambda: [jax.block_until_ready(fn(variables, ws)) for _ in range(case["calls"])], case["calls"]


handle = benchmarks.case_handler(prepare)  # a worker request: `prepare` a case or time one `round` of it


def main(argv):
  del argv
  if FLAGS.serve:
    benchmarks.serve(handle)
    return
  reference, why = benchmarks.find_reference(FLAGS.reference, needs=("sg2",))
  report = benchmarks.Report("bench_generator", COLUMNS, reference=reference, why=why,
                             matmul_size=FLAGS.matmul_size, json_path=FLAGS.json, settings=benchmarks.settings(
                                 FLAGS, ["res", "batch", "batch_1024", "calls", "dtype", "compare_modconv",
                                         "rounds", "max_wait", "threshold"]))
  variants = list(VARIANTS) if FLAGS.compare_modconv else ["jaxmia"]
  for res in (int(r) for r in FLAGS.res):
    try:
      with benchmarks.sides(__file__, reference) as workers:
        for batch in (int(b) for b in (FLAGS.batch if res == 256 else FLAGS.batch_1024)):
          for mode in ("fwd", "fwd+bwd"):
            common = dict(res=res, B=batch, mode=mode, calls=FLAGS.calls)
            cases = {v: dict(common, variant=v, dtype=FLAGS.dtype) for v in variants}
            cases["torch"] = dict(common, kind="synthesis", generator=CONFIGS[res])
            by_side = {v: workers["jaxmia"] for v in variants} | {k: w for k, w in workers.items() if k != "jaxmia"}
            summaries = benchmarks.compare(by_side, cases, FLAGS.rounds, max_wait=FLAGS.max_wait,
                                           threshold=FLAGS.threshold)
            for v in variants:
              pair = {"jaxmia": summaries[v]} | ({"torch": summaries["torch"]} if "torch" in summaries else {})
              row = benchmarks.side_by_side_row(pair, batch, generator=f"FFHQ-{res}", B=batch, mode=mode, variant=v)
              for side, summary in pair.items():
                row[f"{side}_cpu_s_per_img"] = summary["cpu_seconds"] / batch
              report.add(row)
    except benchmarks.WorkerError as e:
      report.add(dict(generator=f"FFHQ-{res}", error=str(e)))
  report.finish()


if __name__ == "__main__":
  app.run(main)
