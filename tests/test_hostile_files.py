"""Hostile and broken files against the torch reader: each one is refused with a one-line TorchFileError naming
the file and the reason, quickly, without allocating what the file merely declares.

Every file is built here, byte by byte or with `pickle` / `zipfile` (no torch). Each load runs in a child
process under an address-space limit (`RLIMIT_AS`, 2 GiB), so a regression that allocates what a file declares
fails with a MemoryError in the child (reported as such, not as the expected reason) instead of swapping.
"""
import io
import json
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

from jaxmia.convert import torch_reader
from jaxmia.convert.torch_reader import TorchFileError, flatten_tensors, load_torch_file

ADDRESS_SPACE = 2 << 30
SECONDS = 5.0  # a refusal must come this fast (measured inside the child, imports excluded)

_CHILD = r"""
import contextlib, io, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
entry, path, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
from jaxmia.convert import torch_reader
if entry == "inspect":
  from jaxmia.convert.__main__ import inspect_file
out, result = io.StringIO(), {{"error": None}}
start = time.perf_counter()
try:
  with contextlib.redirect_stdout(out):
    if entry == "allocate":
      bytearray(int(path))
    elif entry == "inspect":
      inspect_file(path)
    elif entry == "flatten_tensors":
      torch_reader.flatten_tensors(torch_reader.load_torch_file(path), **kwargs)
    else:
      getattr(torch_reader, entry)(path, **kwargs)
except BaseException as e:  # report everything, MemoryError and RecursionError included
  result = {{"error": type(e).__name__, "message": str(e)}}
result["seconds"] = time.perf_counter() - start
result["stdout"] = out.getvalue()
print(json.dumps(result))
"""


def _limit_address_space():
  resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _run_limited(entry: str, path, **kwargs) -> dict:
  """Runs `torch_reader.<entry>(path, **kwargs)` (or `inspect`) in a child limited to ADDRESS_SPACE bytes."""
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu")
  try:
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(limit=ADDRESS_SPACE), entry, str(path),
                           json.dumps(kwargs)], capture_output=True, text=True, timeout=60, env=env)
  except subprocess.TimeoutExpired:
    return {"error": "timed out after 60 s"}
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.splitlines()[-1])


def _assert_refused(path, reason: str, entry: str = "load_torch_file", **kwargs):
  result = _run_limited(entry, path, **kwargs)
  assert result["error"] == "TorchFileError", result
  message = result["message"]
  assert message.startswith(f"{path}: "), message  # names the file ...
  assert "\n" not in message  # ... in one line ...
  assert re.search(reason, message), (reason, message)  # ... with the reason
  assert result["seconds"] < SECONDS, result


# ------------------------------------------------------------------------------------------------------------
# Builders: pickle opcodes, torch.save zip and legacy layouts, zips with chosen headers.


def _push(value) -> bytes:
  """Protocol-2 opcodes that push `value` (no memo, no PROTO, no STOP)."""
  buffer = io.BytesIO()
  pickler = pickle.Pickler(buffer, protocol=2)
  pickler.fast = True
  pickler.dump(value)
  return buffer.getvalue()[2:-1]


def _global(module: str, name: str) -> bytes:
  return f"c{module}\n{name}\n".encode()


def _tensor_pickle(numel, shape, stride, offset=0, storage="FloatStorage", legacy=False) -> bytes:
  """`torch._utils._rebuild_tensor_v2(<storage '0' of numel elements>, offset, shape, stride)`, as torch writes."""
  pid = (b"(" + _push("storage") + _global("torch", storage) + _push("0") + _push("cpu") + _push(numel)
         + (_push(None) if legacy else b"") + b"tQ")
  return (b"\x80\x02" + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _push(offset)
          + _push(tuple(shape)) + _push(tuple(stride)) + b"tR.")


