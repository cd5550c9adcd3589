"""The torch-free PyTorch reader: exact values on real torch.save files, refusal of code, NVlabs pickles."""
import collections
import contextlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

from jaxmia.convert import torch_reader
from jaxmia.convert.torch_reader import (NVlabsNetwork, TorchFileError, UnsafePickleError, flatten_tensors,
                                         load_torch_file, read_nvlabs_pickle)


@pytest.fixture(scope="module")
def torch_files(fixtures_dir):
  folder = fixtures_dir / "torch_files"
  with np.load(folder / "expected.npz") as expected:
    arrays = {k: expected[k] for k in expected.files}
  meta = json.loads(str(arrays.pop("meta")))
  return folder, arrays, meta


FILES = ["resnet18_zip.pth", "resnet18_legacy.pth", "formats_zip.pth", "formats_legacy.pth",
         "ppa_checkpoint.pth", "ppa_checkpoint_compiled.pth", "ppa_w_latents.pt"]


def _assert_matches_skeleton(obj, skeleton, path):
  """Checks `obj` has exactly the structure recorded by the fixture generator (see fixtures README)."""
  if isinstance(skeleton, dict) and "$dict" in skeleton:
    assert type(obj) is dict, path
    assert list(obj) == [k for k, _ in skeleton["items"]], path  # order and int keys
    for k, v in skeleton["items"]:
      _assert_matches_skeleton(obj[k], v, f"{path}.{k}")
  elif isinstance(skeleton, dict) and "$tuple" in skeleton:
    assert type(obj) is tuple and len(obj) == len(skeleton["$tuple"]), path
    for i, (o, s) in enumerate(zip(obj, skeleton["$tuple"])):
      _assert_matches_skeleton(o, s, f"{path}.{i}")
  elif isinstance(skeleton, dict) and "$tensor" in skeleton:
    assert isinstance(obj, np.ndarray) and obj.flags.c_contiguous, path
    assert obj.shape == tuple(skeleton["shape"]), path
    assert obj.dtype == np.dtype("float32" if skeleton["dtype"] == "bfloat16" else skeleton["dtype"]), path
  elif isinstance(skeleton, list):
    assert type(obj) is list and len(obj) == len(skeleton), path
    for i, (o, s) in enumerate(zip(obj, skeleton)):
      _assert_matches_skeleton(o, s, f"{path}.{i}")
  else:
    assert type(obj) is type(skeleton) and obj == skeleton, (path, obj, skeleton)


@pytest.mark.parametrize("name", FILES)
def test_reads_torch_save_files_exactly(torch_files, name):
  folder, expected, meta = torch_files
  assert set(meta["files"]) == set(FILES)
  obj = load_torch_file(folder / name)
  _assert_matches_skeleton(obj, meta["files"][name]["skeleton"], name)
  flat = {(f"{name}/{k[len(name) + 1:]}" if k != name else k): v for k, v in flatten_tensors(obj, name).items()}
  want = sorted(k for k in expected if k == name or k.startswith(name + "/"))
  assert sorted(flat) == want
  for key in want:
    assert flat[key].dtype == expected[key].dtype, key
    assert np.array_equal(flat[key], expected[key]), key


def test_reads_from_bytes_and_bfloat16_is_exact(torch_files):
  folder, expected, meta = torch_files
  for name in ("formats_zip.pth", "formats_legacy.pth"):
    obj = load_torch_file((folder / name).read_bytes())
    bf16 = obj["bfloat16"]
    assert bf16.dtype == np.float32 and f"{name}/bfloat16" in meta["bfloat16_keys_stored_as_float32"]
    assert np.array_equal(bf16, expected[f"{name}/bfloat16"])
    assert not np.any(bf16.view(np.uint32) & 0xFFFF)  # widened bfloat16: low 16 bits are zero
    # Views of one storage are independent contiguous copies with the right offsets and strides.
    base = obj["shared"]["base"]
    assert np.array_equal(obj["shared"]["head"], base[2:8])
    assert np.array_equal(obj["shared"]["tail"], base[12:24].reshape(3, 4))
    assert np.array_equal(obj["shared"]["every_third"], base[1::3])
    assert np.array_equal(obj["expanded"][0], obj["expanded"][1])
    assert obj["python"]["huge_int"] == 2 ** 70 and obj["python"][10] == "int key"


