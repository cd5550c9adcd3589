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

Limits
------
Refusing code is not enough for files from strangers: a few bytes can *declare* terabytes (a storage's
element count, a tensor's shape, a length prefix in the pickle, `bytearray(n)`, a zip member's size), and a
short pickle can nest or share containers so that walking it recurses past Python's stack or visits an
exponential number of paths. So every size the file declares is checked against what the file can back
*before* anything is allocated, every walk of the loaded structure is iterative, memoised and bounded, and
every failure is one `TorchFileError` line naming the file and the reason. The limits are keyword arguments
of `load_torch_file` and `read_nvlabs_pickle`; raise one only for a file you trust:

* `max_storage_bytes` (default: the file's size): the payload one storage may declare. A storage that is
  stored as is (legacy files, embedded storages, uncompressed zip records, which is what `torch.save` writes)
  cannot hold more bytes than the file has. For a compressed zip record the default is `max_member_bytes`.
* `max_total_bytes` (default: the file's size, or `max_decompressed_bytes` if the zip compresses its
  records): the declared payloads of all storages together, embedded ones included, so one large embedded
  storage referenced many times cannot multiply itself.
* `max_output_bytes` (default: twice `max_total_bytes`): the arrays and byte strings the load creates
  (materialised tensors, numpy arrays, `bytes`/`bytearray` calls), tensors counted at the file's element size
  (bfloat16 is then widened to float32). An honest file returns about as many bytes as its storages hold;
  views of one storage and expanded (stride-0) tensors return more, hence the factor 2.
* `max_member_bytes` (default 2 GiB) and `max_decompressed_bytes` (default 4 GiB): a compressed zip member
  may inflate beyond the file (that is what compression is for), so the file's size cannot bound it; these
  caps do, with room for the StyleGAN2 and classifier checkpoints jaxmia converts. A member whose header lies
  about its size is read only up to the declared size, and then fails its CRC check.
* `max_depth` (default 100): how deeply containers may nest. Checkpoints nest a few levels, NVlabs network
  pickles a few per submodule level; the walkers are iterative, so this limit is about work, not about
  Python's stack.
* `max_objects` (default 1,000,000): objects the unpickler may create (and zip entries, and paths a walk of
  shared structure may expand to). A checkpoint with its optimiser state holds tens of thousands.

Before a pickle is unpickled, its opcode stream is scanned without building anything: every length prefix
(`BINBYTES8`, `BINUNICODE8`, `BYTEARRAY8`, frames, ...) must fit in the bytes that follow, memo indices must
not run ahead of the objects made (the C unpickler grows its memo table to the index it is given), marks may
not nest deeper than `max_depth` and object-making opcodes count against `max_objects`. What the unpickler
built is then checked for depth, size and reference cycles (state dicts and checkpoints are trees or share
sub-objects, never cycles, and a cycle would send every consumer around it) before any other code walks it.
Tensor geometry is checked with Python integers (no overflow): non-negative shape, strides and offset, every
addressed element inside the storage.
"""
import dataclasses
import io
import itertools
import os
import pickle
import pickletools
import reprlib
import struct
import types
import zipfile
import zlib
from typing import Any, Callable

import numpy as np

try:
  import lzma
  _LZMA_ERRORS = (lzma.LZMAError,)
except ImportError:  # Python built without lzma: zipfile cannot open such members either
  _LZMA_ERRORS = ()

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"

MAX_MEMBER_BYTES = 2 << 30
MAX_DECOMPRESSED_BYTES = 4 << 30
MAX_DEPTH = 100
MAX_OBJECTS = 1_000_000

# torch.<Name>Storage -> numpy dtype of one element ('bfloat16' is widened to float32 when read).
STORAGE_DTYPES = {
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
  """A file is not a readable PyTorch file (truncated, corrupt, of an unknown layout or over a limit).

  `str(error)` is one line, `<file>: <reason>`; `error.source` and `error.reason` hold the two parts.
  """

  def __init__(self, reason: str, source: str | None = None):
    super().__init__(reason)
    self.reason, self.source = reason, source

  def __str__(self):
    text = f"{self.source}: {self.reason}" if self.source else self.reason
    return " ".join(text.splitlines())


def _bytes_text(n: int) -> str:
  return f"{n:,} bytes"


@dataclasses.dataclass(frozen=True)
class _Limits:
  max_storage_bytes: int | None = None
  max_total_bytes: int | None = None
  max_output_bytes: int | None = None
  max_member_bytes: int = MAX_MEMBER_BYTES
  max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES
  max_depth: int = MAX_DEPTH
  max_objects: int = MAX_OBJECTS

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is None and field.default is None:
        continue
      smallest = 1 if field.name in ("max_depth", "max_objects") else 0
      if not _is_int(value) or value < smallest:
        raise ValueError(f"{field.name} must be an integer >= {smallest}"
                         f"{' or None' if field.default is None else ''}, got {value!r}")


class _Budget:
  """What one load may still declare and allocate; shared by the pickles of a file and its embedded storages."""

  def __init__(self, file_size: int, limits: _Limits):
    self.file_size, self.limits = file_size, limits
    self.compressed = False  # a zip file that compresses records: inflated bytes may exceed the file
    self.storage_bytes = self.output_bytes = self.inflated_bytes = self.objects = self.visits = 0

  def _total_cap(self) -> tuple[int, str]:
    if self.limits.max_total_bytes is not None:
      return self.limits.max_total_bytes, "max_total_bytes"
    if self.compressed:
      return (max(self.file_size, self.limits.max_decompressed_bytes),
              "max_total_bytes, default max_decompressed_bytes")
    return self.file_size, "the file's size; max_total_bytes"

  def declare_storage(self, nbytes: int, what: str, compressed: bool = False):
    if self.limits.max_storage_bytes is not None:
      cap, name = self.limits.max_storage_bytes, "max_storage_bytes"
    elif compressed:
      cap = self.limits.max_member_bytes
      name = "max_storage_bytes, default max_member_bytes for a compressed record"
    else:
      cap, name = self.file_size, "the file's size; max_storage_bytes"
    if nbytes > cap:
      raise TorchFileError(f"{what} declares {_bytes_text(nbytes)}, more than the limit of {_bytes_text(cap)} "
                           f"({name}); a storage cannot hold more bytes than the file has")
    self.storage_bytes += nbytes
    total, name = self._total_cap()
    if self.storage_bytes > total:
      raise TorchFileError(f"its storages declare {_bytes_text(self.storage_bytes)} in all, more than the limit "
                           f"of {_bytes_text(total)} ({name})")

  def take_output(self, nbytes: int, what: str):
    if self.limits.max_output_bytes is not None:
      cap, name = self.limits.max_output_bytes, "max_output_bytes"
    else:
      cap, name = 2 * self._total_cap()[0], "max_output_bytes, default twice max_total_bytes"
    if nbytes > cap - self.output_bytes:
      raise TorchFileError(f"{what} would allocate {_bytes_text(nbytes)}, which with the "
                           f"{_bytes_text(self.output_bytes)} already read exceeds the limit of "
                           f"{_bytes_text(cap)} ({name})")
    self.output_bytes += nbytes

  def inflate(self, nbytes: int, what: str):
    self.inflated_bytes += nbytes
    if self.inflated_bytes > self.limits.max_decompressed_bytes:
      raise TorchFileError(f"{what} would inflate the compressed records to {_bytes_text(self.inflated_bytes)}, "
                           f"more than max_decompressed_bytes ({_bytes_text(self.limits.max_decompressed_bytes)})")

  def count_objects(self, n: int = 1):
    self.objects += n
    if self.objects > self.limits.max_objects:
      raise TorchFileError(f"it makes more than {self.limits.max_objects:,} objects (max_objects)")

  def visit(self, what: str):
    self.visits += 1
    if self.visits > self.limits.max_objects:
      raise TorchFileError(f"{what} expands to more than {self.limits.max_objects:,} entries (shared structure "
                           "repeated on many paths; max_objects)")


# ----------------------------------------------------------------------------------------------------------
# Objects the unpickler builds; they hold data only and are turned into numpy / plain values by `_to_plain`.


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str

  @property
  def dtype(self):
    return STORAGE_DTYPES[self.name]

  @property
  def itemsize(self) -> int:
    return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
  """One flat storage; its bytes are read on first use (zip records) or filled in later (legacy files)."""

  def __init__(self, storage_type: _StorageType, numel: int, read: Callable[[], bytes] | None = None,
               big_endian: bool = False):
    self.type, self.numel, self._read, self._big_endian = storage_type, int(numel), read, big_endian
    self._array = None

  @property
  def itemsize(self) -> int:
    return self.type.itemsize

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
    if not (_is_int(offset) and _is_int(numel) and 0 <= offset and 0 <= numel
            and offset + numel <= root.numel):
      raise TorchFileError(f"a storage view (offset {offset!r}, {numel!r} elements) reaches outside its storage "
                           f"of {root.numel} elements")
    self.root, self.offset, self.numel = root, int(offset), int(numel)

  @property
  def itemsize(self) -> int:
    return self.root.itemsize

  def array(self) -> np.ndarray:
    return self.root.array()[self.offset:self.offset + self.numel]


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


_MAX_NDIM = 64  # numpy's limit


@dataclasses.dataclass(eq=False)
class _TensorRef:
  storage: Any
  offset: int
  shape: tuple
  stride: tuple

  def materialize(self, budget: _Budget) -> np.ndarray:
    if not isinstance(self.storage, (_Storage, _StorageView)):
      raise TorchFileError(f"a tensor is built from {type(self.storage).__name__}, not from a storage")
    if not (isinstance(self.shape, (tuple, list)) and isinstance(self.stride, (tuple, list))
            and len(self.shape) == len(self.stride) <= _MAX_NDIM
            and all(_is_int(v) and v >= 0 for v in (*self.shape, *self.stride)) and _is_int(self.offset)
            and self.offset >= 0):
      raise TorchFileError(f"invalid tensor geometry: shape {_short(self.shape)}, stride {_short(self.stride)}, "
                           f"offset {_short(self.offset)} (need at most {_MAX_NDIM} non-negative integer sizes "
                           "and strides and a non-negative offset)")
    shape, stride, offset = tuple(self.shape), tuple(self.stride), self.offset
    flat = self.storage.array()
    numel = 1
    for d in shape:
      numel *= d
    if numel == 0:
      return np.zeros(shape, flat.dtype)
    last = offset + sum((d - 1) * s for d, s in zip(shape, stride))  # exact Python integers, no overflow
    if last >= self.storage.numel:
      raise TorchFileError(f"a tensor of shape {_short(shape)} (stride {_short(stride)}, offset {offset}) reaches "
                           f"element {last:,} of a storage with {self.storage.numel:,} elements")
    budget.take_output(numel * self.storage.itemsize,  # at the file's element size (bfloat16: 2 bytes)
                       f"a tensor of shape {_short(shape)} (stride {_short(stride)})")
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape, [s * flat.itemsize for s in stride],
                                           writeable=False)
    return np.array(view, order="C")


class _BoundedRepr(reprlib.Repr):
  """`repr` whose cost and length do not grow with the value (a file's values appear in messages)."""

  def __init__(self):
    super().__init__()
    self.maxlevel, self.maxtuple, self.maxlist, self.maxarray = 3, 8, 8, 8
    self.maxdict, self.maxset, self.maxfrozenset, self.maxdeque = 4, 4, 4, 4
    self.maxstring = self.maxother = 60

  def repr_int(self, x, level):
    return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length():,} bits>"

  def repr_bytes(self, x, level):
    return repr(x[:self.maxstring]) + ("..." if len(x) > self.maxstring else "")

  repr_bytearray = repr_bytes


_BOUNDED_REPR = _BoundedRepr()


def describe_value(value, limit: int = 100) -> str:
  """A one-line repr of at most `limit` characters, computed in bounded time (e.g. for `convert inspect`)."""
  text = " ".join(_BOUNDED_REPR.repr(value).splitlines())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(value) -> str:
  return describe_value(value, 80)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
  del requires_grad, backward_hooks, metadata  # autograd bookkeeping, meaningless for numpy
  if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
    raise TorchFileError("a tensor's size and stride must be tuples")
  return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


def _torch_size(dims=()):
  if not isinstance(dims, (tuple, list)):
    raise TorchFileError(f"torch.Size of a {type(dims).__name__}")
  return tuple(dims)


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
    if not isinstance(spec, str) or len(spec) > 16:
      raise TorchFileError(f"unsupported numpy dtype spec {_short(spec)}")
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


def _array_count(shape) -> int:
  if not (isinstance(shape, (tuple, list)) and len(shape) <= _MAX_NDIM and all(_is_int(d) and d >= 0
                                                                                 for d in shape)):
    raise TorchFileError(f"invalid numpy array shape {_short(shape)}")
  count = 1
  for d in shape:
    count *= d
  return count


class _NdarrayBuilder:
  """A pickled `numpy.ndarray`, rebuilt from its (shape, dtype, fortran order, raw bytes) state."""

  def __init__(self, budget: _Budget):
    self.array, self._budget = None, budget

  def __setstate__(self, state):
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DtypeSpec)):
      raise TorchFileError("malformed numpy array state")
    _, shape, spec, fortran, raw = state
    raw = _as_bytes(raw)
    count = _array_count(shape)
    if len(raw) != count * spec.dtype.itemsize:
      raise TorchFileError(f"numpy array of shape {_short(tuple(shape))} has {len(raw)} bytes of data")
    self._budget.take_output(len(raw), f"a numpy array of shape {_short(tuple(shape))}")
    self.array = np.frombuffer(raw, spec.dtype, count=count).reshape(shape, order="F" if fortran else "C").copy()


