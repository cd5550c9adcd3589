"""Weights folders (orbax checkpoint + jaxmia.json) and the `python -m jaxmia.convert` command line."""
import datetime
import hashlib
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxmia
from jaxmia import model_store, models
from jaxmia.defenses import mid
from jaxmia.models import stylegan2
from conftest import run_program
from jaxmia.convert.__main__ import inspect_file


def _variables(rng):
  return {
      "params": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
                          "bias": rng.normal(size=(4,)).astype(np.float16)},
                 "scale": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16),
                 "w_avg": np.float32(0.25) * np.ones((), np.float32)},
      "batch_stats": {"mean": rng.normal(size=(4,)), "count": np.array(2 ** 40, np.int64),
                      "mask": np.array([True, False])},
      "empty": {},
  }


def _assert_same_tree(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert isinstance(a, np.ndarray) and a.dtype == e.dtype and a.shape == e.shape
    assert np.array_equal(a, e)


def test_round_trip_is_exact_and_records_its_source(tmp_path):
  variables = _variables(np.random.default_rng(0))
  source = tmp_path / "weights.pth"
  source.write_bytes(b"pretend torch file \x00\xff" * 1000)
  folder = model_store.save_model(tmp_path / "out", variables, kind="stylegan2_generator",
                                module_kwargs={"z_dim": 8, "mapping_kwargs": {"num_layers": 2}}, source=source)
  assert str(folder) == str(tmp_path / "out")
  _assert_same_tree(model_store.load_variables(folder), variables)
  info = model_store.read_info(folder)
  assert info["kind"] == "stylegan2_generator"
  assert info["module_kwargs"] == {"z_dim": 8, "mapping_kwargs": {"num_layers": 2}}
  assert info["source"] == {"name": "weights.pth", "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
  assert info["jaxmia_version"] == jaxmia.__version__
  created = datetime.datetime.fromisoformat(info["created"])
  assert abs((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()) < 600
  assert json.loads((folder / "jaxmia.json").read_text()) == info


def test_relative_paths_and_overwrite(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  rng = np.random.default_rng(1)
  first, second = _variables(rng), _variables(rng)
  model_store.save_model("weights/run", first, kind="classifier", module_kwargs={"arch": "resnet18",
                                                                               "num_classes": 10})
  assert model_store.read_info(tmp_path / "weights" / "run")["source"] is None
  with pytest.raises(FileExistsError, match="overwrite"):
    model_store.save_model("weights/run", second, kind="classifier", module_kwargs={})
  _assert_same_tree(model_store.load_variables("weights/run"), first)  # a refused save leaves the folder intact
  model_store.save_model("weights/run", second, kind="mid_classifier", module_kwargs={"k": 1}, overwrite=True)
  _assert_same_tree(model_store.load_variables("weights/run"), second)
  assert model_store.read_info("weights/run")["kind"] == "mid_classifier"
  # overwrite never deletes a folder that is not a weights folder.
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "todo.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="not a jaxmia weights folder"):
    model_store.save_model("notes", first, kind="classifier", module_kwargs={}, overwrite=True)
  assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_clear_errors(tmp_path):
  variables = _variables(np.random.default_rng(2))
  with pytest.raises(FileNotFoundError, match="no such weights folder.*python -m jaxmia.convert"):
    model_store.load_model(tmp_path / "missing")
  (tmp_path / "plain").mkdir()
  with pytest.raises(FileNotFoundError, match="not a jaxmia weights folder.*python -m jaxmia.convert"):
    model_store.load_model(tmp_path / "plain")
  (tmp_path / "model.pth").write_bytes(b"PK")
  with pytest.raises(FileNotFoundError, match="is a file, not a jaxmia weights folder"):
    model_store.load_model(tmp_path / "model.pth")
  with pytest.raises(ValueError, match="Unknown weights kind 'resnet'.*classifier"):
    model_store.save_model(tmp_path / "a", variables, kind="resnet", module_kwargs={})
  with pytest.raises(TypeError, match="JSON"):
    model_store.save_model(tmp_path / "b", variables, kind="classifier", module_kwargs={"dtype": jnp.bfloat16})
  with pytest.raises(FileNotFoundError, match="source file not found"):
    model_store.save_model(tmp_path / "c", variables, kind="classifier", module_kwargs={}, source=tmp_path / "x")
  folder = model_store.save_model(tmp_path / "d", variables, kind="classifier", module_kwargs={})
  info = model_store.read_info(folder)
  (folder / "jaxmia.json").write_text(json.dumps(dict(info, kind="vit")))
  with pytest.raises(ValueError, match="unknown weights kind 'vit'"):
    model_store.load_model(folder)


def test_load_model_builds_the_classifier(tmp_path):
  module = models.create_classifier("resnet18", 7)
  x = np.random.default_rng(3).uniform(-1, 1, size=(2, 32, 32, 3)).astype(np.float32)
  rng = np.random.default_rng(4)

  def random_leaf(path, leaf):  # He-scaled kernels and positive variances keep the forward finite
    scale = np.sqrt(1 / np.prod(leaf.shape[:-1])) if path[-1].key == "kernel" else 0.1
    value = rng.uniform(0.5, 1.5, leaf.shape) if path[-1].key == "var" else scale * rng.normal(size=leaf.shape)
    return value.astype(leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(random_leaf, jax.eval_shape(module.init, jax.random.key(0), x))
  model_store.save_model(tmp_path / "resnet", variables, kind="classifier",
                       module_kwargs={"arch": "resnet18", "num_classes": 7})
  loaded_module, loaded = model_store.load_model(tmp_path / "resnet")
  assert loaded_module == module
  _assert_same_tree(loaded, variables)
  apply = jax.jit(loaded_module.apply)
  logits = apply(loaded, x)
  assert logits.shape == (2, 7) and np.all(np.isfinite(logits))
  np.testing.assert_array_equal(logits, apply(variables, x))
  bf16_module, _ = model_store.load_model(tmp_path / "resnet", dtype=jnp.bfloat16)
  assert bf16_module == models.create_classifier("resnet18", 7, dtype=jnp.bfloat16)


@pytest.mark.parametrize("kind, module_kwargs, build", [
    ("classifier", {"arch": "densenet121", "num_classes": 3}, lambda kw: models.create_classifier(**kw)),
    ("stylegan2_generator", {"z_dim": 8, "w_dim": 8, "c_dim": 0, "img_resolution": 8, "img_channels": 3,
                             "mapping_kwargs": {"num_layers": 2}}, lambda kw: stylegan2.Generator(**kw)),
    ("stylegan2_discriminator", {"c_dim": 0, "img_resolution": 8, "img_channels": 3,
                                 "epilogue_kwargs": {"mbstd_group_size": 2}}, lambda kw: stylegan2.Discriminator(**kw)),
    ("mid_classifier", {"arch": "resnet18", "num_classes": 5, "bottleneck_dim": 16, "base_channels": 8},
     lambda kw: mid.create_mid_classifier(**kw)),
])
def test_every_kind_rebuilds_its_module(tmp_path, kind, module_kwargs, build):
  variables = {"params": {"x": np.arange(3, dtype=np.float32)}}
  model_store.save_model(tmp_path / kind, variables, kind=kind, module_kwargs=module_kwargs)
  module, loaded = model_store.load_model(tmp_path / kind)
  assert module == build(module_kwargs)
  _assert_same_tree(loaded, variables)


def test_cli_inspect(fixtures_dir, capsys):
  inspect_file(fixtures_dir / "torch_files" / "ppa_checkpoint.pth")  # what `convert inspect FILE` prints
  out = capsys.readouterr().out
  assert "model_state_dict.model.conv1.weight" in out and "(4, 3, 7, 7)" in out and "float32" in out
  assert "optimizer_state_dict.state.61.exp_avg_sq" in out and "epoch: 100" in out
  assert "308 tensors" in out
  code, stderr = run_program("jaxmia.convert", "inspect", str(fixtures_dir / "missing.pth"))
  assert code == 2 and "no such file" in stderr.strip().splitlines()[-1]
