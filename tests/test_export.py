"""Export to PyTorch (`jaxmia.export`): classifiers as torchvision / PPA state dicts that convert back to identical
parameters, an attack run as PPA's `.pt` results and PNG images, and PPA's result file read back for the
evaluation (`evaluate.load_ppa_results`). With `JAXMIA_TORCH_PYTHON` (a python with torch), real PyTorch loads
the exported files with `weights_only=True`."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY_GENERATOR_KWARGS, load_fixture, save_tiny_generator
from jaxmia import convert, evaluate, export, files, model_store, models
from jaxmia.attack import render
from jaxmia.config import load_file
from jaxmia.convert import classifiers, torch_reader
from jaxmia.models.stylegan2 import Generator

TORCH_PYTHON = os.environ.get("JAXMIA_TORCH_PYTHON")
needs_torch = pytest.mark.skipif(not TORCH_PYTHON, reason="set JAXMIA_TORCH_PYTHON to a python with torch")

CLASSES = [9, 2, 4]        # attack order; CPython iterates set(CLASSES) as 9, 2, 4, PPA's block order
PER_CLASS, KEPT = 5, 3


def _random_variables(module, seed, size=32):
  """Random variables of every collection (BatchNorm statistics included), without compiling an init."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), shapes)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y), strict=True), a, b)


# ----------------------------------------------------------------------------------------------- classifiers


@pytest.mark.parametrize("layout", ["torchvision", "ppa"])
def test_an_exported_classifier_converts_back_to_identical_parameters(tmp_path, layout):
  """A jaxmia-shaped classifier (slim ResNet-18, 10 classes) -> .pth -> the existing converter: same variables."""
  kwargs = dict(arch="resnet18", num_classes=10, base_channels=8)
  variables = _random_variables(models.create_classifier(**kwargs), 0)
  model_store.save_model(tmp_path / "model", variables, kind="classifier", module_kwargs=kwargs)
  state = export.export_classifier(tmp_path / "model", tmp_path / "model.pth", layout=layout)
  written = torch_reader.load_torch_file(tmp_path / "model.pth")
  assert list(written) == list(state)
  prefix = "model." if layout == "ppa" else ""
  assert all(key.startswith(prefix) for key in written)
  assert written[f"{prefix}conv1.weight"].shape == (8, 3, 7, 7)          # OIHW
  assert written[f"{prefix}fc.weight"].shape == (10, 64)                 # [out, in]
  assert written[f"{prefix}bn1.num_batches_tracked"].shape == ()
  back = convert.classifier_from_torch("resnet18", tmp_path / "model.pth", 10, base_channels=8)
  _assert_trees_equal(back, variables)


@pytest.mark.parametrize("arch, fixture", [("resnet18", "resnet18"), ("densenet121", "densenet121"),
                                           ("inception_v3", "inception_v3"),
                                           ("inception_resnet_v1", "facenet_irv1_cls530")])
def test_exported_state_dict_is_torchvisions_own(arch, fixture):
  """Converting a real torchvision / facenet-pytorch state dict and exporting it gives that state dict back:
  the same keys (BatchNorm's num_batches_tracked included) and bit-identical tensors in PyTorch layouts."""
  state = load_fixture(fixture)[2]
  variables = convert.classifier_from_torch(arch, state, 530)
  exported = classifiers.classifier_to_torch(arch, variables)
  assert set(exported) == set(state)
  for key, value in state.items():
    if not key.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(exported[key], value, strict=True, err_msg=key)


def test_exporting_what_is_not_a_classifier_is_refused(tmp_path):
  generator = Generator(**TINY_GENERATOR_KWARGS)
  variables = jax.eval_shape(generator.init, jax.random.key(0), jnp.zeros((1, 8)), None)
  variables = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), variables)
  model_store.save_model(tmp_path / "g", variables, kind="stylegan2_generator", module_kwargs=TINY_GENERATOR_KWARGS)
  with pytest.raises(ValueError, match="not a classifier"):
    export.export_classifier(tmp_path / "g", tmp_path / "g.pth")
  with pytest.raises(ValueError, match="layout='keras'"):
    export.export_classifier(tmp_path / "g", tmp_path / "g.pth", layout="keras")