_NDARRAY_TYPE = object()  # stands for the `numpy.ndarray` class, which is only ever an argument


def _latin1_encode(text, encoding="latin1"):
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise TorchFileError("only latin-1 encoded byte strings are read")
  return text.encode("latin1")


def _base_globals(budget: _Budget) -> dict[tuple[str, str], Any]:
  """The whitelist; the constructors that allocate check `budget` first."""

  def bytes_like(kind):
    def build(source=b"", encoding=None):
      if _is_int(source):  # `bytes(n)` / `bytearray(n)`: n zero bytes that the file does not back
        if source < 0:
          raise TorchFileError(f"{kind.__name__}({source})")
        budget.take_output(source, f"a {kind.__name__}({source:,}) call")
        return kind(source)
      if isinstance(source, str):
        return kind(_latin1_encode(source, encoding or ""))
      if encoding is None and isinstance(source, (bytes, bytearray, list, tuple)):
        return kind(source)
      raise TorchFileError(f"{kind.__name__} called with a {type(source).__name__}")
    return build

  def numpy_reconstruct(subtype, shape, typecode):
    del shape, typecode
    if subtype is not _NDARRAY_TYPE:
      raise TorchFileError("only plain numpy.ndarray objects are read")
    return _NdarrayBuilder(budget)

  def numpy_frombuffer(buffer, spec, shape, order):
    if not isinstance(spec, _DtypeSpec):
      raise TorchFileError("malformed numpy array")
    raw = _as_bytes(buffer)
    if len(raw) != _array_count(shape) * spec.dtype.itemsize:
      raise TorchFileError(f"numpy array of shape {_short(tuple(shape))} has {len(raw)} bytes of data")
    budget.take_output(len(raw), f"a numpy array of shape {_short(tuple(shape))}")
    return np.frombuffer(raw, spec.dtype).reshape(shape, order=order).copy()

  table = {
      ("collections", "OrderedDict"): _OrderedDict,
      ("dnnlib.util", "EasyDict"): _EasyDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("torch", "Size"): _torch_size,
      ("builtins", "set"): set,
      ("builtins", "frozenset"): frozenset,
      ("builtins", "bytes"): bytes_like(bytes),
      ("builtins", "bytearray"): bytes_like(bytearray),
      ("builtins", "complex"): complex,
      ("_codecs", "encode"): _latin1_encode,
      ("numpy", "dtype"): _DtypeSpec,
      ("numpy", "ndarray"): _NDARRAY_TYPE,
  }
  table.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})
  for core in ("numpy.core", "numpy._core"):  # NumPy 1 and NumPy 2 module names
    table[(f"{core}.multiarray", "scalar")] = _numpy_scalar
    table[(f"{core}.multiarray", "_reconstruct")] = numpy_reconstruct
    table[(f"{core}.numeric", "_frombuffer")] = numpy_frombuffer
  return table


