"""VGG-16 / VGG-16-BN (`jaxmia.models.vgg`) against torchvision's outputs, and their conversion both ways.

The goldens (`tests/golden/vgg_golden_*.npz`, written by `scripts/make_vgg_goldens.py`) hold no weights: each
has the manifest of its PyTorch state dict, which the shared fixtures' `recipe.py` turns back into the weights
the PyTorch model ran with. Between them they cover both architectures, torchvision's head and the
low-resolution MIA head (GMI / KED-MI `VGG16`, run on [0, 1] images), input sides 32, 64 and 96, and 10 and 5
classes.
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import nchw_to_nhwc, recipe

from jaxmia import convert, models
from jaxmia.convert import classifiers, save_torch_file
from jaxmia.models import vgg

GOLDENS = sorted((pathlib.Path(__file__).parent / "golden").glob("vgg_golden_*.npz"))


def load_golden(path: pathlib.Path, tensors: dict | None = None):
  """(spec, num_classes, state, arrays) of a golden, the state rebuilt by `recipe.py`.

  `tensors`: a cache of `recipe.make_tensor`'s results by (seed, manifest entry), so goldens that share a tensor
  (the two torchvision heads' 25088x4096 and 4096x4096 linears: same key, shape, rule and seed) build it once."""
  if tensors is None:
    manifest, _, state, arrays = recipe.load_fixture(str(path))
    return manifest["spec"], manifest["kwargs"]["num_classes"], state, arrays
  make_tensor = recipe.make_tensor

  def cached(entry, seed, fixed=None):
    if entry["rule"] == "fixed":  # stored in the golden itself: nothing to share
      return make_tensor(entry, seed, fixed)
    key = (seed, json.dumps(entry, sort_keys=True))
    if key not in tensors:
      tensors[key] = make_tensor(entry, seed, fixed)
    return tensors[key]

  recipe.make_tensor = cached  # make_state looks it up at each call
  try:
    return load_golden(path)
  finally:
    recipe.make_tensor = make_tensor


@pytest.fixture(scope="module")
def shared_tensors():
  """The tensor cache of `load_golden`, kept while this module's tests run."""
  return {}


@functools.cache
def small_lowres():
  """The 32x32 low-resolution VGG-16 golden (15M parameters): (spec, num_classes, state, arrays)."""
  return load_golden(pathlib.Path(__file__).parent / "golden" / "vgg_golden_vgg16_lowres32.npz")


@functools.cache
def small_lowres_variables():
  _, num_classes, state, _ = small_lowres()
  return convert.classifier_from_torch("vgg16", state, num_classes)


def assert_close_to_reference(actual, reference, rtol=1e-4):
  np.testing.assert_allclose(np.asarray(actual), reference, rtol=rtol, atol=rtol * np.abs(reference).max())


def assert_arrays_equal(actual, expected, err_msg=""):
  """Exactly equal: the same shape and the same values (NaN nowhere). One `np.array_equal` pass over the 120M values
  of the torchvision head instead of np.testing's slower element-wise report, which runs only on a mismatch."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  if actual.shape != expected.shape or not np.array_equal(actual, expected):
    np.testing.assert_array_equal(actual, expected, err_msg=err_msg, strict=True)
    raise AssertionError(f"{err_msg}: arrays differ")  # unreachable unless np.testing disagrees (e.g. NaN == NaN)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(assert_arrays_equal, a, b)


def test_goldens_cover_both_architectures_heads_sizes_and_class_counts():
  specs = [json.loads(str(np.load(path)["manifest"])) for path in GOLDENS]
  assert {m["spec"]["arch"] for m in specs} == {"vgg16", "vgg16_bn"}
  for arch in ("vgg16", "vgg16_bn"):
    mine = [m for m in specs if m["spec"]["arch"] == arch]
    assert {m["spec"]["head"] for m in mine} == {"lowres", "torchvision"}
    assert len({m["spec"]["input_shape"][-1] for m in mine}) == 2
  assert {m["kwargs"]["num_classes"] for m in specs} == {5, 10}


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem.removeprefix("vgg_golden_"))
def test_matches_torchvision_and_converts_back(path, shared_tensors):
  spec, num_classes, state, arrays = load_golden(path, shared_tensors)
  arch, head = spec["arch"], spec["head"]
  kwargs = classifiers.classifier_module_kwargs(arch, state, num_classes)
  assert kwargs == {"head": head}  # the head is read off the checkpoint
  variables = convert.classifier_from_torch(arch, state, num_classes)
  module = models.create_classifier(arch, num_classes, **kwargs)
  x = nchw_to_nhwc(arrays["input/x"])  # in [-1, 1]; the low-resolution model maps it to [0, 1] itself
  logits, features = jax.jit(functools.partial(module.apply, return_features=True))(variables, x)
  assert logits.dtype == features.dtype == jnp.float32
  assert_close_to_reference(logits, arrays["output/logits"])
  assert_close_to_reference(features, arrays["output/features"])
  np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(arrays["output/logits"], -1))

  # Back to PyTorch: exactly the state dict the reference model was loaded with, names included (the
  # low-resolution head keeps that code's `feature.N`), and from there to the same variables again.
  back = convert.classifier_to_torch(arch, variables)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    assert_arrays_equal(back[key], value, err_msg=key)
  assert_trees_equal(convert.classifier_from_torch(arch, back, num_classes), variables)


def test_low_resolution_checkpoint_file_converts_as_saved_by_that_code(tmp_path):
  """GMI / KED-MI save `{'state_dict': DataParallel(VGG16).state_dict()}` (keys `module.feature.0.weight`, ...)
  as `.tar`; the file converts to the variables of the plain state dict."""
  _, num_classes, state, _ = small_lowres()
  assert "feature.0.weight" in state and "fc_layer.weight" in state
  save_torch_file(tmp_path / "VGG16_88.26.tar", {"state_dict": {"module." + k: v for k, v in state.items()}})
  from_file = convert.classifier_from_torch("vgg16", tmp_path / "VGG16_88.26.tar", num_classes)
  assert_trees_equal(from_file, small_lowres_variables())
  assert set(from_file["params"]) == {f"features_{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)} | {
      "bn", "fc_layer"}


def test_backbone_only_returns_the_features_and_ignores_the_head():
  spec, num_classes, state, arrays = small_lowres()
  backbone_variables = convert.classifier_from_torch("vgg16", state, None)
  assert "fc_layer" not in backbone_variables["params"]
  features = jax.jit(models.create_classifier("vgg16", None).apply)(backbone_variables,
                                                                    nchw_to_nhwc(arrays["input/x"]))
  assert_close_to_reference(features, arrays["output/features"])


def test_bfloat16_compute_stays_close_to_float32():
  _, num_classes, _, arrays = small_lowres()
  x = nchw_to_nhwc(arrays["input/x"])
  logits = jax.jit(models.create_classifier("vgg16", num_classes, dtype=jnp.bfloat16).apply)(
      small_lowres_variables(), x)
  assert logits.dtype == jnp.float32
  assert_close_to_reference(logits, arrays["output/logits"], rtol=5e-2)
  assert np.abs(np.asarray(logits) - arrays["output/logits"]).max() > 1e-5  # bf16 did change the computation


def test_wrong_variant_or_class_count_says_what_to_pass():
  _, num_classes, state, _ = small_lowres()
  with pytest.raises(convert.ConversionError, match="use arch vgg16\\b"):
    convert.classifier_from_torch("vgg16_bn", state, num_classes)
  with pytest.raises(convert.ConversionError, match="'fc_layer.weight' has 5 outputs.*pass num_classes=5"):
    convert.classifier_from_torch("vgg16", state, 7)
  bn_state = {"features.1.running_mean": np.zeros(64, np.float32), **state}
  with pytest.raises(convert.ConversionError, match="use arch vgg16_bn"):
    convert.classifier_from_torch("vgg16", bn_state, num_classes)


def test_train_mode_updates_batch_statistics_and_input_mapping_follows_the_head():
  module = models.create_classifier("vgg16_bn", 3)
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1.0, maxval=1.0)
  variables = jax.jit(module.init)(jax.random.key(1), x)

  @jax.jit  # one compilation for the three applications
  def train_step_and_inference(variables, x):
    logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    explicit = models.create_classifier("vgg16_bn", 3, zero_one_input=False).apply(variables, (x + 1) / 2)
    return logits, updates, explicit, module.apply(variables, x)

  logits, updates, zero_one, default = train_step_and_inference(variables, x)
  assert logits.shape == (4, 3)
  assert set(updates["batch_stats"]) == set(variables["batch_stats"])
  assert not np.allclose(updates["batch_stats"]["bn"]["mean"], variables["batch_stats"]["bn"]["mean"])
  # [0, 1] inputs by default with the low-resolution head only; explicit settings win.
  np.testing.assert_allclose(zero_one, default, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size_in", [1, 2, 3, 5, 7, 9, 14])
def test_adaptive_avg_pool_matches_pytorch_windows(size_in):
  x = np.random.default_rng(size_in).normal(size=(2, size_in, size_in + 1, 3)).astype(np.float32)
  expected = np.zeros((2, 7, 7, 3), np.float32)
  for i in range(7):
    for j in range(7):
      rows = slice((i * size_in) // 7, -(-((i + 1) * size_in) // 7))
      cols = slice((j * (size_in + 1)) // 7, -(-((j + 1) * (size_in + 1)) // 7))
      expected[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
  np.testing.assert_allclose(vgg.adaptive_avg_pool(jnp.asarray(x), 7), expected, rtol=1e-6, atol=1e-6)


# Parameter and buffer counts of torchvision's 1000-class models (torchvision 0.29).
@pytest.mark.parametrize("arch,sizes", [("vgg16", (138357544, 0)), ("vgg16_bn", (138365992, 8448))])
def test_torchvision_head_has_torchvision_sizes(arch, sizes):
  module = models.create_classifier(arch, 1000, head="torchvision")
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
  assert (count(shapes["params"]), count(shapes.get("batch_stats", {}))) == sizes
