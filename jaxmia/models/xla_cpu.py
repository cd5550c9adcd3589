"""The one switch for jaxmia's XLA:CPU formulations of its networks' convolutions and residual trunks.

`models.conv.conv_general_dilated` (1x1 convolutions as matrix products, input gradients on a materialised
swapped kernel) and `models.materialize.materialize` (block outputs stored, not recomputed) are exact
rewrites that XLA:CPU runs faster (`scripts/bench_conv.py`, `scripts/bench_train.py`); with the switch off
they are plain `lax.conv_general_dilated` and the identity, as XLA on GPU and TPU expects them.

On by default on the CPU backend and off on any other; the environment variable `JAXMIA_XLA_CPU_FORMULATIONS`
(`1` or `0`) forces either. It is read when a network is traced, so set it before the first jitted call.
"""
import os

import jax

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