_HINTS = {
    "torch_utils.persistence": "This is an NVlabs StyleGAN2-ADA network pickle: read it with "
                               "`jaxmia.convert.torch_reader.read_nvlabs_pickle` or convert it with "
                               "`python -m jaxmia.convert stylegan2 --input=FILE --output=DIR`.",
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


# ----------------------------------------------------------------------------------------------------------
# The opcode scan: what a pickle declares, checked against what the file holds, before unpickling it.

# One entry per opcode byte: (name, argument kind, width, signed). Kinds: fixed-size argument, one or two
# newline-terminated lines, or a length prefix of `width` bytes followed by that many bytes.
_FIXED, _LINE, _LINES2, _COUNTED = range(4)
_LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: (1, False), pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
                  pickletools.TAKEN_FROM_ARGUMENT4U: (4, False), pickletools.TAKEN_FROM_ARGUMENT8U: (8, False)}


def _opcode_entry(op):
  if op.arg is None:
    return op.name, _FIXED, 0, False
  if op.arg.n >= 0:
    return op.name, _FIXED, op.arg.n, False
  if op.arg.n == pickletools.UP_TO_NEWLINE:
    return op.name, _LINES2 if op.arg.name == "stringnl_noescape_pair" else _LINE, 0, False
  return (op.name, _COUNTED, *_LENGTH_PREFIX[op.arg.n])


