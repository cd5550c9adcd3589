"""Import PyTorch artefacts (torchvision / PPA / facenet-pytorch state dicts, NVlabs pickles) into Flax.

Nothing here imports PyTorch or executes code from a file: `load_torch_file` is a restricted unpickler.
"""
import importlib

_EXPORTS = {
    "load_torch_file": "jaxmia.convert.torch_reader",
    "flatten_tensors": "jaxmia.convert.torch_reader",
    "UnsafePickleError": "jaxmia.convert.torch_reader",
    "TorchFileError": "jaxmia.convert.torch_reader",
    "read_nvlabs_pickle": "jaxmia.convert.torch_reader",
    "NVlabsNetwork": "jaxmia.convert.torch_reader",
    "ConversionError": "jaxmia.convert.common",
    "classifier_from_torch": "jaxmia.convert.classifiers",
    "stylegan2_from_torch": "jaxmia.convert.stylegan2",
    "discriminator_from_torch": "jaxmia.convert.stylegan2",
    # Saved models live in `jaxmia.model_store` (`save_model`, `load_model`); these names stay for the modules
    # that still call them here (jaxmia.train, jaxmia.gan, jaxmia.attack.run, jaxmia.experiment,
    # scripts/prior_coverage.py, tests/test_hardening.py).
    "save_converted": "jaxmia.convert.store",
    "load_converted": "jaxmia.convert.store",
    "load_variables": "jaxmia.convert.store",
    "read_info": "jaxmia.convert.store",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'jaxmia.convert' has no attribute {name!r}")
