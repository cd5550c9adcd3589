"""Reading PyTorch files without PyTorch and without running any code stored in them.

Three layouts are understood:

* `torch.save` zip files (the default since PyTorch 1.6): `<root>/data.pkl` plus one record per storage in
  `<root>/data/<key>`. `<root>` is usually the file's stem, not always `archive`.
* legacy `torch.save` files (`_use_new_zipfile_serialization=False`): five pickles in a row (magic number,
  protocol, system info, the object, the storage keys), then each storage as an int64 element count followed
  by its raw bytes.
* plain pickles (`.pkl`), where storages are embedded as `torch.storage._load_from_bytes(<legacy file bytes>)`,
  e.g. NVlabs StyleGAN2-ADA network pickles (see `read_nvlabs_pickle`).

Pickles are read by a `pickle.Unpickler` whose `find_class` only hands out a fixed table of data-only
constructors; every other global is refused with `UnsafePickleError` before anything is imported.
Tensors come back as contiguous numpy arrays (bfloat16 widened exactly to float32), `OrderedDict`s as
plain dicts, everything else as plain Python values.
"""
import dataclasses
import io
import os
import pickle
import struct
import types
import zipfile
from typing import Any, Callable

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"

# torch.<Name>Storage -> numpy dtype of one element ('bfloat16' is widened to float32 when read).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle asked for a global outside the reader's whitelist (it would import or run code)."""

  def __init__(self, global_name: str, source: str, hint: str = ""):
    self.global_name = global_name
    self.source = source
    super().__init__(
        f"{source}: refused to load `{global_name}`. jaxmia reads only tensors and plain Python containers "
        f"from PyTorch files and never imports or runs code named in a file. "
        + (hint or "If you trust the file, open it with PyTorch and re-save plain tensors "
           "(`torch.save(model.state_dict(), path)`)."))


class TorchFileError(ValueError):
  """A file is not a readable PyTorch file (truncated, corrupt or of an unknown layout)."""


# ----------------------------------------------------------------------------------------------------------
# Objects the unpickler builds; they hold data only and are turned into numpy / plain values by `_to_plain`.


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str

  @property
  def dtype(self):
    return _STORAGE_DTYPES[self.name]


class _Storage:
  """One flat storage; its bytes are read on first use (zip records) or filled in later (legacy files)."""

  def __init__(self, storage_type: _StorageType, numel: int, read: Callable[[], bytes] | None = None,
               big_endian: bool = False):
    self.type, self.numel, self._read, self._big_endian = storage_type, int(numel), read, big_endian
    self._array = None

  @property
  def itemsize(self) -> int:
    return 2 if self.type.dtype == "bfloat16" else np.dtype(self.type.dtype).itemsize

  def set_bytes(self, raw: bytes):
    self._read = lambda: raw

  def array(self) -> np.ndarray:
    """The storage as a read-only 1-D numpy array (bfloat16 as float32)."""
    if self._array is None:
      if self._read is None:
        raise TorchFileError("a storage is referenced but its data is missing from the file")
      raw = self._read()
      nbytes = self.numel * self.itemsize
      if len(raw) < nbytes:
        raise TorchFileError(f"a {self.type.name} of {self.numel} elements has only {len(raw)} bytes of data")
      order = ">" if self._big_endian else "<"
      if self.type.dtype == "bfloat16":
        bits = np.frombuffer(raw, np.dtype(order + "u2"), count=self.numel)
        array = (bits.astype(np.uint32) << 16).view(np.float32)  # bfloat16 = upper half of a float32
      else:
        dtype = np.dtype(self.type.dtype).newbyteorder(order)
        array = np.frombuffer(raw, dtype, count=self.numel).astype(np.dtype(self.type.dtype), copy=False)
      self._array = array
    return self._array


class _StorageView:
  """A slice of another storage (legacy files written by PyTorch < 0.4 may contain them)."""

  def __init__(self, root: _Storage, offset: int, numel: int):
    self.root, self.offset, self.numel = root, int(offset), int(numel)

  def array(self) -> np.ndarray:
    array = self.root.array()
    if self.offset < 0 or self.offset + self.numel > array.size:
      raise TorchFileError("a storage view reaches past the end of its storage")
    return array[self.offset:self.offset + self.numel]