_OPCODES = [None] * 256
for _op in pickletools.opcodes:
  _OPCODES[ord(_op.code)] = _opcode_entry(_op)
# Opcodes that push no new object (they move, store, fetch or fill existing ones).
_NO_NEW_OBJECT = {"MARK", "STOP", "POP", "POP_MARK", "DUP", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET",
                  "BINGET", "LONG_BINGET", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD",
                  "PROTO", "FRAME"}
_CLOSES_MARK = {op.name for op in pickletools.opcodes if pickletools.markobject in op.stack_before}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _scan_pickle(stream, end: int, budget: _Budget):
  """Walks one pickle's opcodes up to STOP without building anything, reading forwards in chunks.

  Every length prefix must fit in the bytes left before `end` (its payload is skipped, never read), memo
  indices may not run ahead of the objects made, marks may not nest deeper than `max_depth`, and
  object-making opcodes count against `max_objects`.
  """
  limits = budget.limits
  chunk = 1 << 16
  base = stream.tell()  # file offset of buf[0]
  buf, i = b"", 0
  marks = made = 0
  objects, max_objects = budget.objects, limits.max_objects

  def truncated(what, at):
    return TorchFileError(f"the pickle is truncated: it ends inside {what} at byte {at:,}")

  while True:
    if len(buf) - i < 16 and base + len(buf) < end:  # keep an opcode and its fixed-size argument in buf
      base += i
      stream.seek(base + len(buf) - i)
      buf = buf[i:] + stream.read(min(chunk, end - base - (len(buf) - i)))
      i = 0
    at = base + i
    if i >= len(buf):
      raise truncated("an opcode", at)
    entry = _OPCODES[buf[i]]
    if entry is None:
      raise TorchFileError(f"unknown pickle opcode {buf[i:i + 1]!r} at byte {at:,}; not a pickle, or a corrupt "
                           "one")
    name, kind, width, signed = entry
    i += 1
    value = None
    if kind == _FIXED:
      if i + width > len(buf):
        raise truncated(f"the argument of {name}", at)
      value = buf[i:i + width]
      i += width
    elif kind == _COUNTED:
      if i + width > len(buf):
        raise truncated(f"the length of {name}", at)
      length = int.from_bytes(buf[i:i + width], "little", signed=signed)
      i += width
      left = end - (base + i)
      if not 0 <= length <= left:
        raise TorchFileError(f"{name} at byte {at:,} declares {_bytes_text(length)} but only {_bytes_text(left)} "
                             "follow (truncated or forged)")
      if i + length <= len(buf):
        i += length
      else:  # skip the payload without reading it
        base, buf, i = base + i + length, b"", 0
    else:
      lines = []
      for _ in range(2 if kind == _LINES2 else 1):
        parts = []
        while True:
          j = buf.find(b"\n", i)
          if j >= 0:
            parts.append(buf[i:j])
            i = j + 1
            break
          parts.append(buf[i:])
          base, i = base + len(buf), 0
          buf = b""
          if base >= end:
            raise truncated(f"the argument of {name}", at)
          stream.seek(base)
          buf = stream.read(min(chunk, end - base))
          if not buf:
            raise truncated(f"the argument of {name}", at)
        lines.append(b"".join(parts))
      value = lines[0]
    if name == "STOP":
      budget.objects = objects
      return
    if name in _NO_NEW_OBJECT:
      if name == "FRAME":
        length, left = int.from_bytes(value, "little"), end - (base + i)
        if length > left:
          raise TorchFileError(f"a pickle frame at byte {at:,} declares {_bytes_text(length)} but only "
                               f"{_bytes_text(left)} follow (truncated or forged)")
      elif name == "MARK":
        marks += 1
        if marks > limits.max_depth:
          raise TorchFileError(f"the pickle nests more than {limits.max_depth} levels deep (max_depth)")
      elif name in _PUTS:
        index = int(value) if name == "PUT" else int.from_bytes(value, "little")
        if not 0 <= index <= made:
          raise TorchFileError(f"{name} at byte {at:,} stores memo entry {index:,} after only {made:,} objects "
                               "were made (forged; the unpickler would allocate a table that large)")
    else:
      made += 1
      objects += 1
      if objects > max_objects:
        raise TorchFileError(f"it makes more than {max_objects:,} objects (max_objects)")
    if name in _CLOSES_MARK:
      marks -= 1
      if marks < 0:
        raise TorchFileError(f"{name} at byte {at:,} without a MARK; a corrupt pickle")


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
      raise TorchFileError(f"unexpected persistent reference {_short(pid)} in a plain pickle")
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_int(pid[4]) and pid[4] >= 0):
      raise TorchFileError(f"unsupported persistent reference {_short(pid)}")
    return self._storage_for(pid)


