"""Filling a Flax variable tree from a PyTorch state dict, with every problem reported at once, and back.

A family converter (ResNet, DenseNet, Inception, FaceNet, StyleGAN2) only says which PyTorch key feeds each
Flax leaf; `variables_from_torch` does the layout changes, the shape checks and the bookkeeping of missing and
unexpected keys, so that all converters fail the same way: one `ConversionError` listing everything.
`state_dict_from_variables` is its inverse, for exporting jaxmia models to PyTorch.

Layouts: conv kernels OIHW -> HWIO, dense kernels [out, in] -> [in, out]; everything else is copied as is.
"""
from typing import Callable, Mapping

import jax
import numpy as np

# Buffers PyTorch keeps that have no meaning for inference in Flax.
NUM_BATCHES_TRACKED = "num_batches_tracked"  # BatchNorm's count of training batches
IGNORED_SUFFIXES = (NUM_BATCHES_TRACKED,)


class ConversionError(ValueError):
  """A state dict does not fit the Flax model it is converted into."""


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """Removes `prefix` from every key that has it (others are kept unchanged)."""
  return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def torch_layout_to_flax(name: str, value: np.ndarray, target_ndim: int) -> np.ndarray:
  """Converts one PyTorch tensor to the layout of the Flax leaf called `name`."""
  if name == "kernel" and value.ndim == 4 and target_ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if name == "kernel" and value.ndim == 2 and target_ndim == 2:
    return value.T  # [out, in] -> [in, out]
  return value


def flax_layout_to_torch(name: str, value: np.ndarray) -> np.ndarray:
  """The inverse of `torch_layout_to_flax`: conv kernels HWIO -> OIHW, dense kernels [in, out] -> [out, in]."""
  if name == "kernel" and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  if name == "kernel" and value.ndim == 2:
    return value.T  # [in, out] -> [out, in]
  return value


def state_dict_from_variables(variables, torch_key: Callable[[tuple[str, ...]], str | None]
                              ) -> dict[str, np.ndarray]:
  """The PyTorch state dict of Flax `variables`: the inverse of `variables_from_torch` with the same `torch_key`.

  Leaves whose key is None (no PyTorch counterpart) are left out. Every BatchNorm (a key ending in
  `running_mean`) also gets its `num_batches_tracked` buffer, 0 (jaxmia does not count batches; PyTorch uses it
  only when BatchNorm's momentum is None), so the keys are those of the PyTorch module's `state_dict()`.
  Values are C-contiguous numpy arrays of the variables' dtypes.
  """
  state = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    names = _path_names(path)
    key = torch_key(names)
    if key is None:
      continue
    if key in state:
      raise ValueError(f"two Flax leaves map to the PyTorch key {key!r} (the second is {'/'.join(names)})")
    state[key] = np.array(flax_layout_to_torch(names[-1], np.asarray(leaf)), order="C")
    if key.endswith(".running_mean"):
      state[key[:-len("running_mean")] + NUM_BATCHES_TRACKED] = np.array(0, np.int64)
  return state


def _path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def variables_from_torch(template, state: Mapping[str, np.ndarray],
                         torch_key: Callable[[tuple[str, ...]], str | None], *,
                         what: str, ignore: Callable[[str], bool] = lambda k: False) -> dict:
  """Builds Flax variables shaped like `template` from a PyTorch `state` dict.

  Args:
    template: pytree of arrays or `jax.ShapeDtypeStruct` (e.g. `jax.eval_shape(module.init, ...)`), with the
      collections at the top (`{'params': ..., 'batch_stats': ...}`).
    state: PyTorch names -> numpy arrays (PyTorch layouts).
    torch_key: maps a full Flax path such as `('params', 'layer1_0', 'conv1', 'kernel')` to the PyTorch key
      that feeds it (`'layer1.0.conv1.weight'`), or None for a leaf with no PyTorch counterpart (it keeps the
      template's value, which must then be a concrete array).
    what: a description for error messages, e.g. `"resnet18 (530 classes)"`.
    ignore: PyTorch keys for which this returns True are allowed to stay unused.

  Returns the variables as a nested dict of float32/int numpy arrays.
  Raises `ConversionError` naming every missing key, unexpected key and shape mismatch.
  """
  missing, mismatched, used = [], [], set()

  def fill(path, leaf):
    names = _path_names(path)
    key = torch_key(names)
    if key is None:
      return np.asarray(leaf)
    if key not in state:
      missing.append(f"{key}  (for {'/'.join(names)}, shape {tuple(leaf.shape)})")
      return None
    used.add(key)
    value = torch_layout_to_flax(names[-1], np.asarray(state[key]), len(leaf.shape))
    if tuple(value.shape) != tuple(leaf.shape):
      mismatched.append(f"{key}: file has {tuple(np.asarray(state[key]).shape)}, "
                        f"model needs {tuple(leaf.shape)} (after layout change) for {'/'.join(names)}")
      return None
    return np.array(value, dtype=leaf.dtype, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)

  variables = jax.tree_util.tree_map_with_path(fill, template)
  unexpected = [k for k in state if k not in used and not k.endswith(IGNORED_SUFFIXES) and not ignore(k)]
  if missing or unexpected or mismatched:
    parts = [f"Cannot convert the PyTorch weights into {what}:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", mismatched)):
      if items:
        shown = "\n    ".join(items[:40]) + (f"\n    ... and {len(items) - 40} more" if len(items) > 40 else "")
        parts.append(f"  {len(items)} {title}:\n    {shown}")
    parts.append("Check the architecture name and num_classes match the checkpoint.")
    raise ConversionError("\n".join(parts))
  return variables