@dataclasses.dataclass(eq=False)
class _TensorRef:
  storage: Any
  offset: int
  shape: tuple
  stride: tuple

  def materialize(self) -> np.ndarray:
    if not isinstance(self.storage, (_Storage, _StorageView)):
      raise TorchFileError(f"a tensor is built from {type(self.storage).__name__}, not from a storage")
    flat = self.storage.array()
    shape = tuple(int(d) for d in self.shape)
    stride = tuple(int(s) for s in self.stride)
    offset = int(self.offset)
    if len(shape) != len(stride) or min(shape + stride + (offset,)) < 0:
      raise TorchFileError(f"invalid tensor geometry: shape {shape}, stride {stride}, offset {offset}")
    if 0 in shape:
      return np.zeros(shape, flat.dtype)
    last = offset + sum((d - 1) * s for d, s in zip(shape, stride))
    if last >= flat.size:
      raise TorchFileError(f"a tensor of shape {shape} (stride {stride}, offset {offset}) reaches element "
                           f"{last} of a storage with {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape, [s * flat.itemsize for s in stride],
                                           writeable=False)
    return np.array(view, order="C")


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
  del requires_grad, backward_hooks, metadata  # autograd bookkeeping, meaningless for numpy
  return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


class _OrderedDict(dict):
  """`collections.OrderedDict`; the pickled instance state (`state_dict()._metadata`) is dropped."""

  def __setstate__(self, state):
    del state


class _EasyDict(_OrderedDict):
  """`dnnlib.util.EasyDict` (a dict with attribute access, used in NVlabs `init_kwargs`)."""


class _DtypeSpec:
  """A pickled `numpy.dtype`. Its pickled state is never handed to numpy; only the byte order is kept."""

  def __init__(self, spec, align=False, copy=False):
    del align, copy
    if not isinstance(spec, str):
      raise TorchFileError(f"unsupported numpy dtype spec {spec!r}")
    self.dtype = np.dtype(spec)
    if self.dtype.hasobject or self.dtype.kind not in "biufcSU":
      raise TorchFileError(f"numpy arrays of dtype {self.dtype} are not read (only numeric and string data)")

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">") and self.dtype.itemsize > 1:
      self.dtype = self.dtype.newbyteorder(state[1])


def _as_bytes(data) -> bytes:
  if isinstance(data, str):  # Python 2 pickles
    return data.encode("latin1")
  if isinstance(data, (bytes, bytearray)):
    return bytes(data)
  raise TorchFileError(f"expected raw bytes, got {type(data).__name__}")


def _numpy_scalar(spec, data=None):
  if not isinstance(spec, _DtypeSpec) or data is None:
    raise TorchFileError("malformed numpy scalar")
  return np.frombuffer(_as_bytes(data), spec.dtype, count=1)[0]


class _NdarrayBuilder:
  """A pickled `numpy.ndarray`, rebuilt from its (shape, dtype, fortran order, raw bytes) state."""

  def __init__(self):
    self.array = None

  def __setstate__(self, state):
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DtypeSpec)):
      raise TorchFileError("malformed numpy array state")
    _, shape, spec, fortran, raw = state
    raw = _as_bytes(raw)
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * spec.dtype.itemsize:
      raise TorchFileError(f"numpy array of shape {tuple(shape)} has {len(raw)} bytes of data")
    self.array = np.frombuffer(raw, spec.dtype, count=count).reshape(shape, order="F" if fortran else "C").copy()


_NDARRAY_TYPE = object()  # stands for the `numpy.ndarray` class, which is only ever an argument


def _numpy_reconstruct(subtype, shape, typecode):
  del shape, typecode
  if subtype is not _NDARRAY_TYPE:
    raise TorchFileError("only plain numpy.ndarray objects are read")
  return _NdarrayBuilder()


def _numpy_frombuffer(buffer, spec, shape, order):
  if not isinstance(spec, _DtypeSpec):
    raise TorchFileError("malformed numpy array")
  return np.frombuffer(_as_bytes(buffer), spec.dtype).reshape(shape, order=order).copy()


def _latin1_encode(text, encoding="latin1"):
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise TorchFileError("only latin-1 encoded byte strings are read")
  return text.encode("latin1")


def _base_globals() -> dict[tuple[str, str], Any]:
  table = {
      ("collections", "OrderedDict"): _OrderedDict,
      ("dnnlib.util", "EasyDict"): _EasyDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("torch", "Size"): tuple,
      ("builtins", "set"): set,
      ("builtins", "frozenset"): frozenset,
      ("builtins", "bytes"): bytes,
      ("builtins", "bytearray"): bytearray,
      ("builtins", "complex"): complex,
      ("_codecs", "encode"): _latin1_encode,
      ("numpy", "dtype"): _DtypeSpec,
      ("numpy", "ndarray"): _NDARRAY_TYPE,
  }
  table.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
  for core in ("numpy.core", "numpy._core"):  # NumPy 1 and NumPy 2 module names
    table[(f"{core}.multiarray", "scalar")] = _numpy_scalar
    table[(f"{core}.multiarray", "_reconstruct")] = _numpy_reconstruct
    table[(f"{core}.numeric", "_frombuffer")] = _numpy_frombuffer
  return table


