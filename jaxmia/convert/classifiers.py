"""Classifier checkpoints from PyTorch (torchvision, PPA, facenet-pytorch) -> Flax variables, and back.

    variables = classifier_from_torch("resnet152", "ppa_resnet152.pth", num_classes=530)
    logits = models.create_classifier("resnet152", 530).apply(variables, images)
    state_dict = classifier_to_torch("resnet152", variables)   # torchvision's keys and layouts

Accepted sources: a state dict (name -> array), a PPA checkpoint (`{'model_state_dict': ..., ...}` whose keys carry
`model.` and, after `torch.compile`, `model._orig_mod.`), a GMI / KED-MI checkpoint (`{'state_dict': ...}` of an
`nn.DataParallel`, keys `module.`), or a path to a `.pt`/`.pth` file (read without PyTorch
and without running code from the file) or an `.npz` of the state dict. Each architecture only says which
PyTorch key feeds each Flax leaf; `jaxmia.convert.common.variables_from_torch` does the rest.
"""
import importlib
import os
import pathlib
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia.convert import vgg
from jaxmia.convert.common import ConversionError, state_dict_from_variables, strip_prefix, variables_from_torch
from jaxmia.models import registry

# Flax leaf name -> PyTorch parameter/buffer name (convs and linears: weight/bias; BatchNorm: weight/bias/running_*).
_TORCH_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                     "var": "running_var"}

# Wrappers whose attribute name PyTorch puts in front of every key: `nn.DataParallel` (the low-resolution MIA
# code saves its targets wrapped), PPA's `Classifier.model`, then `torch.compile`.
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# Containers around the state dict: PPA's checkpoints, the low-resolution MIA code's `.tar` files.
_STATE_DICT_ENTRIES = ("model_state_dict", "state_dict")

# Old torchvision DenseNet files (e.g. the ImageNet `densenet121-a639ec97.pth`) name `norm1` as `norm.1`.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")

# Input used only to trace the module's variable shapes (no computation happens); large enough for every arch.
_TEMPLATE_INPUT_SHAPE = (1, 299, 299, 3)


def torchvision_key(path: tuple[str, ...]) -> str:
  """Flax path of a ResNet/ResNeXt/DenseNet leaf -> PyTorch key.

  `('params', 'layer1_0', 'downsample_1', 'scale')` -> `'layer1.0.downsample.1.weight'`,
  `('batch_stats', 'features_denseblock1_denselayer2', 'norm1', 'mean')`
  -> `'features.denseblock1.denselayer2.norm1.running_mean'`.
  """
  _, *modules, leaf = path
  return ".".join([m.replace("_", ".") for m in modules] + [_TORCH_LEAF_NAMES[leaf]])


class _ArchSpec(NamedTuple):
  module: str  # module holding the key functions
  torch_key: str  # Flax path -> PyTorch key
  module_kwargs: str | None  # optional: (state, num_classes) -> builder kwargs implied by the checkpoint
  heads: tuple[str, ...]  # PyTorch names of the final linear layer (one per head layout)
  input_size: str | None = None  # optional: (state, module_kwargs) -> input side the variables are traced at
  hints: str | None = None  # optional: (arch, state) -> extra hints for a conversion error
  export: str | None = None  # optional: state dict -> state dict, the last step of `classifier_to_torch`


_RESNET = _ArchSpec(__name__, "torchvision_key", None, ("fc",))
_DENSENET = _ArchSpec(__name__, "torchvision_key", None, ("classifier",))
_VGG = _ArchSpec("jaxmia.convert.vgg", "vgg_torch_key", "vgg_module_kwargs", ("fc_layer", "classifier.6"),
                 input_size="vgg_input_size", hints="vgg_hints", export="export_state_dict")
