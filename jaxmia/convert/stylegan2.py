"""NVlabs stylegan2-ada-pytorch networks -> Flax `models.stylegan2.Generator` / `Discriminator` variables.

    generator, variables = stylegan2_from_torch("ffhq.pkl")                  # reads the pickle's 'G_ema'
    generator, variables = stylegan2_from_torch((state_dict, init_kwargs))   # or any NVlabs Generator state
    discriminator, d_variables = discriminator_from_torch("ffhq.pkl")        # reads 'D'

Flax names mirror PyTorch's (`synthesis.b8.conv0.affine.weight` -> `params/synthesis/b8/conv0/affine/kernel`),
so the mapping is mechanical: `weight` becomes `kernel` (conv OIHW -> HWIO, dense [out, in] -> [in, out]),
`const` goes from [C, R, R] to [R, R, C], and the buffers `w_avg` / `noise_const` land in the 'buffers'
collection. The `resample_filter` buffers are not copied: they are checked against the filter the
constructor kwargs imply.
"""
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia.convert.common import ConversionError, variables_from_torch
from jaxmia.models import stylegan2 as sg2
from jaxmia.models import stylegan2_ops as ops

_BUFFERS = ("w_avg", "noise_const")


def _torch_key(names: tuple[str, ...]) -> str:
  """('params', 'synthesis', 'b4', 'conv1', 'kernel') -> 'synthesis.b4.conv1.weight'."""
  *scopes, leaf = names[1:]
  return ".".join(scopes + ["weight" if leaf == "kernel" else leaf])


def _to_numpy_state(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
  state = {k: np.asarray(v) for k, v in state.items()}
  return {k: (v.transpose(1, 2, 0) if k.endswith(".const") and v.ndim == 3 else v) for k, v in state.items()}


def _check_filters(state: Mapping[str, np.ndarray], uses_kwarg, taps, default_taps, what: str):
  """Every `*.resample_filter` buffer must equal the normalised filter the kwargs describe.

  `uses_kwarg(key)` tells whether that layer was built with the `resample_filter` kwarg; the others keep
  NVlabs' default filter.
  """
  bad = []
  for key, value in state.items():
    if not key.endswith("resample_filter"):
      continue
    want = ops.filter_2d(taps if uses_kwarg(key) else default_taps)
    if value.shape != want.shape or not np.allclose(value, want, rtol=1e-6, atol=1e-7):
      bad.append(f"{key}: file has {np.array2string(value.ravel()[:4], precision=4)}..., kwargs imply "
                 f"{np.array2string(want.ravel()[:4], precision=4)}...")
  if bad:
    raise ConversionError(f"Cannot convert the PyTorch weights into {what}: resample filters differ from the "
                          "constructor kwargs (pass the network's own init_kwargs):\n  " + "\n  ".join(bad))


def _module(cls, init_kwargs: Mapping[str, Any], dtype, what: str):
  try:
    return cls(**dict(init_kwargs), dtype=dtype)
  except TypeError as e:
    raise ConversionError(f"init_kwargs do not fit the NVlabs {what} constructor ({e}); pass the "
                          f"`init_kwargs` stored with the network.") from e


def _read_pickle_network(path, name: str):
  from jaxmia.convert.torch_reader import read_nvlabs_pickle  # noqa: PLC0415 (the reader is only needed for files)
  networks = read_nvlabs_pickle(path)
  if name not in networks:
    raise ConversionError(f"{path} holds no network {name!r} (it has {sorted(networks)}); is it an NVlabs "
                          "stylegan2-ada-pytorch training snapshot?")
  network = networks[name]
  return network.state_dict, network.init_kwargs


def _split_source(source, name: str):
  if isinstance(source, (str, os.PathLike)):
    return _read_pickle_network(source, name)
  if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], Mapping):
    return source
  raise TypeError(f"source must be a path to an NVlabs .pkl or a (state_dict, init_kwargs) tuple, got "
                  f"{type(source).__name__}.")


def generator_variables(generator: sg2.Generator, state: Mapping[str, Any]) -> dict:
  """Flax variables of `generator` from an NVlabs Generator `state_dict` (PyTorch names and layouts)."""
  state = _to_numpy_state(state)
  what = f"a StyleGAN2 generator ({generator.img_resolution}x{generator.img_resolution}, c_dim {generator.c_dim})"
  default = sg2.SYNTHESIS_DEFAULTS["resample_filter"]
  # The blocks and their up-sampling layers (conv0, skip) take the kwarg; conv1 keeps NVlabs' default.
  _check_filters(state, lambda key: not key.endswith("conv1.resample_filter"),
                 generator.synthesis_kwargs.get("resample_filter", default), default, what)
  z = jnp.zeros((1, generator.z_dim), jnp.float32)
  c = jnp.zeros((1, generator.c_dim), jnp.float32) if generator.c_dim else None
  template = jax.eval_shape(lambda: generator.init(jax.random.key(0), z, c, noise_mode="const"))
  return variables_from_torch(template, state, _torch_key, what=what,
                              ignore=lambda k: k.endswith("resample_filter"))


def discriminator_variables(discriminator: sg2.Discriminator, state: Mapping[str, Any]) -> dict:
  """Flax variables of `discriminator` from an NVlabs Discriminator `state_dict`."""
  state = _to_numpy_state(state)
  d = discriminator
  what = f"a StyleGAN2 discriminator ({d.img_resolution}x{d.img_resolution}, c_dim {d.c_dim})"
  default = sg2.D_BLOCK_DEFAULTS["resample_filter"]

  def uses_kwarg(key):  # blocks, conv1 and skip take the kwarg; fromrgb, conv0 and the epilogue do not
    parts = key.split(".")
    return parts[0] != "b4" and (len(parts) == 2 or parts[1] in ("conv1", "skip"))

  _check_filters(state, uses_kwarg, d.block_kwargs.get("resample_filter", default), default, what)
  img = jnp.zeros((1, d.img_resolution, d.img_resolution, d.img_channels), jnp.float32)
  c = jnp.zeros((1, d.c_dim), jnp.float32) if d.c_dim else None
  template = jax.eval_shape(lambda: d.init(jax.random.key(0), img, c))
  template = {k: v for k, v in template.items() if k != "intermediates"}
  return variables_from_torch(template, state, _torch_key, what=what,
                              ignore=lambda k: k.endswith("resample_filter"))


def stylegan2_from_torch(source, *, dtype=jnp.float32):
  """(Generator module, variables) from an NVlabs `.pkl` path (its 'G_ema') or `(state_dict, init_kwargs)`.

  `dtype` is the synthesis compute dtype; parameters stay float32.
  """
  state, init_kwargs = _split_source(source, "G_ema")
  generator = _module(sg2.Generator, init_kwargs, dtype, "Generator")
  return generator, generator_variables(generator, state)


def discriminator_from_torch(source, *, dtype=jnp.float32):
  """(Discriminator module, variables) from an NVlabs `.pkl` path (its 'D') or `(state_dict, init_kwargs)`."""
  state, init_kwargs = _split_source(source, "D")
  discriminator = _module(sg2.Discriminator, init_kwargs, dtype, "Discriminator")
  return discriminator, discriminator_variables(discriminator, state)
