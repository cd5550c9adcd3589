"""The one switch for jaxmia's XLA:CPU formulations of its networks' convolutions and residual trunks.

`models.conv.conv_general_dilated` (1x1 convolutions as matrix products, input gradients on a materialised
swapped kernel), `models.materialize.materialize` (block outputs stored, not recomputed) and
`models.batch_norm` (train-mode sums as matrix products, closed-form gradient) are rewrites that XLA:CPU runs
faster (`scripts/bench_conv.py`, `scripts/bench_train.py`), exact up to summation order; with the switch off
they are plain `lax.conv_general_dilated`, the identity and `jnp.mean`, as XLA on GPU and TPU expects them.

The switch also gives the compiler options of jaxmia's jitted steps (`step_compiler_options`: the classifiers'
training step and the PPA attack's three stages): XLA:CPU hands matrix products *and* convolutions to YNNPACK by
default; YNNPACK's 3x3 convolutions and their gradients are slower than XLA's own convolutions on the ResNet and
StyleGAN2 shapes measured, more so without AVX-512 (`docs/speed.md`: `scripts/bench_conv.py --tables=torch`, whose
'compiled' column compiles both ways; `scripts/bench_train.py`, `scripts/bench_attack.py`). The steps keep
YNNPACK for matrix products only. A jaxlib that does not know the option compiles without it. JAX refuses
compiler options on a nested `jax.jit`, so these steps are called at top level (as the programs do), not inside
a caller's jit. An attack section's `xla_cpu_options` chooses for its stage (`compiler_options`): 'step' unless
it says 'default' (XLA's own choices: GMI's and KED-MI's configs, faster so at their 64x64 shapes, and the
low-resolution study's, whose cells ran so); the GAN trainings keep XLA's defaults.

On by default on the CPU backend and off on any other; the environment variable `JAXMIA_XLA_CPU_FORMULATIONS`
(`1` or `0`) forces either. It is read when a network is traced, so set it before the first jitted call.
"""
import functools
import os

from absl import logging
import jax
import jax.numpy as jnp

# XLA:CPU's libraries for its fusions: YNNPACK for matrix products only, convolutions on XLA's own emitter.
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_DOTS_ONLY = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"

ENV_VAR = "JAXMIA_XLA_CPU_FORMULATIONS"


def enabled() -> bool:
  """Whether the XLA:CPU formulations are on (see the module docstring)."""
  forced = os.environ.get(ENV_VAR)
  if forced is None:
    return jax.default_backend() == "cpu"
  if forced not in ("0", "1"):
    raise ValueError(f"{ENV_VAR} must be 1 (on) or 0 (off), got {forced!r}; unset it for the default "
                     "(on for the CPU backend only).")
  return forced == "1"


@functools.cache
def _supported(options: tuple) -> bool:
  """Whether this jaxlib's XLA:CPU accepts `options` (compiles a scalar function with them once)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.float32(0)).compile()
    return True
  except Exception as e:  # an unknown option or value is an INVALID_ARGUMENT from the compiler
    logging.warning("XLA:CPU does not take %s (%s); compiling without it.", dict(options), str(e).splitlines()[0])
    return False


# An attack section's `xla_cpu_options`: 'step' compiles its jitted core as `step_compiler_options` gives, 'default'
# with XLA's own choices (what the low-resolution study's cells ran with).
COMPILATIONS = ("step", "default")
DEFAULT_COMPILATION = "step"  # a section that does not say


def compiler_options(compilation: str) -> dict | None:
  """`jax.jit(..., compiler_options=...)` for a config's `xla_cpu_options` ('step' or 'default')."""
  if compilation not in COMPILATIONS:
    raise ValueError(f"xla_cpu_options must be one of {COMPILATIONS}, got {compilation!r}.")
  return step_compiler_options() if compilation == "step" else None


def step_compiler_options() -> dict | None:
  """`jax.jit(..., compiler_options=...)` of a training or attack step: YNNPACK for matrix products only when
  the switch is on and the compiler knows the option; None (XLA's defaults) otherwise."""
  if not enabled() or jax.default_backend() != "cpu":
    return None
  options = ((YNN_FUSION_OPTION, YNN_DOTS_ONLY),)
  return dict(options) if _supported(options) else None