def _unpickle(stream, end: int, source: str, safe_globals, budget: _Budget, storage_for=None):
  """One pickle from `stream` (which ends at byte `end`): scanned, unpickled, then checked as a structure."""
  start = stream.tell()
  _scan_pickle(stream, end, budget)
  stream.seek(start)
  obj = _RestrictedUnpickler(stream, source, safe_globals, storage_for).load()
  _check_structure(obj, budget.limits)
  return obj


# ----------------------------------------------------------------------------------------------------------
# Walking what the unpickler built: iterative, memoised, bounded.


def _children(obj):
  """The objects `obj` refers to, or None for a leaf."""
  if isinstance(obj, dict):
    return itertools.chain.from_iterable(obj.items())
  if isinstance(obj, (list, tuple, set, frozenset)):
    return iter(obj)
  if isinstance(obj, _TensorRef):
    return iter((obj.storage, obj.shape, obj.stride))
  if isinstance(obj, _StorageView):
    return iter((obj.root,))
  if isinstance(obj, _PersistentObject):
    return iter((obj.state,))
  return None


def _check_structure(root, limits: _Limits):
  """Refuses reference cycles, nesting deeper than `max_depth` and more than `max_objects` containers.

  A depth-first walk with an explicit stack; every container is entered once and remembers the height of what
  is below it, so shared sub-structure costs one visit and still counts at the depth of every use.
  """
  kids = _children(root)
  if kids is None:
    return
  heights, active = {}, {id(root)}
  stack = [[root, kids, 0]]  # container, its remaining children, tallest child height seen
  count = 1
  while stack:
    frame = stack[-1]
    for child in frame[1]:
      kids = _children(child)
      if kids is None:
        continue
      key = id(child)
      if key in heights:
        if len(stack) + heights[key] > limits.max_depth:
          raise TorchFileError(f"its data nests more than {limits.max_depth} levels deep (max_depth)")
        frame[2] = max(frame[2], heights[key])
        continue
      if key in active:
        raise TorchFileError("its data contains itself (a reference cycle); state dicts and checkpoints never do")
      if len(stack) >= limits.max_depth:
        raise TorchFileError(f"its data nests more than {limits.max_depth} levels deep (max_depth)")
      count += 1
      if count > limits.max_objects:
        raise TorchFileError(f"its data holds more than {limits.max_objects:,} containers (max_objects)")
      active.add(key)
      stack.append([child, kids, 0])
      break
    else:
      stack.pop()
      active.discard(id(frame[0]))
      height = heights[id(frame[0])] = frame[2] + 1
      if stack:
        stack[-1][2] = max(stack[-1][2], height)


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _plain_leaf(obj, memo: dict, budget: _Budget):
  if isinstance(obj, _TensorRef):
    return obj.materialize(budget)
  if isinstance(obj, (_Storage, _StorageView)):
    budget.take_output(obj.numel * obj.itemsize, f"a bare storage of {obj.numel:,} elements")
    return np.array(obj.array())
  if isinstance(obj, _NdarrayBuilder):
    if obj.array is None:
      raise TorchFileError("a numpy array without data")
    return obj.array
  if isinstance(obj, _DtypeSpec):
    return obj.dtype
  if isinstance(obj, _PersistentObject):
    return _network(obj, memo, budget)
  if obj is _NDARRAY_TYPE or isinstance(obj, (_StorageType, _ReaderFunction)) or isinstance(obj, type):
    raise TorchFileError("a bare class or function reference where data was expected")
  return obj