_HINTS = {
    "torch_utils.persistence": "This is an NVlabs StyleGAN2-ADA network pickle: read it with "
                               "`jaxmia.convert.torch_reader.read_nvlabs_pickle` or convert it with "
                               "`python -m jaxmia.convert stylegan2 --input FILE --output DIR`.",
    "dnnlib.tflib": "This is a TensorFlow StyleGAN pickle: convert it to the PyTorch format first with "
                    "`legacy.py` of NVlabs stylegan2-ada-pytorch, then convert that file.",
    "torch": "jaxmia reads dense CPU tensors of dtype float16/32/64, bfloat16, int8/16/32/64, uint8 and bool "
             "(nn.Parameters included); convert other tensors (e.g. `.float()`, `.to_dense()`) before saving.",
}


class _ReaderFunction:
  """A whitelisted function as the unpickler hands it out: callable, but a pickle cannot set its attributes
  (a BUILD on a bare function would otherwise rewrite e.g. its `__defaults__` for later loads)."""
  __slots__ = ("_function",)

  def __init__(self, function):
    object.__setattr__(self, "_function", function)

  def __setattr__(self, name, value):
    raise TorchFileError("the pickle tries to modify a function of the reader")

  def __call__(self, *args, **kwargs):
    return self._function(*args, **kwargs)


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves globals only through `safe_globals` and storages through `storage_for`."""

  def __init__(self, file, source: str, safe_globals, storage_for=None):
    super().__init__(file, encoding="latin1")
    self._source, self._globals, self._storage_for = source, safe_globals, storage_for

  def find_class(self, module, name):
    if module == "__builtin__":  # Python 2 name, written by protocol < 3 pickles
      module = "builtins"
    target = self._globals.get((module, name))
    if target is None:
      hint = next((h for m, h in _HINTS.items() if module == m or module.startswith(m + ".")), "")
      raise UnsafePickleError(f"{module}.{name}", self._source, hint)
    return _ReaderFunction(target) if isinstance(target, types.FunctionType) else target

  def persistent_load(self, pid):
    if self._storage_for is None:
      raise TorchFileError(f"{self._source}: unexpected persistent reference {pid!r} in a plain pickle")
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise TorchFileError(f"{self._source}: unsupported persistent reference {pid!r}")
    return self._storage_for(pid)


# ----------------------------------------------------------------------------------------------------------
# The three file layouts.


def _load_zip(data: io.BufferedIOBase, source: str, safe_globals):
  with zipfile.ZipFile(data) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise TorchFileError(f"{source}: a zip archive without a single <root>/data.pkl, so not a torch.save "
                           "file")
    root = pickles[0][:-len("/data.pkl")]
    big_endian = (f"{root}/byteorder" in names and archive.read(f"{root}/byteorder").strip() == b"big")
    storages = {}

    def storage_for(pid):
      _, storage_type, key, _, numel = pid[:5]
      if key not in storages:
        record = f"{root}/data/{key}"
        if record not in names:
          raise TorchFileError(f"{source}: storage record {record} is missing")
        storages[key] = _Storage(storage_type, numel, lambda: archive.read(record), big_endian)
      return storages[key]

    with archive.open(pickles[0]) as f:
      obj = _RestrictedUnpickler(f, source, safe_globals, storage_for).load()
    for storage in storages.values():  # read while the archive is open
      storage.array()
    return obj


def _load_pickles(data: io.BufferedIOBase, source: str, safe_globals):
  """A legacy torch.save file, or a plain pickle if the first pickle is not the legacy magic number."""
  first = _RestrictedUnpickler(data, source, safe_globals).load()
  if not (isinstance(first, int) and first == _LEGACY_MAGIC):
    if data.read(1):
      raise TorchFileError(f"{source}: trailing data after the pickle; not a PyTorch file")
    return first
  protocol = _RestrictedUnpickler(data, source, safe_globals).load()
  if protocol != _LEGACY_PROTOCOL:
    raise TorchFileError(f"{source}: legacy torch file of protocol {protocol!r}; only {_LEGACY_PROTOCOL} "
                         "(PyTorch >= 0.4) is supported. Re-save it with a recent PyTorch.")
  sys_info = _RestrictedUnpickler(data, source, safe_globals).load()
  big_endian = isinstance(sys_info, dict) and not sys_info.get("little_endian", True)
  storages = {}

  def storage_for(pid):
    _, storage_type, key, _, numel = pid[:5]
    view = pid[5] if len(pid) > 5 else None
    if key not in storages:
      storages[key] = _Storage(storage_type, numel, big_endian=big_endian)
    if view is None:
      return storages[key]
    _, view_offset, view_numel = view
    return _StorageView(storages[key], view_offset, view_numel)

  obj = _RestrictedUnpickler(data, source, safe_globals, storage_for).load()
  keys = _RestrictedUnpickler(data, source, safe_globals).load()
  count_format = ">q" if big_endian else "<q"
  for key in keys:
    if key not in storages:
      raise TorchFileError(f"{source}: storage {key!r} is listed but never used")
    storage = storages[key]
    header = data.read(8)
    if len(header) != 8:
      raise TorchFileError(f"{source}: file ends before the data of storage {key!r}")
    (numel,) = struct.unpack(count_format, header)
    raw = data.read(numel * storage.itemsize)
    if len(raw) != numel * storage.itemsize:
      raise TorchFileError(f"{source}: file ends inside the data of storage {key!r} "
                           f"({len(raw)} of {numel * storage.itemsize} bytes)")
    storage.set_bytes(raw)
  return obj


def _load(path_or_bytes, safe_globals, plain=True, name="<bytes>"):
  """Reads a file with the given whitelist; `plain=False` keeps storages as `_Storage` objects."""
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    source, data = name, io.BytesIO(bytes(path_or_bytes))
  else:
    source = os.fspath(path_or_bytes)
    if not os.path.isfile(source):
      raise FileNotFoundError(f"{source}: no such file (expected a PyTorch .pt/.pth/.pkl file)")
    data = open(source, "rb")  # pylint: disable=consider-using-with
  # Storages pickled inside plain pickles are complete legacy torch files; read them with the same rules.
  safe_globals = dict(safe_globals)
  safe_globals[("torch.storage", "_load_from_bytes")] = lambda b: _load(
      _as_bytes(b), _base_globals(), plain=False, name=f"{source} (embedded storage)")
  try:
    with data:
      if data.read(4) == _ZIP_SIGNATURE:
        data.seek(0)
        obj = _load_zip(data, source, safe_globals)
      else:
        data.seek(0)
        obj = _load_pickles(data, source, safe_globals)
      return _to_plain(obj, {}) if plain else obj
  except (UnsafePickleError, TorchFileError):
    raise
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, ValueError, TypeError,
          KeyError, IndexError, AttributeError, UnicodeDecodeError, OverflowError) as e:
    raise TorchFileError(f"{source}: not a readable PyTorch file ({type(e).__name__}: {e}). It may be "
                         "truncated or corrupt; download or save it again.") from e


def _to_plain(obj, memo: dict):
  """Turns the unpickler's objects into numpy arrays and plain containers (shared objects stay shared)."""
  key = id(obj)
  if key in memo:
    return memo[key]
  if isinstance(obj, _TensorRef):
    out = obj.materialize()
  elif isinstance(obj, (_Storage, _StorageView)):
    out = np.array(obj.array())
  elif isinstance(obj, _NdarrayBuilder):
    if obj.array is None:
      raise TorchFileError("a numpy array without data")
    out = obj.array
  elif isinstance(obj, _DtypeSpec):
    out = obj.dtype
  elif isinstance(obj, _PersistentObject):
    out = _network(obj, memo)
  elif isinstance(obj, dict):
    out = memo[key] = {}
    for k, v in obj.items():
      out[_to_plain(k, memo)] = _to_plain(v, memo)
  elif isinstance(obj, list):
    out = memo[key] = []
    out.extend(_to_plain(v, memo) for v in obj)
  elif isinstance(obj, tuple):
    out = tuple(_to_plain(v, memo) for v in obj)
  elif isinstance(obj, (set, frozenset)):
    out = type(obj)(_to_plain(v, memo) for v in obj)
  elif obj is _NDARRAY_TYPE or isinstance(obj, _StorageType):
    raise TorchFileError("a bare class reference where data was expected")
  else:
    out = obj
  memo[key] = out
  return out


