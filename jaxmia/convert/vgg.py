"""PyTorch <-> Flax key mapping for VGG-16 / VGG-16-BN (`jaxmia.models.vgg`): torchvision's `VGG` and the
low-resolution MIA code's `VGG16` (GMI, KED-MI: torchvision's `vgg16_bn().features` as `feature`, then `bn`
and `fc_layer`).

Flax names are torchvision's with the `nn.Sequential` index after `_` (`features_24`, `classifier_3`); the
low-resolution head's `bn` and `fc_layer` keep their names. The low-resolution code calls the convolutional
stack `feature` instead of `features`: `classifier_state_dict` renames it on the way in, and
`export_state_dict` renames it back for a model with that head, so its state dict loads into their class.
"""
import math
import re
from typing import Any, Mapping

import numpy as np

# Flax leaf name -> PyTorch tensor name.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
_LOWRES_MARKER = "bn.running_mean"  # only the low-resolution head has `bn`
_STACK_KEY = re.compile(r"^features\.(\d+\.)")


def vgg_torch_key(path: tuple[str, ...]) -> str:
  """`('params', 'features_24', 'kernel')` -> `'features.24.weight'`, `('batch_stats', 'bn', 'var')` ->
  `'bn.running_var'`, `('params', 'fc_layer', 'bias')` -> `'fc_layer.bias'`."""
  _, *modules, leaf = path
  return ".".join([re.sub(r"_(\d+)$", r".\1", m) for m in modules] + [_LEAF_NAMES[leaf]])


def vgg_module_kwargs(state: Mapping[str, np.ndarray], num_classes: int | None) -> dict[str, Any]:
  """The head the checkpoint has (`bn` / `fc_layer`: "lowres"; `classifier.0`: "torchvision"); nothing for a
  file with neither (e.g. a bare `features` stack)."""
  del num_classes
  if "bn.weight" in state or "fc_layer.weight" in state:
    return {"head": "lowres"}
  if "classifier.0.weight" in state:
    return {"head": "torchvision"}
  return {}


def vgg_input_size(state: Mapping[str, np.ndarray], module_kwargs: Mapping[str, Any]) -> int:
  """Side of a square input that gives the checkpoint's flattened size: the low-resolution head's `bn` has
  512 * (side / 32)**2 entries (64 for its 2048); the torchvision head takes any size."""
  if module_kwargs.get("head", "lowres") != "lowres" or "bn.weight" not in state:
    return 64
  cells = np.asarray(state["bn.weight"]).size / 512
  side = math.isqrt(int(cells))
  return 32 * side if side * side == cells and side > 0 else 64


def vgg_hints(arch: str, state: Mapping[str, np.ndarray]) -> list[str]:
  """Which of vgg16 / vgg16_bn the checkpoint is, when the other was asked for."""
  has_bn = "features.1.running_mean" in state
  if arch == "vgg16" and has_bn:
    return ["The checkpoint has BatchNorm after its convs ('features.1.running_mean'): use arch vgg16_bn (the "
            "low-resolution MIA code's VGG16 is torchvision's vgg16_bn features)."]
  if arch == "vgg16_bn" and not has_bn and "features.0.weight" in state:
    return ["The checkpoint has no BatchNorm after its convs: use arch vgg16."]
  return []


def rename_lowres_stack(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The low-resolution code's `feature.N.*` keys as torchvision's `features.N.*` (other keys unchanged)."""
  return {re.sub(r"^feature\.(\d+\.)", r"features.\1", k): v for k, v in state.items()}


def export_state_dict(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A model with the low-resolution head keeps that code's `feature.N.*` names in PyTorch."""
  if _LOWRES_MARKER not in state:
    return dict(state)
  return {_STACK_KEY.sub(r"feature.\1", k): v for k, v in state.items()}