def test_ppa_checkpoint(torch_files):
  folder, _, _ = torch_files
  resnet = load_torch_file(folder / "resnet18_zip.pth")
  for name, prefix in (("ppa_checkpoint.pth", "model."), ("ppa_checkpoint_compiled.pth", "model._orig_mod.")):
    ckpt = load_torch_file(folder / name)
    assert list(ckpt) == ["epoch", "model_state_dict", "optimizer_state_dict"] and ckpt["epoch"] == 100
    model = ckpt["model_state_dict"]
    assert [k[len(prefix):] for k in model] == list(resnet) and all(k.startswith(prefix) for k in model)
    assert all(model[prefix + k].shape == v.shape for k, v in resnet.items())
    optimizer = ckpt["optimizer_state_dict"]
    assert list(optimizer["state"]) == list(range(62))
    for entry in optimizer["state"].values():
      assert entry["step"].shape == () and entry["step"] == 2.0
      assert entry["exp_avg"].shape == entry["exp_avg_sq"].shape and np.all(entry["exp_avg_sq"] >= 0)
    (group,) = optimizer["param_groups"]
    assert group["lr"] == 1e-3 and group["betas"] == (0.9, 0.999) and group["params"] == list(range(62))


# ------------------------------------------------------------------------------------------------------------
# Code in a file is never run.


class _Reduce:
  """Pickles as `func(*args)`."""

  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


def _malicious_payloads(marker):
  return {
      "posix.system": _Reduce(os.system, f"touch {marker}"),
      "builtins.eval": _Reduce(eval, f"open({str(marker)!r}, 'w').close()"),
      "subprocess.call": _Reduce(subprocess.call, ["touch", str(marker)]),
      "builtins.exec": _Reduce(exec, f"open({str(marker)!r}, 'w').close()"),
      "builtins.getattr": _Reduce(getattr, "text", "upper"),
  }


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_refuses_code_in_plain_pickles(tmp_path, protocol):
  marker = tmp_path / "pwned"
  for global_name, payload in _malicious_payloads(marker).items():
    path = tmp_path / f"evil_{protocol}.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0], "x": payload}, protocol=protocol))
    with pytest.raises(UnsafePickleError) as info:
      load_torch_file(path)
    if protocol < 3 and global_name == "subprocess.call":
      global_name = "commands.call"  # pickle writes the Python 2 module name
    assert info.value.global_name == global_name and str(path) in str(info.value)
    assert f"`{global_name}`" in str(info.value)
    with pytest.raises(UnsafePickleError):
      read_nvlabs_pickle(path)
    assert not marker.exists()


def test_refuses_code_inside_torch_save_files(torch_files, tmp_path):
  folder, _, _ = torch_files
  marker = tmp_path / "pwned"
  payload = pickle.dumps({"conv1.weight": _Reduce(os.system, f"touch {marker}")}, protocol=2)
  # Zip layout: replace data.pkl of a real file.
  evil_zip = tmp_path / "evil_zip.pth"
  with zipfile.ZipFile(folder / "resnet18_zip.pth") as src, zipfile.ZipFile(evil_zip, "w") as dst:
    for item in src.infolist():
      dst.writestr(item, payload if item.filename.endswith("/data.pkl") else src.read(item))
  # Legacy layout: the object pickle follows the magic number, protocol and system info.
  header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
  evil_legacy = tmp_path / "evil_legacy.pth"
  evil_legacy.write_bytes(header + payload + pickle.dumps([], protocol=2))
  for path in (evil_zip, evil_legacy):
    with pytest.raises(UnsafePickleError, match="posix.system"):
      load_torch_file(path)
  assert not marker.exists()


@pytest.mark.parametrize("global_line", [b"torch._utils\n_rebuild_tensor_v2\n", b"collections\nOrderedDict\n",
                                         b"numpy\ndtype\n", b"builtins\nset\n"])