def load_torch_file(path_or_bytes) -> Any:
  """Reads a `.pt` / `.pth` (zip or legacy `torch.save`) or plain `.pkl` file without PyTorch.

  Args:
    path_or_bytes: a file path, or the file's content as bytes.

  Returns the saved object with tensors as contiguous numpy arrays (bfloat16 as float32, exactly), dicts and
  OrderedDicts as dicts (order kept), lists, tuples and Python scalars as they were.

  Raises:
    UnsafePickleError: the file names a global outside the whitelist (it would run code); nothing is run.
    TorchFileError: the file is truncated, corrupt or not a PyTorch file.
    FileNotFoundError: there is no such file.
  """
  return _load(path_or_bytes, _base_globals())


def flatten_tensors(obj, prefix: str = "") -> dict[str, np.ndarray]:
  """Every array inside nested dicts / lists / tuples, keyed by its dotted path (`'state.3.exp_avg'`).

  A top-level array is keyed by `prefix`. `NVlabsNetwork`s contribute their `state_dict`.
  """
  out = {}

  def walk(value, path):
    if isinstance(value, np.ndarray):
      out[path] = value
    elif isinstance(value, NVlabsNetwork):
      walk(value.state_dict, path)
    elif isinstance(value, dict):
      for k, v in value.items():
        walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
      for i, v in enumerate(value):
        walk(v, f"{path}.{i}" if path else str(i))

  walk(obj, prefix)
  return out


