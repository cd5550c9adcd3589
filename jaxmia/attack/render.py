"""How a generated image reaches a network, shared by every attack stage, the evaluation and the analyses:
`w` -> StyleGAN2 synthesis (`synthesize`) -> optional clamp to [-1, 1] -> centre crop -> antialiased resize
(`target_view`, the view of a generated image that the target model gets; `resolve_center_crop` sizes the
crop), frozen networks in a compute dtype (`with_compute_dtype`, `cast_and_replicate`), the config fields
every stage reads for it and for how its core compiles (`view_settings`, `random_crop_settings`), and the
per-process cache of the jitted functions built from them (`cached_jit`).
"""
import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxmia import parallel
from jaxmia.data import image_ops
from jaxmia.models import xla_cpu

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_center_crop(center_crop: int, resolution: int) -> int:
  """`center_crop`, or PPA's 800-of-1024 crop scaled to `resolution` (`round(R * 800 / 1024)`) when it is 0."""
  crop = center_crop or round(resolution * 800 / 1024)
  if not 0 < crop <= resolution:
    raise ValueError(f"center_crop={crop} does not fit the generator's {resolution}x{resolution} images; "
                     f"use 0 (automatic) or a size in [1, {resolution}].")
  return crop


def with_compute_dtype(module, dtype_name: str):
  """`module` computing in `dtype_name` ('float32' or 'bfloat16'); parameters are untouched."""
  if dtype_name not in DTYPES:
    raise ValueError(f"Unknown compute dtype {dtype_name!r}; choose one of {sorted(DTYPES)}.")
  dtype = DTYPES[dtype_name]
  if getattr(module, "dtype", dtype) == dtype:
    return module
  if not hasattr(module, "dtype"):
    raise ValueError(f"{type(module).__name__} has no `dtype` attribute, so it cannot compute in {dtype_name}; "
                     "use dtype='float32'.")
  return module.clone(dtype=dtype)


def cast_and_replicate(generator, target_model, generator_variables, target_variables, dtype_name: str, mesh=None):
  """`(generator, target_model, (generator_variables, target_variables))` for a stage that scores images: both
  modules computing in `dtype_name`, the variables replicated over `mesh` (unchanged when it is None)."""
  variables = (generator_variables, target_variables)
  if mesh is not None:
    variables = parallel.replicate(variables, mesh)
  return with_compute_dtype(generator, dtype_name), with_compute_dtype(target_model, dtype_name), variables


@dataclasses.dataclass(frozen=True)
class ViewSettings:
  """How a generated image becomes the target's input (hashable, so jitted attack cores take it as static):
  `view_settings` of a config section."""
  clamp: bool
  center_crop: int
  resize: int
  dtype: str
  xla_cpu_options: str = xla_cpu.DEFAULT_COMPILATION


def view_settings(config, resolution: int) -> dict:
  """The image-pipeline fields of a stage's config section (`candidates`, `attack`, `final_selection`) for a
  generator of `resolution` pixels: `clamp`, `center_crop` (resolved), `resize`, the compute `dtype` and how
  the stage's core compiles (`xla_cpu_options`, `models.xla_cpu.compiler_options`; 'step' when absent)."""
  return dict(clamp=bool(config.clamp), center_crop=resolve_center_crop(int(config.center_crop), resolution),
              resize=int(config.resize), dtype=str(config.dtype),
              xla_cpu_options=str(config.get("xla_cpu_options", xla_cpu.DEFAULT_COMPILATION)))


def random_crop_settings(config) -> dict:
  """`crop_scale` and `crop_ratio` of the random resized crops of a config section (stages 2 and 3), as tuples."""
  return dict(crop_scale=tuple(float(s) for s in config.crop_scale),
              crop_ratio=tuple(float(r) for r in config.crop_ratio))


def synthesize(generator, generator_variables, w):
  """StyleGAN2 images `[B, R, R, C]` (unclamped) from `w` `[B, 1 or num_ws, w_dim]` (one w is broadcast)."""
  ws = jnp.broadcast_to(w, (w.shape[0], generator.num_ws, w.shape[-1]))
  return generator.apply(generator_variables, ws, noise_mode="const", method="synthesis")


def target_view(images, *, clamp: bool, center_crop: int, resize: int):
  """The target model's input: optional clamp to [-1, 1], centre crop, antialiased resize; `[B, S, S, C]`."""
  if clamp:
    images = jnp.clip(images, -1.0, 1.0)
  return image_ops.resize(image_ops.center_crop(images, center_crop), resize, antialias=True)


_COMPILED: dict[Any, Any] = {}


def cached_jit(name: str, modules, settings, build):
  """The jitted function `build()` for these modules and settings, built once per process.

  Flax modules with equal `repr` are the same network, so converted models loaded twice share compiled code.
  """
  cache_key = (name, tuple(repr(m) for m in modules), settings)
  if cache_key not in _COMPILED:
    _COMPILED[cache_key] = build()
  return _COMPILED[cache_key]