_ARCH_SPECS = {
    "resnet18": _RESNET,
    "resnet34": _RESNET,
    "resnet50": _RESNET,
    "resnet101": _RESNET,
    "resnet152": _RESNET,
    "resnext50_32x4d": _RESNET,
    "resnext101_32x8d": _RESNET,
    "densenet121": _DENSENET,
    "densenet161": _DENSENET,
    "densenet169": _DENSENET,
    "densenet201": _DENSENET,
    "vgg16": _VGG,
    "vgg16_bn": _VGG,
    "inception_v3": _ArchSpec("jaxmia.convert.inception", "inception_v3_torch_key", "inception_v3_module_kwargs",
                              ("fc",)),
    "inception_resnet_v1": _ArchSpec("jaxmia.convert.inception", "facenet_torch_key", "facenet_module_kwargs",
                                     ("logits",)),
}


def _is_tensor(value) -> bool:
  return hasattr(value, "shape") and hasattr(value, "dtype")


def classifier_state_dict(source) -> dict[str, np.ndarray]:
  """The flat PyTorch state dict in `source` (Mapping or path): PPA / GMI wrapping and key prefixes removed, old
  DenseNet names (`norm.1`) renamed as torchvision does when it loads them, and the low-resolution MIA code's
  VGG stack (`feature.N`) named as torchvision's (`features.N`)."""
  if isinstance(source, (str, os.PathLike)):
    path = pathlib.Path(source)
    if not path.is_file():
      raise FileNotFoundError(f"Classifier checkpoint {str(path)!r} does not exist.")
    if path.suffix == ".npz":
      with np.load(path, allow_pickle=False) as archive:
        obj = dict(archive)
    else:
      from jaxmia.convert.torch_reader import load_torch_file  # noqa: PLC0415 (keeps the reader optional here)
      obj = load_torch_file(path)
  else:
    obj = source
  if not isinstance(obj, Mapping):
    raise ConversionError(f"Expected a state dict (name -> tensor) or a PPA checkpoint, got {type(obj).__name__}.")
  for entry in _STATE_DICT_ENTRIES:
    if isinstance(obj.get(entry), Mapping):
      obj = obj[entry]
      break
  not_tensors = [k for k, v in obj.items() if not _is_tensor(v)]
  if not_tensors:
    raise ConversionError(
        f"Entries {not_tensors[:10]} are not tensors. Pass a state dict (name -> tensor) or a PPA checkpoint "
        "(a dict with 'model_state_dict'); for other containers, pick the state dict out yourself.")
  state = {str(k): np.asarray(v) for k, v in obj.items()}
  for prefix in _WRAPPER_PREFIXES:
    state = strip_prefix(state, prefix)
  state = vgg.rename_lowres_stack(state)
  return {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}


def _spec(arch: str) -> _ArchSpec:
  if arch not in _ARCH_SPECS:
    raise ValueError(f"Unknown architecture {arch!r}; choose one of: {', '.join(_ARCH_SPECS)}.")
  return _ARCH_SPECS[arch]


def classifier_module_kwargs(arch: str, source, num_classes: int | None, **module_kwargs) -> dict[str, Any]:
  """Builder kwargs for `create_classifier(arch, num_classes, **kwargs)` matching the checkpoint `source`.

  Architectures whose checkpoints vary in ways `num_classes` does not capture (e.g. PPA's Inception-v3 keeps a
  1000-way auxiliary head) infer them from the state; explicit `module_kwargs` win.
  """
  spec = _spec(arch)
  state = classifier_state_dict(source)
  infer = getattr(importlib.import_module(spec.module), spec.module_kwargs) if spec.module_kwargs else None
  inferred = infer(state, num_classes) if infer else {}
  return {**inferred, **module_kwargs}