# ----------------------------------------------------------------------------------------------------------
# NVlabs network pickles (stylegan2-ada-pytorch `torch_utils.persistence`).
#
# A persistent module is pickled as `_reconstruct_persistent_obj(meta)`, where `meta` carries the source code
# of the module that defined the class, the class name and the instance `__dict__` (`_parameters`, `_buffers`,
# `_modules`, `_init_kwargs`, ...). Only the class name and that state are kept; the source is never compiled.


@dataclasses.dataclass(frozen=True)
class NVlabsNetwork:
  """A network read from an NVlabs pickle.

  Attributes:
    class_name: e.g. `'Generator'`, `'Discriminator'`.
    init_kwargs: the constructor's keyword arguments (plain dicts).
    state_dict: parameters and persistent buffers by their `module.state_dict()` names, as numpy arrays.
  """
  class_name: str
  init_kwargs: dict
  state_dict: dict


@dataclasses.dataclass(eq=False)
class _PersistentObject:
  class_name: str
  state: dict


def _reconstruct_persistent(meta):
  if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
          and isinstance(meta.get("state"), dict)):
    raise TorchFileError("malformed NVlabs persistent object")
  return _PersistentObject(meta["class_name"], meta["state"])


def _network(obj: _PersistentObject, memo: dict) -> NVlabsNetwork:
  state_dict = {}

  def collect(module, prefix):
    if not isinstance(module, _PersistentObject):
      raise TorchFileError(f"submodule {prefix or '<root>'} is a {type(module).__name__}, not an NVlabs "
                           "persistent module")
    state = module.state
    skipped = set(state.get("_non_persistent_buffers_set", ()))
    for group in ("_parameters", "_buffers"):
      for name, value in state.get(group, {}).items():
        if value is not None and not (group == "_buffers" and name in skipped):
          state_dict[prefix + name] = _to_plain(value, memo)
    for name, child in state.get("_modules", {}).items():
      if child is not None:
        collect(child, f"{prefix}{name}.")

  collect(obj, "")
  init_kwargs = _to_plain(obj.state.get("_init_kwargs", {}), memo)
  return NVlabsNetwork(obj.class_name, init_kwargs, state_dict)


def read_nvlabs_pickle(path_or_bytes) -> dict[str, NVlabsNetwork]:
  """Reads the networks of an NVlabs stylegan2-ada-pytorch pickle (`G`, `D`, `G_ema`, `augment_pipe`).

  No code from the pickle is imported, compiled or run: the embedded module sources are discarded.
  Top-level entries that are not networks (e.g. `training_set_kwargs`) are left out.
  """
  safe_globals = _base_globals()
  safe_globals[("torch_utils.persistence", "_reconstruct_persistent_obj")] = _reconstruct_persistent
  data = _load(path_or_bytes, safe_globals)
  name = "<bytes>" if isinstance(path_or_bytes, (bytes, bytearray, memoryview)) else os.fspath(path_or_bytes)
  networks = ({k: v for k, v in data.items() if isinstance(v, NVlabsNetwork)} if isinstance(data, dict) else {})
  if not networks:
    raise TorchFileError(f"{name}: no NVlabs networks found; expected a stylegan2-ada-pytorch pickle with "
                         "'G', 'D' and 'G_ema'.")
  return networks
