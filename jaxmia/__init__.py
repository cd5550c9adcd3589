"""jaxmia: model inversion attack research in JAX/Flax.

Submodules: `models`, `convert`, `losses`, `data`, `parallel`, `attack`, `metrics`, `defenses`.
They are imported lazily so that `import jaxmia` stays cheap (TFDS loads only with the data code that reads
a dataset; TensorFlow is not a dependency).
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("models", "convert", "losses", "data", "parallel", "attack", "metrics", "defenses")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxmia.{name}")
  raise AttributeError(f"module 'jaxmia' has no attribute {name!r}")
