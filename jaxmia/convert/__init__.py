"""Import PyTorch artefacts (torchvision / PPA / facenet-pytorch state dicts, NVlabs pickles) into Flax, and
write classifiers and arrays back as PyTorch files (`classifier_to_torch`, `save_torch_file`).

Nothing here imports PyTorch or executes code from a file: `load_torch_file` is a restricted unpickler.
"""
import importlib

_EXPORTS = {
    "load_torch_file": "jaxmia.convert.torch_reader",
    "save_torch_file": "jaxmia.convert.torch_writer",
    "flatten_tensors": "jaxmia.convert.torch_reader",
    "UnsafePickleError": "jaxmia.convert.torch_reader",
    "TorchFileError": "jaxmia.convert.torch_reader",
    "read_nvlabs_pickle": "jaxmia.convert.torch_reader",
    "NVlabsNetwork": "jaxmia.convert.torch_reader",
    "ConversionError": "jaxmia.convert.common",
    "classifier_from_torch": "jaxmia.convert.classifiers",
    "classifier_to_torch": "jaxmia.convert.classifiers",
    "stylegan2_from_torch": "jaxmia.convert.stylegan2",
    "discriminator_from_torch": "jaxmia.convert.stylegan2",
}
# Saved models (converted and trained) live in `jaxmia.model_store`; the names under which users' scripts
# reached them here stay as aliases.
_MODEL_STORE_ALIASES = {"save_converted": "save_model", "load_converted": "load_model",
                        "load_variables": "load_variables", "read_info": "read_info"}
__all__ = list(_EXPORTS) + list(_MODEL_STORE_ALIASES)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  if name in _MODEL_STORE_ALIASES:
    return getattr(importlib.import_module("jaxmia.model_store"), _MODEL_STORE_ALIASES[name])
  raise AttributeError(f"module 'jaxmia.convert' has no attribute {name!r}")
