"""`create_classifier(arch, num_classes)`: one entry point for every classifier architecture.

Every classifier module follows the same calling convention::

    logits = module.apply(variables, images)                                  # images [B, H, W, 3] in [-1, 1]
    logits, features = module.apply(variables, images, return_features=True)  # features [B, D], pooled penultimate
    logits, updates = module.apply(variables, images, train=True, mutable=["batch_stats"])

`dtype` is the compute dtype (parameters stay float32).
"""
import importlib

import jax.numpy as jnp

# arch -> (module, builder function). Builders take (num_classes, dtype, **kwargs) and return a flax Module.
_BUILDERS = {
    "resnet18": ("jaxmia.models.resnet", "resnet18"),
    "resnet34": ("jaxmia.models.resnet", "resnet34"),
    "resnet50": ("jaxmia.models.resnet", "resnet50"),
    "resnet101": ("jaxmia.models.resnet", "resnet101"),
    "resnet152": ("jaxmia.models.resnet", "resnet152"),
    "resnext50_32x4d": ("jaxmia.models.resnet", "resnext50_32x4d"),
    "resnext101_32x8d": ("jaxmia.models.resnet", "resnext101_32x8d"),
    "densenet121": ("jaxmia.models.densenet", "densenet121"),
    "densenet161": ("jaxmia.models.densenet", "densenet161"),
    "densenet169": ("jaxmia.models.densenet", "densenet169"),
    "densenet201": ("jaxmia.models.densenet", "densenet201"),
    "vgg16": ("jaxmia.models.vgg", "vgg16"),
    "vgg16_bn": ("jaxmia.models.vgg", "vgg16_bn"),
    "inception_v3": ("jaxmia.models.inception", "inception_v3"),
    "inception_resnet_v1": ("jaxmia.models.facenet", "inception_resnet_v1"),
}
ARCHITECTURES = tuple(_BUILDERS)


def create_classifier(arch: str, num_classes: int | None, *, dtype=jnp.float32, **kwargs):
  """Builds the Flax module for `arch` with a `num_classes`-way head.

  `num_classes=None` builds no head: the module returns the pooled penultimate features (for
  `inception_resnet_v1`, FaceNet, the L2-normalised 512-d embedding).
  """
  if arch not in _BUILDERS:
    raise ValueError(f"Unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}.")
  module_name, fn_name = _BUILDERS[arch]
  builder = getattr(importlib.import_module(module_name), fn_name)
  return builder(num_classes=num_classes, dtype=dtype, **kwargs)
