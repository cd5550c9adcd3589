"""The torch-free `.pt` writer: what it writes reads back bit-exactly through `torch_reader`, in PyTorch's zip
layout (aligned records, deterministic bytes), and — when a reference PyTorch is available
(`JAXMIA_TORCH_PYTHON`, a python with torch) — through `torch.load(..., weights_only=True)`."""
import io
import json
import os
import subprocess
import zipfile

import numpy as np
import pytest

from jaxmia.convert import torch_reader, torch_writer

TORCH_PYTHON = os.environ.get("JAXMIA_TORCH_PYTHON")
needs_torch = pytest.mark.skipif(not TORCH_PYTHON, reason="set JAXMIA_TORCH_PYTHON to a python with torch")


def _state_dict():
  """Arrays of every writable dtype, a 0-d one, an empty one, a non-contiguous and a big-endian one."""
  rng = np.random.default_rng(0)
  return {
      "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
      "fc.bias": rng.standard_normal(5),                                      # float64
      "half": rng.standard_normal((2, 3)).astype(np.float16),
      "bn.num_batches_tracked": np.array(17, np.int64),
      "ints": rng.integers(-2**31, 2**31, 9).astype(np.int32),
      "shorts": rng.integers(-2**15, 2**15, 4).astype(np.int16),
      "bytes": rng.integers(-128, 128, 4).astype(np.int8),
      "ubytes": rng.integers(0, 256, 4).astype(np.uint8),
      "mask": rng.random(6) > 0.5,
      "complex": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
      "empty": np.zeros((0, 3), np.float32),
      "strided": np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2].T,
      "big_endian": np.arange(6, dtype=">f4").reshape(2, 3) / 7,
  }


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
  native = b.dtype.newbyteorder("=")
  return a.dtype == native and a.shape == b.shape and a.tobytes() == b.astype(native, order="C").tobytes()


def test_latents_round_trip_bit_exactly(tmp_path):
  """PPA's latents ([N, 1, w_dim] float32) as the only object of the file, NaN and -0.0 payloads included."""
  w = np.random.default_rng(1).standard_normal((7, 1, 16)).astype(np.float32)
  w[0, 0, :3] = [np.nan, -0.0, np.inf]
  torch_writer.save_torch_file(tmp_path / "w.pt", w)
  back = torch_reader.load_torch_file(tmp_path / "w.pt")
  assert _same_bits(back, w)


def test_a_state_dict_round_trips_bit_exactly_with_its_order_and_plain_values(tmp_path):
  state = _state_dict()
  obj = {"model_state_dict": state, "epoch": 12, "lr": 0.001, "name": "résnet", "flags": [True, None, (1, -70000)],
         "huge": -2**70}
  torch_writer.save_torch_file(tmp_path / "c.pth", obj)
  back = torch_reader.load_torch_file(tmp_path / "c.pth")
  assert list(back) == list(obj) and list(back["model_state_dict"]) == list(state)
  for key, value in state.items():
    assert _same_bits(back["model_state_dict"][key], value), key
  assert (back["epoch"], back["lr"], back["name"], back["flags"], back["huge"]) == (
      12, 0.001, "résnet", [True, None, (1, -70000)], -2**70)


def test_pytorch_zip_layout_aligned_and_deterministic():
  state = _state_dict()
  content = torch_writer.torch_file_bytes(state)
  assert content == torch_writer.torch_file_bytes(dict(state))
  with zipfile.ZipFile(io.BytesIO(content)) as z:
    infos = z.infolist()
    names = [i.filename for i in infos]
    assert names == (["archive/data.pkl", "archive/byteorder"] + [f"archive/data/{k}" for k in range(len(state))]
                     + ["archive/version"])
    assert z.read("archive/byteorder") == b"little" and z.read("archive/version") == b"3\n"
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    for info in infos:  # local header (30 bytes) + name + extra field = where the record's data starts
      name_length, extra_length = np.frombuffer(content[info.header_offset + 26:info.header_offset + 30], "<u2")
      assert (info.header_offset + 30 + name_length + extra_length) % torch_writer.ALIGNMENT == 0, info.filename
    assert z.read("archive/data/0") == state["conv.weight"].tobytes()


@pytest.mark.parametrize("obj, message", [
    (np.array(["a"]), "dtype <U1 cannot"),
    ({(1, 2): np.zeros(1)}, "keys must be str or int"),
    ({"a": {1, 2}}, "set cannot be written"),
])
def test_what_cannot_be_written_is_named(tmp_path, obj, message):
  with pytest.raises(TypeError, match=message):
    torch_writer.save_torch_file(tmp_path / "x.pt", obj)
  assert not (tmp_path / "x.pt").exists()


_TORCH_LOAD = """
import json, sys
import numpy as np
import torch
obj = torch.load(sys.argv[1], weights_only=True)
tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
np.savez(sys.argv[2], **{k: v.numpy() for k, v in tensors.items()})
print(json.dumps({"type": type(obj).__name__, "keys": list(obj),
                  "contiguous": all(v.is_contiguous() for v in tensors.values())}))
"""


@needs_torch
def test_pytorch_loads_the_written_file_weights_only(tmp_path):
  state = _state_dict()
  torch_writer.save_torch_file(tmp_path / "s.pth", state)
  result = subprocess.run([TORCH_PYTHON, "-c", _TORCH_LOAD, str(tmp_path / "s.pth"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  info = json.loads(result.stdout.splitlines()[-1])
  assert info == {"type": "OrderedDict", "keys": list(state), "contiguous": True}
  with np.load(tmp_path / "out.npz") as loaded:
    for key, value in state.items():
      assert _same_bits(loaded[key], value), key
