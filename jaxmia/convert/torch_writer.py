"""Writing PyTorch `.pt` / `.pth` files without PyTorch, in the zip layout `torch.save` has used since PyTorch 1.6.

    save_torch_file("resnet18.pth", state_dict)      # {name: array}: `torch.load` returns an OrderedDict of tensors
    save_torch_file("latents.pt", w)                 # one array: `torch.load` returns one tensor

The archive (records stored uncompressed, each record's data aligned to 64 bytes as PyTorch aligns them, so
`torch.load(..., mmap=True)` can map them):

  archive/data.pkl    the object, pickled with protocol 2. A tensor is the call `torch._utils._rebuild_tensor_v2(
                      storage, 0, shape, stride, False, OrderedDict())`, its storage the persistent id
                      `('storage', torch.<Type>Storage, '<key>', 'cpu', numel)`
  archive/data/<key>  that storage's elements: raw little-endian bytes in C order
  archive/byteorder   `little`
  archive/version     `3`

What is written is what both restricted readers accept — `torch.load(..., weights_only=True)` and
`jaxmia.convert.torch_reader.load_torch_file`: arrays (numpy, or anything `np.asarray` turns into one, e.g. jax
arrays) of the dtypes in `torch_reader.STORAGE_DTYPES` (bfloat16 excepted), each its own contiguous storage;
mappings (as `collections.OrderedDict`, which `state_dict()` returns; str or int keys), lists, tuples, str, int,
float, bool and None. Files are byte-for-byte the same for the same object (fixed timestamps), and written
atomically.
"""
import io
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

from jaxmia import files
from jaxmia.convert import torch_reader

ROOT = "archive"
ALIGNMENT = 64
_FORMAT_VERSION = b"3"
_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the zip epoch: identical objects give identical files
_PADDING_ID = b"JX"  # zip extra field that only pads a record's data to ALIGNMENT (readers skip unknown ids)

# numpy dtype -> torch.<Name>Storage (the reader's table reversed; bfloat16 has no numpy dtype, UntypedStorage is
# raw bytes).
_STORAGE_NAMES = {np.dtype(dtype): name for name, dtype in torch_reader.STORAGE_DTYPES.items()
                  if dtype != "bfloat16" and name != "UntypedStorage"}

# Pickle protocol 2 opcodes (the subset PyTorch's weights-only unpickler accepts).
_PROTO, _STOP, _MARK = b"\x80\x02", b".", b"("
_NONE, _TRUE, _FALSE = b"N", b"\x88", b"\x89"
_BININT1, _BININT2, _BININT, _LONG1, _BINFLOAT, _BINUNICODE = b"K", b"M", b"J", b"\x8a", b"G", b"X"
_EMPTY_TUPLE, _TUPLES, _TUPLE = b")", {1: b"\x85", 2: b"\x86", 3: b"\x87"}, b"t"
_EMPTY_LIST, _APPENDS, _SETITEMS = b"]", b"e", b"u"
_GLOBAL, _REDUCE, _BINPERSID = b"c", b"R", b"Q"