def test_pickle_cannot_modify_whitelisted_globals(torch_files, global_line):
  """BUILD on a whitelisted global itself (not an instance) must fail, not rewrite it for later loads."""
  folder, expected, _ = torch_files
  defaults = torch_reader._rebuild_tensor.__defaults__
  # GLOBAL; state (None, {'__defaults__': (1,), '__setstate__': 2}); BUILD; STOP
  evil = (b"\x80\x02c" + global_line + b"N}X\x0c\x00\x00\x00__defaults__K\x01\x85sX\x0c\x00\x00\x00__setstate__K\x02s"
          b"\x86b.")
  with pytest.raises(TorchFileError):
    load_torch_file(evil)
  assert torch_reader._rebuild_tensor.__defaults__ == defaults
  assert np.array_equal(load_torch_file(folder / "ppa_w_latents.pt"), expected["ppa_w_latents.pt"])


# ------------------------------------------------------------------------------------------------------------
# Broken files give one clear error.


def test_corrupt_files_give_clear_errors(torch_files, tmp_path):
  folder, _, _ = torch_files
  cases = {
      "truncated_zip.pth": (folder / "resnet18_zip.pth").read_bytes()[:100_000],
      "truncated_legacy.pth": (folder / "resnet18_legacy.pth").read_bytes()[:150_000],
      "legacy_header_only.pth": (folder / "formats_legacy.pth").read_bytes()[:200],
      "garbage.pth": bytes(range(256)) * 4,
      "empty.pth": b"",
      "not_torch.zip": _zip_bytes({"readme.txt": b"hello"}),
  }
  for name, content in cases.items():
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TorchFileError) as info:
      load_torch_file(path)
    assert str(path) in str(info.value), name
  with pytest.raises(FileNotFoundError, match="no such file"):
    load_torch_file(tmp_path / "missing.pth")


def _zip_bytes(records):
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    for name, data in records.items():
      archive.writestr(name, data)
  return buffer.getvalue()


def test_tensor_outside_its_storage_is_an_error(torch_files, tmp_path):
  """A tensor whose geometry reaches past its storage must not read foreign memory."""
  folder, _, _ = torch_files
  with zipfile.ZipFile(folder / "ppa_w_latents.pt") as src:
    records = {item.filename: src.read(item) for item in src.infolist()}
  key = next(k for k in records if k.endswith("/data/0"))
  records[key] = records[key][:100]  # storage of 4 * 512 floats cut to 25
  path = tmp_path / "short_storage.pt"
  path.write_bytes(_zip_bytes(records))
  with pytest.raises(TorchFileError, match="bytes of data"):
    load_torch_file(path)


# ------------------------------------------------------------------------------------------------------------
# NVlabs-style network pickle, written without torch and without NVlabs code.


@contextlib.contextmanager
def _stand_in_modules(contents):
  """Registers throwaway modules {name: {attr: value}} so `pickle` can name their functions and classes."""
  names = {".".join(n.split(".")[:i + 1]) for n in contents for i in range(n.count(".") + 1)}
  saved = {name: sys.modules.get(name) for name in names}
  try:
    for name in sorted(names):
      module = sys.modules[name] = types.ModuleType(name)
      for attr, value in contents.get(name, {}).items():
        value.__module__, value.__qualname__ = name, attr
        setattr(module, attr, value)
    yield {name: sys.modules[name] for name in contents}
  finally:
    for name, module in saved.items():
      if module is None:
        del sys.modules[name]
      else:
        sys.modules[name] = module


def _stand_in():
  """A fresh function that only serves as a name in a pickle."""
  def function(*args):
    raise AssertionError(f"stand-in called with {args}")
  return function


def _legacy_storage_file(array, storage_type):
  """A legacy `torch.save` file holding one storage, as `Storage.__reduce__` embeds it."""
  buffer = io.BytesIO()
  for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
    pickle.dump(obj, buffer, protocol=2)
  storage = object()

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", storage_type, "94123", "cpu", array.size, None) if obj is storage else None

  Pickler(buffer, protocol=2).dump(storage)
  pickle.dump(["94123"], buffer, protocol=2)
  buffer.write(struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes())
  return buffer.getvalue()