def _to_plain(root, memo: dict, budget: _Budget):
  """Turns the unpickler's objects into numpy arrays and plain containers (shared objects stay shared).

  Post-order with an explicit stack (no recursion per level); `memo` maps id(original) -> converted. The
  structure was checked by `_check_structure` (no cycles), so every container is converted exactly once.
  """
  stack = [(root, False)]
  while stack:
    obj, children_done = stack.pop()
    key = id(obj)
    if key in memo:
      continue
    if not isinstance(obj, _CONTAINERS):
      memo[key] = _plain_leaf(obj, memo, budget)
    elif not children_done:
      stack.append((obj, True))
      stack.extend((child, False) for child in _children(obj) if id(child) not in memo)
    elif isinstance(obj, dict):
      memo[key] = {memo[id(k)]: memo[id(v)] for k, v in obj.items()}
    else:  # list, tuple, set, frozenset (subclasses become the plain type)
      plain_type = next(t for t in (list, tuple, set, frozenset) if isinstance(obj, t))
      memo[key] = plain_type(memo[id(v)] for v in obj)
  return memo[id(root)]


# ----------------------------------------------------------------------------------------------------------
# The three file layouts.


def _check_zip_directory(data, file_size: int, budget: _Budget):
  """Refuses a central directory with more entries than `max_objects` before `zipfile` builds one object each.

  Every directory entry takes at least 46 bytes, so the directory's size (from the end record, zip64 or not)
  bounds the entry count no matter what the record's count field claims.
  """
  tail_size = min(file_size, 22 + 0xFFFF)
  data.seek(file_size - tail_size)
  tail = data.read(tail_size)
  at = tail.rfind(b"PK\x05\x06")
  if at < 0 or at + 22 > len(tail):
    return  # not a zip end record; zipfile reports it
  (directory_size,) = struct.unpack_from("<L", tail, at + 12)
  if directory_size == 0xFFFFFFFF and at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":
    (zip64_at,) = struct.unpack_from("<Q", tail, at - 20 + 8)
    if zip64_at + 56 <= file_size:
      data.seek(zip64_at)
      record = data.read(56)
      if record[:4] == b"PK\x06\x06":
        (directory_size,) = struct.unpack_from("<Q", record, 40)
  if directory_size // 46 > budget.limits.max_objects:
    raise TorchFileError(f"its zip directory of {_bytes_text(directory_size)} may list more than "
                         f"{budget.limits.max_objects:,} entries (max_objects)")


def _check_member(info: zipfile.ZipInfo, budget: _Budget):
  """A member's declared size, checked before it is read (the reader never reads past the declared size)."""
  if info.compress_type == zipfile.ZIP_STORED:
    if max(info.file_size, info.compress_size) > budget.file_size:
      raise TorchFileError(f"zip member {info.filename} declares {_bytes_text(info.file_size)}, more than the "
                           f"whole file ({_bytes_text(budget.file_size)}); truncated or forged")
  elif info.file_size > budget.limits.max_member_bytes:
    raise TorchFileError(f"zip member {info.filename} inflates to {_bytes_text(info.file_size)}, more than "
                         f"max_member_bytes ({_bytes_text(budget.limits.max_member_bytes)})")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, size: int | None = None):
  """At most `size` bytes (default: all) of a member whose declared size was checked."""
  _check_member(info, budget)
  size = info.file_size if size is None else min(size, info.file_size)
  if info.compress_type != zipfile.ZIP_STORED:
    budget.inflate(size, f"zip member {info.filename}")
  with archive.open(info) as f:
    return f.read(size)


def _load_zip(data, source: str, safe_globals, budget: _Budget):
  data.seek(0, io.SEEK_END)
  _check_zip_directory(data, data.tell(), budget)
  data.seek(0)
  with zipfile.ZipFile(data) as archive:
    infos = archive.infolist()
    budget.count_objects(len(infos))
    members = {info.filename: info for info in infos}
    pickles = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise TorchFileError("a zip archive without a single <root>/data.pkl, so not a torch.save file")
    root = pickles[0][:-len("/data.pkl")]
    budget.compressed = any(info.compress_type != zipfile.ZIP_STORED for info in infos)
    byteorder = members.get(f"{root}/byteorder")
    big_endian = byteorder is not None and _read_member(archive, byteorder, budget, 16).strip() == b"big"
    storages = {}

    def storage_for(pid):
      _, storage_type, key, _, numel = pid[:5]
      if key not in storages:
        record = members.get(f"{root}/data/{key}")
        if record is None:
          raise TorchFileError(f"storage record {root}/data/{key} is missing")
        nbytes = numel * storage_type.itemsize
        what = f"storage {key!r} ({storage_type.name} of {numel:,} elements)"
        _check_member(record, budget)
        if record.file_size < nbytes:
          raise TorchFileError(f"{what} needs {_bytes_text(nbytes)} but its record {record.filename} has only "
                               f"{record.file_size:,} bytes of data")
        budget.declare_storage(nbytes, what, compressed=record.compress_type != zipfile.ZIP_STORED)
        storages[key] = _Storage(storage_type, numel, lambda: _read_member(archive, record, budget, nbytes),
                                 big_endian)
      elif storages[key].type != storage_type or storages[key].numel != numel:
        raise TorchFileError(f"storage {key!r} is declared twice with different types or sizes")
      return storages[key]

    pickle_bytes = _read_member(archive, members[pickles[0]], budget)
    obj = _unpickle(io.BytesIO(pickle_bytes), len(pickle_bytes), source, safe_globals, budget, storage_for)
    for storage in storages.values():  # read while the archive is open
      storage.array()
    return obj


