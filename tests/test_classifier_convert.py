"""`classifier_from_torch`: checkpoint unwrapping, key mapping, and the errors a user sees."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path, load_fixture

from jaxmia import convert, models
from jaxmia.convert.classifiers import classifier_state_dict

@functools.cache
def expected_tensors():
  with np.load(fixture_path("torch_files", "expected.npz")) as archive:
    return dict(archive)


def file_state(name: str, prefix: str = "") -> dict[str, np.ndarray]:
  """Tensors of `torch_files/<name>` as stored in expected.npz, keyed by the file's own names minus `prefix`."""
  start = f"{name}/{prefix}"
  return {k[len(start):]: v for k, v in expected_tensors().items() if k.startswith(start)}


@functools.cache
def resnet18_state():
  return load_fixture("resnet18")[2]


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_torchvision_key_mapping():
  from jaxmia.convert.classifiers import torchvision_key
  assert torchvision_key(("params", "layer3_0", "downsample_0", "kernel")) == "layer3.0.downsample.0.weight"
  assert torchvision_key(("batch_stats", "bn1", "var")) == "bn1.running_var"
  assert (torchvision_key(("params", "features_denseblock2_denselayer11", "norm2", "scale"))
          == "features.denseblock2.denselayer11.norm2.weight")
  assert torchvision_key(("params", "classifier", "bias")) == "classifier.bias"


def test_variables_have_flax_layouts_and_values():
  state = resnet18_state()
  variables = convert.classifier_from_torch("resnet18", state, num_classes=530)
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(variables["batch_stats"]["layer2_0"]["downsample_1"]["var"],
                                state["layer2.0.downsample.1.running_var"])
  assert set(variables) == {"params", "batch_stats"}


def test_wrong_num_classes_names_the_head_and_the_fix():
  with pytest.raises(convert.ConversionError) as error:
    convert.classifier_from_torch("resnet18", resnet18_state(), num_classes=10)
  message = str(error.value)
  assert re.search(r"fc\.weight: file has \(530, 512\), model needs \(512, 10\)", message)
  assert "fc.bias" in message
  assert "pass num_classes=530" in message


def test_missing_and_unexpected_keys_are_reported_together():
  state = dict(resnet18_state())
  state["layer1.0.conv9.weight"] = state.pop("layer1.0.conv2.weight")
  with pytest.raises(convert.ConversionError) as error:
    convert.classifier_from_torch("resnet18", state, num_classes=530)
  message = str(error.value)
  assert re.search(r"1 missing keys:\s+layer1\.0\.conv2\.weight", message)
  assert re.search(r"1 unexpected keys:\s+layer1\.0\.conv9\.weight", message)
  assert "shape mismatches" not in message and "pass " not in message  # no misleading hint


@pytest.mark.parametrize("name, prefix", [("ppa_checkpoint.pth", "model_state_dict.model."),
                                          ("ppa_checkpoint_compiled.pth", "model_state_dict.model._orig_mod."),
                                          ("resnet18_zip.pth", ""), ("resnet18_legacy.pth", "")])
def test_real_torch_files_convert_like_their_bare_state_dict(name, prefix):
  bare = file_state(name, prefix)
  assert len(bare) == 122 and "conv1.weight" in bare
  variables = convert.classifier_from_torch("resnet18", fixture_path("torch_files", name), num_classes=10,
                                            base_channels=4)
  assert_trees_equal(variables, convert.classifier_from_torch("resnet18", bare, num_classes=10, base_channels=4))
  assert variables["params"]["layer4_1"]["conv2"]["kernel"].shape == (3, 3, 32, 32)
  module = models.create_classifier("resnet18", 10, base_channels=4)
  logits, features = module.apply(variables, jnp.zeros((2, 64, 64, 3)), return_features=True)
  assert logits.shape == (2, 10) and features.shape == (2, 32)


def test_in_memory_ppa_checkpoint_is_unwrapped():
  bare = resnet18_state()
  checkpoint = {"epoch": 3, "model_state_dict": {f"model._orig_mod.{k}": v for k, v in bare.items()},
                "optimizer_state_dict": {"state": {}, "param_groups": []}}
  assert classifier_state_dict(checkpoint).keys() == bare.keys()
  assert_trees_equal(convert.classifier_from_torch("resnet18", checkpoint, 530),
                     convert.classifier_from_torch("resnet18", bare, 530))


def test_slim_resnet_without_base_channels_gets_a_hint():
  with pytest.raises(convert.ConversionError, match=r"pass base_channels=4"):
    convert.classifier_from_torch("resnet18", fixture_path("torch_files", "resnet18_zip.pth"), num_classes=10)


def test_backbone_only_ignores_the_checkpoint_head():
  variables = convert.classifier_from_torch("resnet18", resnet18_state(), num_classes=None)
  assert "fc" not in variables["params"]
  with_head = convert.classifier_from_torch("resnet18", resnet18_state(), num_classes=530)
  del with_head["params"]["fc"]
  assert_trees_equal(variables, with_head)


def test_old_torchvision_densenet_names_are_accepted():
  state = load_fixture("densenet121")[2]
  old = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
  assert "features.denseblock1.denselayer1.norm.1.weight" in old
  assert_trees_equal(convert.classifier_from_torch("densenet121", old, 530),
                     convert.classifier_from_torch("densenet121", state, 530))


def test_bad_sources_say_what_is_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.classifier_from_torch("resnet18", tmp_path / "missing.pth", 530)
  with pytest.raises(convert.ConversionError, match=r"'epoch'.*not tensors"):
    convert.classifier_from_torch("resnet18", {"epoch": 3, "weights": resnet18_state()}, 530)
  with pytest.raises(ValueError, match="Unknown architecture 'resnet19'"):
    convert.classifier_from_torch("resnet19", resnet18_state(), 530)
  np.savez(tmp_path / "state.npz", **resnet18_state())
  assert_trees_equal(convert.classifier_from_torch("resnet18", tmp_path / "state.npz", 530),
                     convert.classifier_from_torch("resnet18", resnet18_state(), 530))