def _zip(members) -> bytes:
  """A zip written by hand: members are (name, bytes as stored, method, crc32, declared uncompressed size)."""
  out, directory = io.BytesIO(), []
  for name, stored, method, crc, size in members:
    name = name.encode()
    directory.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(stored), size,
                                 len(name), 0, 0, 0, 0, 0, out.tell()) + name)
    out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(stored), size, len(name), 0)
              + name + stored)
  start = out.tell()
  out.write(b"".join(directory))
  out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), out.tell() - start, start, 0))
  return out.getvalue()


def _stored(name: str, data: bytes):
  return name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)


def _torch_zip(pickle_bytes: bytes, storage: bytes) -> bytes:
  return _zip([_stored("archive/data.pkl", pickle_bytes), _stored("archive/byteorder", b"little"),
               _stored("archive/data/0", storage)])


def _legacy_file(object_pickle: bytes, count: int, data: bytes) -> bytes:
  """A legacy torch.save file: magic, protocol, system info, the object, the keys, then storage '0'."""
  head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
  return head + object_pickle + pickle.dumps(["0"], protocol=2) + struct.pack("<q", count) + data


def _deflated_zeros(mib: int) -> bytes:
  """A raw deflate stream inflating to `mib` MiB of zeros, ~1 kB per MiB: one fully flushed block repeated."""
  compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
  block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
  return block * mib + compressor.flush()


def _crc_of_zeros(mib: int) -> int:
  crc, block = 0, bytes(1 << 20)
  for _ in range(mib):
    crc = zlib.crc32(block, crc)
  return crc


ARANGE = np.arange(12, dtype=np.float32)


def test_builders_make_valid_files(tmp_path):
  """The builders are right: with honest numbers they make files that load to the expected tensors."""
  transposed = _tensor_pickle(12, (4, 3), (1, 4))
  zipped = tmp_path / "valid.pth"
  zipped.write_bytes(_torch_zip(transposed, ARANGE.tobytes()))
  np.testing.assert_array_equal(load_torch_file(zipped), ARANGE.reshape(3, 4).T)
  legacy = tmp_path / "valid_legacy.pth"
  legacy.write_bytes(_legacy_file(_tensor_pickle(12, (4, 3), (1, 4), legacy=True), 12, ARANGE.tobytes()))
  np.testing.assert_array_equal(load_torch_file(legacy), ARANGE.reshape(3, 4).T)
  inflated = tmp_path / "deflated.pth"  # a compressed record read within the caps
  inflated.write_bytes(_zip([_stored("archive/data.pkl", _tensor_pickle(1 << 18, (1 << 18,), (1,))),
                             ("archive/data/0", _deflated_zeros(1), zipfile.ZIP_DEFLATED, _crc_of_zeros(1),
                              1 << 20)]))
  assert np.count_nonzero(load_torch_file(inflated)) == 0 and load_torch_file(inflated).shape == (1 << 18,)
  assert load_torch_file(b"\x80\x02" + _global("__builtin__", "bytearray") + _push(16) + b"\x85R.") == bytes(16)
  result = _run_limited("load_torch_file", zipped)
  assert result["error"] is None and result["seconds"] < SECONDS


def test_the_address_space_limit_is_real():
  """The child really cannot allocate 3 GiB, so a regression that does shows up as a MemoryError."""
  assert _run_limited("allocate", 3 << 30)["error"] == "MemoryError"
  assert _run_limited("allocate", 256 << 20)["error"] is None


# ------------------------------------------------------------------------------------------------------------
# Sizes a pickle declares.