class _Tensor:
  def __init__(self, modules, array, parameter=False):
    self.modules, self.array, self.parameter = modules, np.asarray(array), parameter

  def __reduce__(self):
    storage_type = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}[self.array.dtype]
    storage = _Reduce(self.modules["torch.storage"]._load_from_bytes,
                      _legacy_storage_file(self.array.T.ravel(), getattr(self.modules["torch"], storage_type)))
    # Stored transposed (column-major), so the reader must honour the strides.
    stride = tuple(int(np.prod(self.array.shape[:i])) for i in range(self.array.ndim))
    tensor = _Reduce(self.modules["torch._utils"]._rebuild_tensor_v2, storage, 0, self.array.shape, stride,
                     False, collections.OrderedDict())
    if self.parameter:
      return self.modules["torch._utils"]._rebuild_parameter, (tensor, True, collections.OrderedDict())
    return tensor.__reduce__()


class _Persistent:
  """Pickles like an NVlabs `@persistent_class` module (source code + class name + instance state)."""

  def __init__(self, modules, source, class_name, params=(), buffers=(), children=(), init_kwargs=None,
               non_persistent=()):
    self.modules, self.source, self.class_name = modules, source, class_name
    self.state = {
        "training": False,
        "_parameters": collections.OrderedDict(params),
        "_buffers": collections.OrderedDict(buffers),
        "_non_persistent_buffers_set": set(non_persistent),
        "_forward_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict(children),
        "_init_args": (),
        "_init_kwargs": modules["dnnlib.util"].EasyDict(init_kwargs or {}),
    }

  def __reduce__(self):
    meta = dict(type="class", version=6, module_src=self.source, class_name=self.class_name, state=self.state)
    return self.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


def _nvlabs_pickle(source, rng, extra_state=None):
  """(pickle bytes, expected {network: (class, init_kwargs, state_dict)})."""
  storage_types = {name: type(name, (), {}) for name in ("FloatStorage", "LongStorage")}
  easy_dict = type("EasyDict", (dict,), {})
  with _stand_in_modules({
      "torch": storage_types,
      "torch._utils": {"_rebuild_tensor_v2": _stand_in(), "_rebuild_parameter": _stand_in()},
      "torch.storage": {"_load_from_bytes": _stand_in()},
      "torch_utils.persistence": {"_reconstruct_persistent_obj": _stand_in()},
      "dnnlib.util": {"EasyDict": easy_dict},
  }) as m:
    arrays = {k: rng.normal(size=s).astype(np.float32) for k, s in {
        "const": (4, 2, 2), "filter": (4, 4), "noise": (2, 2), "w": (3, 4), "b": (3,), "w_avg": (4,),
        "d_w": (1, 4), "p": (2,)}.items()}
    t = lambda k, **kw: _Tensor(m, arrays[k], **kw)  # noqa: E731
    fc = _Persistent(m, source, "FullyConnectedLayer", params=[("weight", t("w", parameter=True)),
                                                               ("bias", t("b", parameter=True))],
                     init_kwargs={"in_features": 4, "out_features": 3})
    block = _Persistent(m, source, "SynthesisBlock", params=[("const", t("const", parameter=True)),
                                                             ("skip_bias", None)],
                        buffers=[("resample_filter", t("filter")), ("cache", t("noise"))], non_persistent=["cache"],
                        init_kwargs={"resolution": 4})
    synthesis = _Persistent(m, source, "SynthesisNetwork", children=[("b4", block)])
    mapping = _Persistent(m, source, "MappingNetwork", buffers=[("w_avg", t("w_avg"))],
                          children=[("fc0", fc), ("embed", None)])
    generator_kwargs = {"z_dim": 4, "w_dim": 4, "c_dim": 0, "img_resolution": 4, "img_channels": 3,
                        "mapping_kwargs": easy_dict(num_layers=1), "synthesis_kwargs": easy_dict(conv_clamp=None)}
    generator = _Persistent(m, source, "Generator", children=[("synthesis", synthesis), ("mapping", mapping)],
                            init_kwargs=generator_kwargs)
    generator.state.update(extra_state or {})
    discriminator = _Persistent(m, source, "Discriminator", params=[("out.weight", t("d_w", parameter=True))],
                                init_kwargs={"c_dim": 0, "img_resolution": 4})
    augment = _Persistent(m, source, "AugmentPipe", buffers=[("p", t("p"))], init_kwargs={"xflip": 1})
    data = {"training_set_kwargs": easy_dict(path="faces.zip", resolution=4), "G": generator,
            "D": discriminator, "G_ema": generator, "augment_pipe": augment}
    content = pickle.dumps(data, protocol=4)
  generator_state = {"synthesis.b4.const": arrays["const"], "synthesis.b4.resample_filter": arrays["filter"],
                     "mapping.w_avg": arrays["w_avg"], "mapping.fc0.weight": arrays["w"],
                     "mapping.fc0.bias": arrays["b"]}
  plain_kwargs = dict(generator_kwargs, mapping_kwargs={"num_layers": 1}, synthesis_kwargs={"conv_clamp": None})
  expected = {"G": ("Generator", plain_kwargs, generator_state),
              "D": ("Discriminator", {"c_dim": 0, "img_resolution": 4}, {"out.weight": arrays["d_w"]}),
              "G_ema": ("Generator", plain_kwargs, generator_state),
              "augment_pipe": ("AugmentPipe", {"xflip": 1}, {"p": arrays["p"]})}
  return content, expected