# ----------------------------------------------------------------------------------------------- attack results


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory):
  """A finished-looking attack run on classes 9, 2, 4 (latents.npz, summary.json), with its networks."""
  root = tmp_path_factory.mktemp("attack")
  generator, generator_variables = save_tiny_generator(root / "generator")
  target_kwargs = dict(arch="resnet18", num_classes=10, base_channels=4)  # every leaf random: a swap shows
  model_store.save_model(root / "target", _random_variables(models.create_classifier(**target_kwargs), 1),
                         kind="classifier", module_kwargs=target_kwargs)
  targets = np.repeat(CLASSES, PER_CLASS).astype(np.int32)
  w = np.random.default_rng(2).normal(size=(len(targets), 1, 8)).astype(np.float32)
  scores = np.random.default_rng(3).random(len(targets))
  # jaxmia's final selection: classes in increasing order, each best first.
  selected = np.concatenate([np.flatnonzero(targets == c)[np.argsort(-scores[targets == c])][:KEPT]
                             for c in sorted(CLASSES)])
  np.savez(root / "latents.npz", targets=targets, initial_w=w[::-1] * 2, optimized_w=w, selected_indices=selected)
  config = load_file(REPO / "configs" / "attack_facescrub_ffhq.py").get_config("smoke")
  config.generator, config.target, config.targets = str(root / "generator"), str(root / "target"), str(CLASSES)
  config.attack.center_crop = 12
  (root / "summary.json").write_text(json.dumps({"config": json.loads(config.to_json_best_effort())}))
  return root, generator, generator_variables, targets, w, selected


@pytest.fixture(scope="module")
def exported(attack_run):
  root = attack_run[0]
  return export.export_attack(root, root / "export", image_size=0, batch_size=4)


def test_attack_latents_are_written_in_ppas_layout(attack_run, exported):
  root, _, _, targets, w, selected = attack_run
  assert set(exported) == {"init_w", "optimized_w", "optimized_w_selected", "targets_selected", "images"}
  assert exported["optimized_w_selected"] == root / "export" / f"optimized_w_selected_{root.name}.pt"
  # PPA's block order is set(targets)'s: 9, 2, 4 (not jaxmia's increasing order), each block best first.
  ppa_rows = np.concatenate([selected[targets[selected] == c] for c in (9, 2, 4)])
  read = {what: torch_reader.load_torch_file(path) for what, path in exported.items() if what != "images"}
  np.testing.assert_array_equal(read["optimized_w_selected"], w[ppa_rows], strict=True)
  np.testing.assert_array_equal(read["targets_selected"], np.repeat([9, 2, 4], KEPT).astype(np.int64), strict=True)
  np.testing.assert_array_equal(read["optimized_w"], w, strict=True)
  np.testing.assert_array_equal(read["init_w"], w[::-1] * 2, strict=True)


def test_every_selected_image_is_a_png_of_the_attacks_view(attack_run, exported):
  """images/<class>/<rank>.png: the generator's image, clamped, centre-cropped to 12 pixels, as uint8."""
  root, generator, generator_variables, targets, w, selected = attack_run
  folders = sorted(p.name for p in exported["images"].iterdir())
  assert folders == ["0002", "0004", "0009"]
  for c in CLASSES:
    rows = selected[targets[selected] == c]
    assert sorted(p.name for p in (exported["images"] / f"{c:04d}").iterdir()) == ["000.png", "001.png", "002.png"]
    expected = files.to_uint8(render.target_view(render.synthesize(generator, generator_variables, w[rows]),
                                                 clamp=True, center_crop=12, resize=12))
    for rank in range(KEPT):
      pixels = np.asarray(Image.open(exported["images"] / f"{c:04d}" / f"{rank:03d}.png"))
      assert pixels.shape == (12, 12, 3)
      # Rendered in batches of 4 there and of 3 here: allow one grey level for batch-dependent float rounding.
      assert np.abs(pixels.astype(int) - expected[rank].astype(int)).max() <= 1