@pytest.mark.parametrize("name, content, reason", [
    ("bytearray_8gib", b"\x80\x02" + _global("__builtin__", "bytearray") + _push(8 << 30) + b"\x85R.",
     r"a bytearray\(8,589,934,592\) call would allocate 8,589,934,592 bytes.*max_output_bytes"),
    ("bytes_8gib", b"\x80\x02" + _global("__builtin__", "bytes") + _push(8 << 30) + b"\x85R.",
     r"a bytes\(8,589,934,592\) call would allocate"),
    ("binbytes8_1tib", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b".",
     r"BINBYTES8 at byte 2 declares 1,099,511,627,776 bytes but only 1 bytes follow"),
    ("binunicode8_1tib", b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b".",
     r"BINUNICODE8 at byte 2 declares 1,099,511,627,776 bytes"),
    ("bytearray8_1tib", b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b".",
     r"BYTEARRAY8 at byte 2 declares 1,099,511,627,776 bytes"),
    ("binbytes_4gib", b"\x80\x03B" + struct.pack("<L", 0xFFFFFFFF) + b".",
     r"BINBYTES at byte 2 declares 4,294,967,295 bytes"),
    ("frame_1tib", b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.",
     r"frame at byte 2 declares 1,099,511,627,776 bytes"),
    ("long4_4gib", b"\x80\x02\x8b" + struct.pack("<l", 0x7FFFFFFF) + b".",
     r"LONG4 at byte 2 declares 2,147,483,647 bytes"),
    ("memo_index_2g", b"\x80\x02Nr\xff\xff\xff\x7f.",
     r"LONG_BINPUT at byte 3 stores memo entry 2,147,483,647 after only 1 objects"),
])
def test_declared_pickle_sizes_are_refused(tmp_path, name, content, reason):
  path = tmp_path / f"{name}.pkl"
  path.write_bytes(content)
  _assert_refused(path, reason)


def test_too_many_objects(tmp_path):
  path = tmp_path / "many_lists.pkl"  # 1.1 million empty lists, one byte each
  path.write_bytes(b"\x80\x02" + b"]" * 1_100_000 + b".")
  _assert_refused(path, r"makes more than 1,000,000 objects \(max_objects\)")
  few = tmp_path / "few_nones.pkl"
  few.write_bytes(b"\x80\x02](" + b"N" * 2000 + b"e.")
  assert load_torch_file(few) == [None] * 2000
  with pytest.raises(TorchFileError, match=r"more than 1,000 objects"):
    load_torch_file(few, max_objects=1000)


# ------------------------------------------------------------------------------------------------------------
# Storages and tensors.


def test_storage_declaring_more_than_its_record(tmp_path):
  path = tmp_path / "huge_numel.pth"  # 2**40 floats declared, 16 bytes present
  path.write_bytes(_torch_zip(_tensor_pickle(1 << 40, (1 << 40,), (1,)), bytes(16)))
  _assert_refused(path, r"storage '0' \(FloatStorage of 1,099,511,627,776 elements\) needs 4,398,046,511,104 "
                        r"bytes but its record archive/data/0 has only 16 bytes of data")


def test_zip_member_declaring_more_than_the_file(tmp_path):
  path = tmp_path / "lying_record.pth"  # the stored record's header claims ~4 GiB
  lying = ("archive/data/0", bytes(16), zipfile.ZIP_STORED, zlib.crc32(bytes(16)), 0xFFFFFFF0)
  path.write_bytes(_zip([_stored("archive/data.pkl", _tensor_pickle(1 << 30, (1 << 30,), (1,))), lying]))
  _assert_refused(path, r"zip member archive/data/0 declares 4,294,967,280 bytes, more than the whole file")


def test_legacy_storage_sizes(tmp_path):
  declared = tmp_path / "legacy_declared.pth"  # the persistent id declares 2**40 floats
  declared.write_bytes(_legacy_file(_tensor_pickle(1 << 40, (4,), (1,), legacy=True), 4, bytes(16)))
  _assert_refused(declared, r"storage '0' \(FloatStorage of 1,099,511,627,776 elements\) declares "
                            r"4,398,046,511,104 bytes, more than the limit of \d[\d,]* bytes \(the file's size")
  header = tmp_path / "legacy_header.pth"  # the storage's own element count says 2**40
  header.write_bytes(_legacy_file(_tensor_pickle(4, (4,), (1,), legacy=True), 1 << 40, bytes(16)))
  _assert_refused(header, r"file ends inside the data of storage '0' \(it declares 4,398,046,511,104 bytes, "
                          r"16 bytes remain\)")