def _load_pickles(data, end: int, source: str, safe_globals, budget: _Budget):
  """A legacy torch.save file, or a plain pickle if the first pickle is not the legacy magic number."""
  first = _unpickle(data, end, source, safe_globals, budget)
  if not (isinstance(first, int) and first == _LEGACY_MAGIC):
    if data.read(1):
      raise TorchFileError("trailing data after the pickle; not a PyTorch file")
    return first
  protocol = _unpickle(data, end, source, safe_globals, budget)
  if protocol != _LEGACY_PROTOCOL:
    raise TorchFileError(f"legacy torch file of protocol {_short(protocol)}; only {_LEGACY_PROTOCOL} "
                         "(PyTorch >= 0.4) is supported. Re-save it with a recent PyTorch.")
  sys_info = _unpickle(data, end, source, safe_globals, budget)
  big_endian = isinstance(sys_info, dict) and not sys_info.get("little_endian", True)
  storages = {}

  def storage_for(pid):
    _, storage_type, key, _, numel = pid[:5]
    view = pid[5] if len(pid) > 5 else None
    if key not in storages:
      budget.declare_storage(numel * storage_type.itemsize,
                             f"storage {key!r} ({storage_type.name} of {numel:,} elements)")
      storages[key] = _Storage(storage_type, numel, big_endian=big_endian)
    elif storages[key].type != storage_type or storages[key].numel != numel:
      raise TorchFileError(f"storage {key!r} is declared twice with different types or sizes")
    if view is None:
      return storages[key]
    if not (isinstance(view, tuple) and len(view) == 3):
      raise TorchFileError(f"malformed storage view {_short(view)}")
    _, view_offset, view_numel = view
    return _StorageView(storages[key], view_offset, view_numel)

  obj = _unpickle(data, end, source, safe_globals, budget, storage_for)
  keys = _unpickle(data, end, source, safe_globals, budget)
  if not isinstance(keys, list):
    raise TorchFileError("the storage key list of a legacy file is not a list")
  count_format = ">q" if big_endian else "<q"
  for key in keys:
    if key not in storages:
      raise TorchFileError(f"storage {_short(key)} is listed but never used")
    storage = storages[key]
    header = data.read(8)
    if len(header) != 8:
      raise TorchFileError(f"file ends before the data of storage {key!r}")
    (numel,) = struct.unpack(count_format, header)
    nbytes = numel * storage.itemsize
    remaining = end - data.tell()
    if not 0 <= nbytes <= remaining:
      raise TorchFileError(f"file ends inside the data of storage {key!r} (it declares "
                           f"{_bytes_text(nbytes)}, {_bytes_text(max(remaining, 0))} remain)")
    storage.set_bytes(data.read(nbytes))
  return obj


# What reading a corrupt file raises besides TorchFileError. zipfile: BadZipFile (bad structure or CRC),
# NotImplementedError (unknown compression method), RuntimeError (encrypted member); inflating: zlib.error,
# OSError (bz2), LZMAError; unpickling: UnpicklingError, EOFError and the errors of the whitelisted constructors.
_READ_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
                struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError,
                OverflowError, NotImplementedError, RuntimeError, OSError, *_LZMA_ERRORS)


def _load(path_or_bytes, extra_globals=None, limits: _Limits | None = None, name="<bytes>"):
  """Reads a file; `extra_globals` adds whitelist entries (each a function of the load's budget)."""
  limits = limits or _Limits()
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    source, data = name, io.BytesIO(bytes(path_or_bytes))
  else:
    source = os.fspath(path_or_bytes)
    if not os.path.isfile(source):
      raise FileNotFoundError(f"{source}: no such file (expected a PyTorch .pt/.pth/.pkl file)")
    data = open(source, "rb")  # noqa: SIM115
  try:
    with data:
      data.seek(0, io.SEEK_END)
      size = data.tell()
      data.seek(0)
      budget = _Budget(size, limits)
      safe_globals = _base_globals(budget)
      for key, make in (extra_globals or {}).items():
        safe_globals[key] = make(budget)
      # Storages pickled inside plain pickles are complete legacy torch files, read with the same rules and the
      # same budget (they are part of this file).
      safe_globals[("torch.storage", "_load_from_bytes")] = lambda b: _load_embedded(b, source, budget)
      if data.read(4) == _ZIP_SIGNATURE:
        obj = _load_zip(data, source, safe_globals, budget)
      else:
        data.seek(0)
        obj = _load_pickles(data, size, source, safe_globals, budget)
      return _to_plain(obj, {}, budget)
  except UnsafePickleError:
    raise
  except TorchFileError as e:
    if e.source is None:
      e.source = source
    raise
  except MemoryError as e:
    raise TorchFileError("ran out of memory reading it (a limit is set too high for this machine, or a bug)",
                         source) from e
  except RecursionError as e:
    raise TorchFileError("nested too deeply to read (lower max_depth)", source) from e
  except _READ_ERRORS as e:
    raise TorchFileError(f"not a readable PyTorch file ({type(e).__name__}: {e}). It may be truncated or "
                         "corrupt; download or save it again.", source) from e


def _load_embedded(raw, source: str, budget: _Budget):
  """A legacy torch file embedded as bytes in a plain pickle (NVlabs); its storages count against `budget`."""
  raw = _as_bytes(raw)
  safe_globals = _base_globals(budget)  # no further embedding
  return _load_pickles(io.BytesIO(raw), len(raw), f"{source} (embedded storage)", safe_globals, budget)