class _Pickler:
  """Pickles the supported objects (module docstring) with protocol 2, collecting the arrays as storages."""

  def __init__(self):
    self.out = io.BytesIO()
    self.storages: list[tuple[str, bytes]] = []  # (key, little-endian bytes)

  def dump(self, obj) -> bytes:
    self.out.write(_PROTO)
    self._save(obj)
    self.out.write(_STOP)
    return self.out.getvalue()

  def _write(self, *parts: bytes):
    for part in parts:
      self.out.write(part)

  def _global(self, module: str, name: str):
    self._write(_GLOBAL, f"{module}\n{name}\n".encode("ascii"))

  def _tuple(self, items):
    if not items:
      self._write(_EMPTY_TUPLE)
      return
    if len(items) > 3:
      self._write(_MARK)
    for item in items:
      self._save(item)
    self._write(_TUPLES.get(len(items), _TUPLE))

  def _ordered_dict(self, items):
    self._global("collections", "OrderedDict")
    self._write(_EMPTY_TUPLE, _REDUCE)
    if items:
      self._write(_MARK)
      for key, value in items:
        if not isinstance(key, (str, int)) or isinstance(key, bool):
          raise TypeError(f"a .pt file's dict keys must be str or int, not {type(key).__name__} ({key!r})")
        self._save(key)
        self._save(value)
      self._write(_SETITEMS)

  def _int(self, value: int):
    if 0 <= value < 1 << 8:
      self._write(_BININT1, struct.pack("<B", value))
    elif 0 <= value < 1 << 16:
      self._write(_BININT2, struct.pack("<H", value))
    elif -(1 << 31) <= value < 1 << 31:
      self._write(_BININT, struct.pack("<i", value))
    else:
      data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
      if len(data) > 255:
        raise ValueError(f"an int of {value.bit_length()} bits is too large for a .pt file")
      self._write(_LONG1, struct.pack("<B", len(data)), data)

  def _tensor(self, array: np.ndarray):
    name = _STORAGE_NAMES.get(array.dtype.newbyteorder("="))
    if name is None:
      raise TypeError(f"arrays of dtype {array.dtype} cannot be written to a .pt file; supported: "
                      f"{', '.join(sorted(str(d) for d in _STORAGE_NAMES))}")
    array = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)  # 0-d stays 0-d
    key = str(len(self.storages))
    self.storages.append((key, array.tobytes()))
    strides = tuple(s // array.itemsize for s in array.strides)  # C order, in elements
    self._global("torch._utils", "_rebuild_tensor_v2")
    self._write(_MARK)
    self._write(_MARK)  # the storage: a persistent id, stored as the archive record data/<key>
    self._save("storage")
    self._global("torch", name)
    for item in (key, "cpu", int(array.size)):
      self._save(item)
    self._write(_TUPLE, _BINPERSID)
    for item in (0, tuple(int(d) for d in array.shape), strides, False):
      self._save(item)
    self._ordered_dict([])  # backward hooks
    self._write(_TUPLE, _REDUCE)

  def _save(self, obj):
    if obj is None:
      self._write(_NONE)
    elif isinstance(obj, bool):
      self._write(_TRUE if obj else _FALSE)
    elif isinstance(obj, int):
      self._int(obj)
    elif isinstance(obj, float):
      self._write(_BINFLOAT, struct.pack(">d", obj))
    elif isinstance(obj, str):
      data = obj.encode("utf-8", "surrogatepass")
      self._write(_BINUNICODE, struct.pack("<I", len(data)), data)
    elif isinstance(obj, tuple):
      self._tuple(obj)
    elif isinstance(obj, list):
      self._write(_EMPTY_LIST)
      if obj:
        self._write(_MARK)
        for item in obj:
          self._save(item)
        self._write(_APPENDS)
    elif isinstance(obj, Mapping):
      self._ordered_dict(list(obj.items()))
    elif isinstance(obj, (np.ndarray, np.generic)) or hasattr(obj, "__array__"):
      self._tensor(np.asarray(obj))
    else:
      raise TypeError(f"{type(obj).__name__} cannot be written to a .pt file (arrays, dicts, lists, tuples, str, "
                      "int, float, bool and None can)")


def _add_record(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
  """Adds a stored record whose data starts at a multiple of ALIGNMENT, padded through its extra field."""
  info = zipfile.ZipInfo(name, date_time=_DATE_TIME)
  info.compress_type = zipfile.ZIP_STORED
  header = 30 + len(name.encode()) + 4  # local file header, file name, the padding field's id and size
  if len(data) * 1.05 > zipfile.ZIP64_LIMIT:
    header += 20  # zipfile adds a zip64 extra field to the local header of a large record
  padding = -(archive.fp.tell() + header) % ALIGNMENT
  info.extra = _PADDING_ID + struct.pack("<H", padding) + b"\0" * padding
  archive.writestr(info, data)


def torch_file_bytes(obj) -> bytes:
  """The bytes of the `.pt` file holding `obj` (see the module docstring for what `obj` may contain)."""
  pickler = _Pickler()
  data_pkl = pickler.dump(obj)
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
    _add_record(archive, f"{ROOT}/data.pkl", data_pkl)
    _add_record(archive, f"{ROOT}/byteorder", b"little")
    for key, data in pickler.storages:
      _add_record(archive, f"{ROOT}/data/{key}", data)
    _add_record(archive, f"{ROOT}/version", _FORMAT_VERSION + b"\n")
  return buffer.getvalue()


def save_torch_file(path, obj) -> None:
  """Writes `obj` to `path` as `torch.save(obj, path)` would (zip format, CPU tensors), atomically."""
  content = torch_file_bytes(obj)
  files.atomic_write(path, lambda f: f.write(content))