@pytest.mark.parametrize("name, shape, stride, offset, reason", [
    ("zero_strides", (1 << 20, 1 << 20), (0, 0), 0,
     r"a tensor of shape \(1048576, 1048576\) \(stride \(0, 0\)\) would allocate 4,398,046,511,104 bytes.*"
     r"max_output_bytes"),
    ("huge_numel_overflowing_int64", (1 << 62, 4), (0, 1), 0, r"would allocate 73,786,976,294,838,206,464 bytes"),
    ("stride_out_of_storage", (4, 4), (1 << 62, 1), 0, r"reaches element 13,835,058,055,282,163,715 of a storage "
                                                       r"with 4 elements"),
    ("offset_out_of_storage", (2,), (1,), 3, r"reaches element 4 of a storage with 4 elements"),
    ("negative_stride", (4,), (-1,), 3, r"invalid tensor geometry: shape \(4,\), stride \(-1,\)"),
    ("negative_offset", (4,), (1,), -4, r"invalid tensor geometry: .* offset -4"),
    ("negative_size", (-4,), (1,), 0, r"invalid tensor geometry: shape \(-4,\)"),
])
def test_tensor_views_stay_inside_their_storage(tmp_path, name, shape, stride, offset, reason):
  content = _tensor_pickle(4, shape, stride, offset)
  zipped = tmp_path / f"{name}.pth"
  zipped.write_bytes(_torch_zip(content, bytes(16)))
  _assert_refused(zipped, reason)
  legacy = tmp_path / f"{name}_legacy.pth"
  legacy.write_bytes(_legacy_file(_tensor_pickle(4, shape, stride, offset, legacy=True), 4, bytes(16)))
  _assert_refused(legacy, reason)


def test_expanded_tensors_load_within_the_output_limit(tmp_path):
  """A stride-0 (expanded) tensor is valid torch; it may materialise more than its storage, up to the limit."""
  path = tmp_path / "expanded.pth"
  path.write_bytes(_torch_zip(_tensor_pickle(12, (1000, 12), (0, 1)), ARANGE.tobytes()))
  with pytest.raises(TorchFileError, match=r"would allocate 48,000 bytes.*max_output_bytes"):
    load_torch_file(path)  # default: twice the file's size
  loaded = load_torch_file(path, max_output_bytes=48_000)
  np.testing.assert_array_equal(loaded, np.broadcast_to(ARANGE, (1000, 12)))
  assert loaded.flags.c_contiguous


# ------------------------------------------------------------------------------------------------------------
# Zip bombs and truncation.


@pytest.fixture(scope="module")
def bomb_stream():
  """3 GiB of zeros deflated to about 3 MB, and its CRC."""
  return _deflated_zeros(3072), _crc_of_zeros(3072)


def test_zip_bomb_is_refused_before_inflating(tmp_path, bomb_stream):
  stream, crc = bomb_stream
  data_pkl = _stored("archive/data.pkl", _tensor_pickle(3 << 28, (3 << 28,), (1,)))
  honest = tmp_path / "bomb.pth"  # declares its 3 GiB honestly
  honest.write_bytes(_zip([data_pkl, ("archive/data/0", stream, zipfile.ZIP_DEFLATED, crc, 3 << 30)]))
  assert honest.stat().st_size < 4 << 20
  _assert_refused(honest, r"zip member archive/data/0 inflates to 3,221,225,472 bytes, more than "
                          r"max_member_bytes \(2,147,483,648 bytes\)")
  # A header that lies (1 KiB) is read only that far, and then fails its CRC.
  lying = tmp_path / "lying_bomb.pth"
  lying.write_bytes(_zip([_stored("archive/data.pkl", _tensor_pickle(256, (256,), (1,))),
                          ("archive/data/0", stream, zipfile.ZIP_DEFLATED, crc, 1024)]))
  _assert_refused(lying, r"BadZipFile: Bad CRC-32 for file 'archive/data/0'")