def test_nvlabs_pickle_is_read_without_running_its_source(tmp_path):
  marker = tmp_path / "source_was_run"
  source = f"open({str(marker)!r}, 'w').close()\nclass Generator:\n  pass\n"
  content, expected = _nvlabs_pickle(source, np.random.default_rng(0))
  path = tmp_path / "network-snapshot.pkl"
  path.write_bytes(content)
  networks = read_nvlabs_pickle(path)
  assert not marker.exists()
  assert list(networks) == ["G", "D", "G_ema", "augment_pipe"]
  for name, (class_name, init_kwargs, state_dict) in expected.items():
    network = networks[name]
    assert isinstance(network, NVlabsNetwork) and network.class_name == class_name
    assert network.init_kwargs == init_kwargs and type(network.init_kwargs) is dict
    assert all(type(v) is dict for v in network.init_kwargs.values() if isinstance(v, dict))
    assert list(network.state_dict) == list(state_dict), name  # module.state_dict() order
    for key, value in state_dict.items():
      assert network.state_dict[key].dtype == value.dtype and np.array_equal(network.state_dict[key], value)
  assert flatten_tensors(networks["G"], "G")["G.mapping.fc0.bias"] is networks["G"].state_dict["mapping.fc0.bias"]
  # The plain reader refuses it, pointing at the NVlabs reader.
  with pytest.raises(UnsafePickleError, match="read_nvlabs_pickle"):
    load_torch_file(path)
  assert not marker.exists()


def test_nvlabs_pickle_with_code_in_the_state_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  content, _ = _nvlabs_pickle("", np.random.default_rng(1),
                              extra_state={"hook": _Reduce(os.system, f"touch {marker}")})
  with pytest.raises(UnsafePickleError, match="posix.system"):
    read_nvlabs_pickle(content)
  assert not marker.exists()


def test_plain_pickles_with_numpy_and_sets(tmp_path):
  value = {"a": np.arange(6.0).reshape(2, 3).T, "s": {1, 2}, "f": frozenset({3}), "b": b"\x00\xff",
           "x": np.float32(2.5), "c": 1 + 2j}
  for protocol in (2, 4, 5):
    loaded = load_torch_file(pickle.dumps(value, protocol=protocol))
    assert loaded.keys() == value.keys() and np.array_equal(loaded["a"], value["a"])
    assert loaded["a"].flags.writeable
    assert all(loaded[k] == value[k] for k in ("s", "f", "b", "x", "c"))
    assert type(loaded["x"]) is np.float32
  # Object arrays could hide arbitrary objects: refused.
  with pytest.raises(TorchFileError, match="dtype object"):
    load_torch_file(pickle.dumps(np.array([None, 1], dtype=object)))

