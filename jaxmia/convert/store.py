"""Former home of the saved-model store, now `jaxmia.model_store` (it holds trained models as well as converted
ones): `save_converted` is `model_store.save_model`, `load_converted` is `model_store.load_model`.

Kept for the modules that still import it by this name (`jaxmia.chain`, `tests/test_hardening.py`); import
`jaxmia.model_store` instead.
"""
from jaxmia.model_store import (BUILDERS, INFO_FILE, KINDS, PARTIAL_SUFFIX, REPLACED_SUFFIX, VARIABLES_DIR,
                                load_variables, read_info, started_by_jaxmia)
from jaxmia.model_store import load_model as load_converted
from jaxmia.model_store import save_model as save_converted

__all__ = ["BUILDERS", "INFO_FILE", "KINDS", "PARTIAL_SUFFIX", "REPLACED_SUFFIX", "VARIABLES_DIR", "load_converted",
           "load_variables", "read_info", "save_converted", "started_by_jaxmia"]