def test_decompression_caps_are_keyword_arguments(tmp_path):
  one_mib = ("archive/data/0", _deflated_zeros(1), zipfile.ZIP_DEFLATED, _crc_of_zeros(1), 1 << 20)
  path = tmp_path / "deflated.pth"
  path.write_bytes(_zip([_stored("archive/data.pkl", _tensor_pickle(1 << 18, (1 << 18,), (1,))), one_mib]))
  assert load_torch_file(path).shape == (1 << 18,)
  with pytest.raises(TorchFileError, match=r"inflates to 1,048,576 bytes, more than max_member_bytes"):
    load_torch_file(path, max_member_bytes=1 << 19)
  with pytest.raises(TorchFileError, match=r"max_decompressed_bytes"):
    load_torch_file(path, max_decompressed_bytes=1 << 19)


def test_zip_directory_with_too_many_entries(tmp_path):
  members = [_stored("archive/data.pkl", pickle.dumps(None, protocol=2))]
  members += [_stored(f"archive/extra/{i}", b"") for i in range(40)]
  path = tmp_path / "many_entries.pth"
  path.write_bytes(_zip(members))
  assert load_torch_file(path) is None
  with pytest.raises(TorchFileError, match=r"zip directory of [\d,]+ bytes may list more than 10 entries"):
    load_torch_file(path, max_objects=10)