def load_torch_file(path_or_bytes, *, max_storage_bytes: int | None = None, max_total_bytes: int | None = None,
                    max_output_bytes: int | None = None, max_member_bytes: int = MAX_MEMBER_BYTES,
                    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES, max_depth: int = MAX_DEPTH,
                    max_objects: int = MAX_OBJECTS) -> Any:
  """Reads a `.pt` / `.pth` (zip or legacy `torch.save`) or plain `.pkl` file without PyTorch.

  Args:
    path_or_bytes: a file path, or the file's content as bytes.
    max_storage_bytes, max_total_bytes, max_output_bytes, max_member_bytes, max_decompressed_bytes, max_depth,
      max_objects: the limits described in the module docstring (None: derived from the file's size).

  Returns the saved object with tensors as contiguous numpy arrays (bfloat16 as float32, exactly), dicts and
  OrderedDicts as dicts (order kept), lists, tuples and Python scalars as they were.

  Raises:
    UnsafePickleError: the file names a global outside the whitelist (it would run code); nothing is run.
    TorchFileError: the file is truncated, corrupt, not a PyTorch file or over a limit.
    FileNotFoundError: there is no such file.
  """
  limits = _Limits(max_storage_bytes, max_total_bytes, max_output_bytes, max_member_bytes,
                   max_decompressed_bytes, max_depth, max_objects)
  return _load(path_or_bytes, limits=limits)


def flatten_tensors(obj, prefix: str = "", *, max_depth: int = MAX_DEPTH,
                    max_objects: int = MAX_OBJECTS) -> dict[str, np.ndarray]:
  """Every array inside nested dicts / lists / tuples, keyed by its dotted path (`'state.3.exp_avg'`).

  A top-level array is keyed by `prefix`. `NVlabsNetwork`s contribute their `state_dict`. An object reached
  along several paths is listed under each (tied weights keep both names); the walk is iterative and stops
  with a `TorchFileError` beyond `max_depth` levels or `max_objects` visited entries (so cycles and shared
  structure repeated on exponentially many paths end quickly).
  """
  limits = _Limits(max_depth=max_depth, max_objects=max_objects)
  budget = _Budget(0, limits)
  out = {}
  stack = [(obj, prefix, 0)]
  while stack:
    value, path, depth = stack.pop()
    budget.visit("the structure")
    if depth > limits.max_depth:
      raise TorchFileError(f"the structure nests more than {limits.max_depth} levels deep (max_depth)")
    if isinstance(value, np.ndarray):
      out[path] = value
      continue
    if isinstance(value, NVlabsNetwork):
      items = [(None, value.state_dict)]
    elif isinstance(value, dict):
      items = list(value.items())
    elif isinstance(value, (list, tuple)):
      items = list(enumerate(value))
    else:
      continue
    for k, v in reversed(items):
      stack.append((v, path if k is None else (f"{path}.{k}" if path else str(k)), depth + 1))
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


def _network(obj: _PersistentObject, memo: dict, budget: _Budget) -> NVlabsNetwork:
  state_dict = {}
  stack = [(obj, "")]  # pre-order over submodules, as `module.state_dict()` lists them
  while stack:
    module, prefix = stack.pop()
    budget.visit(f"NVlabs network {obj.class_name}")
    if not isinstance(module, _PersistentObject):
      raise TorchFileError(f"submodule {prefix or '<root>'} is a {type(module).__name__}, not an NVlabs "
                           "persistent module")
    state = module.state
    skipped = set(state.get("_non_persistent_buffers_set", ()))
    for group in ("_parameters", "_buffers"):
      for name, value in state.get(group, {}).items():
        if value is not None and not (group == "_buffers" and name in skipped):
          state_dict[prefix + name] = _to_plain(value, memo, budget)
    children = [(child, f"{prefix}{name}.") for name, child in state.get("_modules", {}).items()
                if child is not None]
    stack.extend(reversed(children))
  init_kwargs = _to_plain(obj.state.get("_init_kwargs", {}), memo, budget)
  return NVlabsNetwork(obj.class_name, init_kwargs, state_dict)


def read_nvlabs_pickle(path_or_bytes, **limits) -> dict[str, NVlabsNetwork]:
  """Reads the networks of an NVlabs stylegan2-ada-pytorch pickle (`G`, `D`, `G_ema`, `augment_pipe`).

  No code from the pickle is imported, compiled or run: the embedded module sources are discarded.
  Top-level entries that are not networks (e.g. `training_set_kwargs`) are left out. `limits` are the keyword
  arguments of `load_torch_file` (`max_storage_bytes`, ..., `max_objects`).
  """
  extra = {("torch_utils.persistence", "_reconstruct_persistent_obj"): lambda budget: _reconstruct_persistent}
  data = _load(path_or_bytes, extra, _Limits(**limits))
  name = "<bytes>" if isinstance(path_or_bytes, (bytes, bytearray, memoryview)) else os.fspath(path_or_bytes)
  networks = ({k: v for k, v in data.items() if isinstance(v, NVlabsNetwork)} if isinstance(data, dict) else {})
  if not networks:
    raise TorchFileError("no NVlabs networks found; expected a stylegan2-ada-pytorch pickle with 'G', 'D' and "
                         "'G_ema'.", name)
  return networks