def _hints(arch: str, state: Mapping[str, np.ndarray], num_classes: int | None, module_kwargs) -> list[str]:
  """What to change in the call when a well-known mismatch explains the conversion error."""
  spec = _spec(arch)
  hints = []
  for name in spec.heads:
    head = state.get(f"{name}.weight")
    if num_classes is not None and head is not None and head.ndim == 2 and head.shape[0] != num_classes:
      hints.append(f"The checkpoint's head '{name}.weight' has {head.shape[0]} outputs but "
                   f"num_classes={num_classes}: pass num_classes={head.shape[0]}.")
  stem = state.get("conv1.weight")
  base = module_kwargs.get("base_channels", 64)
  if spec is _RESNET and stem is not None and stem.ndim == 4 and stem.shape[0] != base:
    hints.append(f"The checkpoint's stem 'conv1.weight' has {stem.shape[0]} output channels but the model has "
                 f"{base}: pass base_channels={stem.shape[0]} (also to create_classifier).")
  if spec.hints:
    hints += getattr(importlib.import_module(spec.module), spec.hints)(arch, state)
  return hints


def classifier_from_torch(arch: str, state_dict_or_path, num_classes: int | None, **module_kwargs) -> dict:
  """Flax variables `{'params', 'batch_stats'}` (numpy) for `create_classifier(arch, num_classes, **kwargs)`.

  Args:
    arch: a name from `jaxmia.models.ARCHITECTURES`.
    state_dict_or_path: PyTorch state dict (Mapping of arrays), PPA checkpoint dict, or path to .pt/.pth/.npz.
    num_classes: outputs of the head; None converts the backbone only (the checkpoint's head is ignored).
    **module_kwargs: builder kwargs of a non-default model (e.g. `base_channels=16` for a slim ResNet); kwargs
      implied by the checkpoint itself come from `classifier_module_kwargs`.

  Raises `ConversionError` listing every missing, unexpected and mis-shaped key, with a hint when the class
  count or the ResNet width is what differs.
  """
  spec = _spec(arch)
  state = classifier_state_dict(state_dict_or_path)
  module_kwargs = classifier_module_kwargs(arch, state, num_classes, **module_kwargs)
  module = registry.create_classifier(arch, num_classes, **module_kwargs)
  arch_module = importlib.import_module(spec.module)
  shape = _TEMPLATE_INPUT_SHAPE
  if spec.input_size:
    side = getattr(arch_module, spec.input_size)(state, module_kwargs)
    shape = (1, side, side, 3)
  template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape, jnp.float32))
  torch_key = getattr(arch_module, spec.torch_key)
  head_prefixes = tuple(name + "." for name in spec.heads)
  what = f"{arch} ({'no head' if num_classes is None else f'{num_classes} classes'}"
  what += "".join(f", {k}={v!r}" for k, v in module_kwargs.items()) + ")"
  try:
    return variables_from_torch(template, state, torch_key, what=what,
                                ignore=lambda k: num_classes is None and k.startswith(head_prefixes))
  except ConversionError as error:
    hints = _hints(arch, state, num_classes, module_kwargs)
    if not hints:
      raise
    raise ConversionError("\n".join([str(error), *hints])) from None


def classifier_to_torch(arch: str, variables) -> dict[str, np.ndarray]:
  """The PyTorch state dict of a classifier's Flax `variables` (`{'params', 'batch_stats'}`): the inverse of
  `classifier_from_torch`, with torchvision's keys and layouts (facenet-pytorch's for `inception_resnet_v1`)
  and BatchNorm's `num_batches_tracked` buffers (0), i.e. the keys of the PyTorch module's `state_dict()`.
  A VGG with the low-resolution head gets the keys of the GMI / KED-MI `VGG16` class (`feature.N`, `bn`,
  `fc_layer`); that model takes [0, 1] images, as their code feeds it.

  `torchvision.models.<arch>(num_classes=N).load_state_dict(state_dict)` then takes it, for models of the
  default widths (a slim model, e.g. `base_channels=16`, needs a PyTorch module of the same widths). The model
  expects jaxmia's inputs: RGB images scaled to [-1, 1] (mean = std = 0.5, as PPA's), not ImageNet-normalised.
  """
  spec = _spec(arch)
  arch_module = importlib.import_module(spec.module)
  state = state_dict_from_variables(variables, getattr(arch_module, spec.torch_key))
  return getattr(arch_module, spec.export)(state) if spec.export else state