def test_truncated_files(tmp_path):
  valid_zip = _torch_zip(_tensor_pickle(12, (12,), (1,)), ARANGE.tobytes())
  valid_legacy = _legacy_file(_tensor_pickle(12, (12,), (1,), legacy=True), 12, ARANGE.tobytes())
  cases = {
      "truncated_zip.pth": (valid_zip[:len(valid_zip) // 2], r"BadZipFile"),
      "truncated_payload.pkl": (pickle.dumps("x" * 1000, protocol=2)[:500],
                                r"BINUNICODE at byte 2 declares 1,000 bytes but only 493 bytes follow"),
      "truncated_before_stop.pkl": (pickle.dumps([1, 2, 3], protocol=2)[:-1],
                                    r"the pickle is truncated: it ends inside an opcode at byte \d+"),
      "truncated_legacy.pth": (valid_legacy[:-8], r"file ends inside the data of storage '0' \(it declares 48 "
                                                  r"bytes, 40 bytes remain"),
      "empty.pth": (b"", r"the pickle is truncated: it ends inside an opcode at byte 0"),
  }
  for name, (content, reason) in cases.items():
    path = tmp_path / name
    path.write_bytes(content)
    _assert_refused(path, reason)


# ------------------------------------------------------------------------------------------------------------
# Nesting and shared structure.


def test_deep_nesting(tmp_path):
  lists = tmp_path / "nested_lists.pkl"  # 50,000 lists, each appended into the one before
  lists.write_bytes(b"\x80\x02" + b"]" * 50_000 + b"a" * 49_999 + b".")
  _assert_refused(lists, r"its data nests more than 100 levels deep \(max_depth\)")
  marks = tmp_path / "nested_marks.pkl"  # 50,000 nested MARK ... TUPLE
  marks.write_bytes(b"\x80\x02" + b"(" * 50_000 + b"t" * 50_000 + b".")
  _assert_refused(marks, r"the pickle nests more than 100 levels deep \(max_depth\)")
  value = []
  for _ in range(150):
    value = [value]
  deep = tmp_path / "nested_150.pkl"
  deep.write_bytes(pickle.dumps(value, protocol=2))
  with pytest.raises(TorchFileError, match="max_depth"):
    load_torch_file(deep)
  assert load_torch_file(deep, max_depth=200) == value


def test_reference_cycles(tmp_path):
  cyclic_list = []
  cyclic_list.append(cyclic_list)
  cyclic_dict = {"weights": [1.0]}
  cyclic_dict["self"] = {"parent": cyclic_dict}
  for name, value in (("self_list.pkl", cyclic_list), ("self_dict.pkl", cyclic_dict)):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(value, protocol=2))
    _assert_refused(path, r"its data contains itself \(a reference cycle\)")


def _shared_levels(levels: int):
  value = []
  for _ in range(levels):
    value = [value, value]  # 2**levels paths, levels + 1 objects
  return value


def test_shared_structure_loads_once_and_walks_bounded(tmp_path):
  path = tmp_path / "shared_59.pkl"
  path.write_bytes(pickle.dumps(_shared_levels(59), protocol=2))
  assert path.stat().st_size < 600
  result = _run_limited("load_torch_file", path)
  assert result["error"] is None and result["seconds"] < SECONDS, result
  loaded = load_torch_file(path)
  assert loaded[0] is loaded[1] and loaded[0][0] is loaded[0][1]  # sharing kept, not expanded
  result = _run_limited("flatten_tensors", path)  # 2**59 paths: the walk stops at max_objects
  assert result["error"] == "TorchFileError" and result["seconds"] < SECONDS, result
  assert "the structure expands to more than 1,000,000 entries" in result["message"]
  with pytest.raises(TorchFileError, match=r"expands to more than 1,000 entries"):
    flatten_tensors(loaded, max_objects=1000)
  # Shared arrays (tied weights) are still listed under every path.
  tied = np.arange(3.0)
  assert flatten_tensors({"a": tied, "b": [tied]}) == {"a": tied, "b.0": tied}


def test_inspect_prints_shared_structure_once(tmp_path):
  path = tmp_path / "shared_59.pkl"
  path.write_bytes(pickle.dumps(_shared_levels(59), protocol=2))
  result = _run_limited("inspect", path)
  assert result["error"] is None and result["seconds"] < SECONDS, result
  lines = result["stdout"].splitlines()
  # The innermost [[], []] prints its two empty lists; every level above prints its second half as a reference.
  assert len(lines) == 2 + 58 + 1
  assert lines[-1] == "0 tensors, 0 values"
  assert lines[-2] == "1: same object as 0"
  references = [line.split(": same object as ") for line in lines if ": same object as " in line]
  assert len(references) == 58 and all(second == first[:-1] + "1" for first, second in
                                       ((right, left) for left, right in references))


def test_inspect_refuses_hostile_files_in_one_line(tmp_path):
  path = tmp_path / "bytearray.pkl"
  path.write_bytes(b"\x80\x02" + _global("__builtin__", "bytearray") + _push(8 << 30) + b"\x85R.")
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "jaxmia.convert", "inspect", str(path)], capture_output=True,
                        text=True, timeout=120, env=env, preexec_fn=_limit_address_space)
  assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert errors == [f"error: {path}: a bytearray(8,589,934,592) call would allocate "
                    f"8,589,934,592 bytes, which with the 0 bytes already read exceeds the limit of "
                    f"{2 * path.stat().st_size} bytes (max_output_bytes, default twice max_total_bytes) "
                    f"(--verbose or JAXMIA_TRACEBACK=1 shows the traceback)"]


def test_limits_are_validated():
  with pytest.raises(ValueError, match="max_depth must be an integer >= 1"):
    load_torch_file(b"N.", max_depth=0)
  with pytest.raises(ValueError, match="max_storage_bytes must be an integer >= 0 or None"):
    load_torch_file(b"N.", max_storage_bytes=-1)
  with pytest.raises(ValueError, match="max_objects must be an integer >= 1"):
    torch_reader.read_nvlabs_pickle(b"N.", max_objects=0)
