"""PyTorch -> Flax key mapping for the Inception family: torchvision Inception-v3, the pytorch-fid FID
network and facenet-pytorch InceptionResnetV1.

The Flax modules use PyTorch's submodule names, so a key is the Flax path joined with dots plus the PyTorch
name of the leaf. FaceNet's `nn.Sequential` children are Flax modules named `<parent>_<index>`
(`repeat_1_0`, `branch1_0`), which map back to `repeat_1.0` / `branch1.0`.
"""
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia.convert.common import ConversionError, variables_from_torch
from jaxmia.models.inception import FID_RESOLUTION, FIDInceptionV3

# Flax leaf name -> PyTorch tensor name (conv / dense / batch-norm parameters and statistics).
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def _join(path: tuple[str, ...], module_name: Callable[[str], str] = lambda n: n) -> str:
  _, *modules, leaf = path
  return ".".join([module_name(m) for m in modules] + [_LEAF_NAMES[leaf]])


def inception_v3_torch_key(path: tuple[str, ...]) -> str:
  """`('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel')` -> `'Mixed_5b.branch1x1.conv.weight'`."""
  return _join(path)


def fid_inception_torch_key(path: tuple[str, ...]) -> str:
  """Key in the pytorch-fid `pt_inception-2015-12-05-*.pth` file (its names are torchvision's)."""
  return _join(path)


def _sequential_index(name: str) -> str:
  # 'repeat_1_0' -> 'repeat_1.0', 'branch1_2' -> 'branch1.2'; 'conv2d_1a', 'last_bn' stay as they are.
  return re.sub(r"(?<=\d)_(\d+)$", r".\1", name)


def facenet_torch_key(path: tuple[str, ...]) -> str:
  """`('params', 'repeat_1_0', 'branch1_0', 'conv', 'kernel')` -> `'repeat_1.0.branch1.0.conv.weight'`."""
  return _join(path, _sequential_index)


def inception_v3_module_kwargs(state: Mapping[str, np.ndarray], num_classes: int | None) -> dict[str, Any]:
  """Builder kwargs (besides `num_classes`) that make `inception_v3` fit a torchvision/PPA state dict.

  The aux head is sized from `AuxLogits.fc.weight` (1000 in PPA checkpoints, whose `fc` alone was
  replaced); a state dict without `AuxLogits.*` keys gives `aux_logits=False`.
  """
  if "fc.weight" in state and num_classes is not None and state["fc.weight"].shape[0] != num_classes:
    raise ConversionError(
        f"The Inception-v3 checkpoint has a {state['fc.weight'].shape[0]}-way `fc` head but num_classes="
        f"{num_classes} was requested; pass num_classes={state['fc.weight'].shape[0]}.")
  if "AuxLogits.fc.weight" not in state:
    return {"aux_logits": False, "aux_num_classes": None}
  return {"aux_logits": True, "aux_num_classes": int(state["AuxLogits.fc.weight"].shape[0])}


def facenet_module_kwargs(state: Mapping[str, np.ndarray], num_classes: int | None) -> dict[str, Any]:
  """Builder kwargs (besides `num_classes`) for a facenet-pytorch state dict: none, after checking the head.

  The released `vggface2` / `casia-webface` files always carry a `logits` layer (8631 / 10575 classes);
  the caller ignores it for embeddings (`num_classes=None`). A head of another size is an error.
  """
  head = state.get("logits.weight")
  if num_classes is not None and head is not None and head.shape[0] != num_classes:
    raise ConversionError(
        f"The FaceNet checkpoint has a {head.shape[0]}-way `logits` head but num_classes={num_classes} was "
        f"requested; pass num_classes={head.shape[0]} to keep that head, or num_classes=None for L2-normalised "
        "512-d embeddings.")
  return {}


def _load_state(state_or_path) -> Mapping[str, np.ndarray]:
  state = state_or_path
  if isinstance(state_or_path, (str, os.PathLike)):
    from jaxmia.convert import load_torch_file  # noqa: PLC0415 (the reader is only needed for files)
    state = load_torch_file(state_or_path)
  if not isinstance(state, Mapping):
    raise ConversionError(f"Expected a state dict (name -> tensor), got {type(state).__name__}; pass the "
                          "pytorch-fid weight file `pt_inception-2015-12-05-*.pth` or the dict it holds.")
  return state


def fid_inception_from_torch(state_or_path, dtype=jnp.float32):
  """(FIDInceptionV3 module, variables) from pytorch-fid's `pt_inception-2015-12-05-*.pth` or its state dict.

  `num_batches_tracked` entries are optional. Compute pool3 features with
  `module.apply(variables, images01, method='fid_features')` (images in [0, 1], see `fid_features`).
  `dtype` is the compute dtype of the returned module (float32 reproduces pytorch-fid).
  """
  state = _load_state(state_or_path)
  module = FIDInceptionV3(dtype=dtype)
  template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, FID_RESOLUTION, FID_RESOLUTION, 3)))
  variables = variables_from_torch(template, state, fid_inception_torch_key,
                                   what="the pytorch-fid FID Inception network")
  return module, variables