def test_ppas_result_file_reads_back_as_the_runs_selection(attack_run, exported):
  """`load_ppa_results` on the exported file gives the run's selected latents and classes (the evaluation's
  input), in PPA's order, and names what is wrong with a file that does not fit the targets."""
  root, _, _, targets, w, selected = attack_run
  run = evaluate.load_ppa_results(exported["optimized_w_selected"], targets=str(CLASSES),
                                  generator=str(root / "generator"), target=str(root / "target"), center_crop=12,
                                  resize=16)
  expected = evaluate.load_attack_run(root)
  order = np.concatenate([np.flatnonzero(expected.selected_targets == c) for c in (9, 2, 4)])
  np.testing.assert_array_equal(run.selected_w, expected.selected_w[order], strict=True)
  np.testing.assert_array_equal(run.selected_targets, expected.selected_targets[order])
  assert run.run_dir == exported["optimized_w_selected"].with_suffix("")
  assert run.config["attack"] == {"center_crop": 12, "resize": 16} and run.initial_w is None
  assert evaluate.ppa_class_order(np.repeat(CLASSES, 2)) == [9, 2, 4]

  with pytest.raises(ValueError, match="9 latents, not the same number for each of the 10 target classes"):
    evaluate.load_ppa_results(exported["optimized_w_selected"], targets="all", generator=str(root / "generator"),
                              target=str(root / "target"))
  with pytest.raises(ValueError, match="set the evaluation config's generator and target"):
    evaluate.load_ppa_results(exported["optimized_w_selected"], generator="", target=str(root / "target"))
  with pytest.raises(ValueError, match="is not PPA's optimized_w_selected"):
    evaluate.load_ppa_results(exported["targets_selected"], targets=str(CLASSES), generator=str(root / "generator"),
                              target=str(root / "target"))


def test_the_export_program(attack_run, tmp_path):
  """`python -m jaxmia.export classifier ...` writes the .pth; a missing flag is one usage error."""
  root = attack_run[0]
  result = subprocess.run([sys.executable, "-m", "jaxmia.export", "classifier", f"--weights={root / 'target'}",
                           f"--output={tmp_path / 'target.pth'}", "--layout=ppa"], capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == f"classifier: {tmp_path / 'target.pth'}"
  back = convert.classifier_from_torch("resnet18", tmp_path / "target.pth", 10, base_channels=4)
  _assert_trees_equal(back, model_store.load_variables(root / "target"))
  result = subprocess.run([sys.executable, "-m", "jaxmia.export", "classifier", f"--weights={root / 'target'}"],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and "needs --output" in result.stderr


_TORCH_LOAD = """
import sys
import numpy as np
import torch
out = {}
for i, path in enumerate(sys.argv[2:]):
  obj = torch.load(path, weights_only=True)
  items = obj.items() if isinstance(obj, dict) else [("tensor", obj)]
  out.update({f"{i}/{k}": v.numpy() for k, v in items})
np.savez(sys.argv[1], **out)
"""


@needs_torch
def test_pytorch_loads_the_exported_latents_and_classifier(attack_run, exported, tmp_path):
  root = attack_run[0]
  state = export.export_classifier(root / "target", tmp_path / "target.pth")
  paths = [exported["optimized_w_selected"], exported["targets_selected"], tmp_path / "target.pth"]
  result = subprocess.run([TORCH_PYTHON, "-c", _TORCH_LOAD, str(tmp_path / "out.npz"), *map(str, paths)],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  with np.load(tmp_path / "out.npz") as loaded:
    np.testing.assert_array_equal(loaded["0/tensor"], torch_reader.load_torch_file(paths[0]), strict=True)
    np.testing.assert_array_equal(loaded["1/tensor"], np.repeat([9, 2, 4], KEPT).astype(np.int64), strict=True)
    assert sorted(k[2:] for k in loaded.files if k.startswith("2/")) == sorted(state)
    for key, value in state.items():
      np.testing.assert_array_equal(loaded[f"2/{key}"], value, strict=True, err_msg=key)
