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
    "densenet121": ("jaxmia.models.densenet", "densenet121"),
    "inception_v3": ("jaxmia.models.inception", "inception_v3"),
    "inception_resnet_v1": ("jaxmia.models.facenet", "inception_resnet_v1"),
}
ARCHITECTURES = tuple(_BUILDERS)


def create_classifier(arch: str, num_classes: int | None, *, dtype=jnp.float32, **kwargs):
  """Builds the Flax module for `arch` with a `num_classes`-way head.

  `num_classes=None` is only meaningful for `inception_resnet_v1` (FaceNet), where it yields L2-normalised
  512-d embeddings instead of logits.
  """
  if arch not in _BUILDERS:
    raise ValueError(f"Unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}.")
  module_name, fn_name = _BUILDERS[arch]
  builder = getattr(importlib.import_module(module_name), fn_name)
  return builder(num_classes=num_classes, dtype=dtype, **kwargs)
