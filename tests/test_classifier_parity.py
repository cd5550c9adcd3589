"""ResNet / ResNeXt / DenseNet against torchvision's outputs, and the model invariants the rest of jaxmia uses."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture, nchw_to_nhwc

from jaxmia import convert, models, parallel
from jaxmia.models.batch_norm import BatchNorm

ARCHS = ("resnet18", "resnet50", "resnet152", "resnext50_32x4d", "densenet121")


@functools.cache
def converted(arch: str):
  """(module, variables, input NHWC, fixture arrays) for the 530-class torchvision fixture of `arch`."""
  _, _, state, arrays = load_fixture(arch)
  variables = convert.classifier_from_torch(arch, state, num_classes=530)
  return models.create_classifier(arch, 530), variables, nchw_to_nhwc(arrays["input/x"]), arrays


def assert_close_to_reference(actual, reference, rtol=1e-4):
  np.testing.assert_allclose(np.asarray(actual), reference, rtol=rtol, atol=rtol * np.abs(reference).max())


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_torchvision(arch):
  module, variables, x, arrays = converted(arch)
  logits, features = jax.jit(functools.partial(module.apply, return_features=True))(variables, x)
  assert logits.dtype == features.dtype == jnp.float32
  assert_close_to_reference(logits, arrays["output/logits"])
  assert_close_to_reference(features, arrays["output/features"])


def test_bfloat16_compute_stays_close_to_float32():
  _, variables, x, arrays = converted("resnet18")
  logits = jax.jit(models.create_classifier("resnet18", 530, dtype=jnp.bfloat16).apply)(variables, x)
  assert logits.dtype == jnp.float32
  assert_close_to_reference(logits, arrays["output/logits"], rtol=5e-2)
  # bf16 must perturb the result (else the dtype is ignored somewhere), but not change the prediction.
  assert np.abs(np.asarray(logits) - arrays["output/logits"]).max() > 1e-4
  np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(arrays["output/logits"], -1))


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_odd_input_size_and_head_is_linear_in_features(arch):
  module, variables, _, _ = converted(arch)
  backbone = models.create_classifier(arch, None)

  @jax.jit
  def run(variables, x):
    return (*module.apply(variables, x, return_features=True), backbone.apply(variables, x))

  x = jax.random.uniform(jax.random.key(0), (3, 97, 97, 3), minval=-1.0, maxval=1.0)
  logits, features, backbone_features = run(variables, x)
  head = variables["params"]["fc" if arch.startswith("resnet") else "classifier"]
  np.testing.assert_allclose(logits, features @ head["kernel"] + head["bias"], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(backbone_features, features)


def test_resnet_sows_each_stage_output():
  module, variables, _, _ = converted("resnet18")
  x = jnp.zeros((2, 97, 97, 3))
  _, state = module.apply(variables, x, mutable=["intermediates"])
  shapes = [a.shape for a in state["intermediates"]["stage_outputs"]]
  # 97 -conv s2-> 49 -maxpool-> 25 -> 13 -> 7 -> 4, as torchvision's floor((h + 2p - k) / s) + 1.
  assert shapes == [(2, 25, 25, 64), (2, 13, 13, 128), (2, 7, 7, 256), (2, 4, 4, 512)]


def test_batchnorm_train_mode_matches_pytorch_update_rule():
  x = jax.random.normal(jax.random.key(1), (4, 3, 5, 6)) * 2.0 + 1.0
  bn = BatchNorm()
  variables = {"params": {"scale": jnp.full((6,), 1.5), "bias": jnp.full((6,), 0.25)},
               "batch_stats": {"mean": jnp.full((6,), 0.5), "var": jnp.full((6,), 2.0)}}
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  x64 = np.asarray(x, np.float64).reshape(-1, 6)
  mean, biased_var, unbiased_var = x64.mean(0), x64.var(0), x64.var(0, ddof=1)
  expected = (x64 - mean) / np.sqrt(biased_var + 1e-5) * 1.5 + 0.25
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 6), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.9 * 0.5 + 0.1 * mean, rtol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 * 2.0 + 0.1 * unbiased_var, rtol=1e-6)


def test_train_mode_on_sharded_batch_uses_global_batch_statistics():
  bn = BatchNorm()
  x = jax.random.normal(jax.random.key(2), (8, 5, 5, 6)) + jnp.arange(8.0)[:, None, None, None]
  variables = bn.init(jax.random.key(3), x, train=False)
  step = jax.jit(functools.partial(bn.apply, train=True, mutable=["batch_stats"]))
  y, updates = step(variables, x)
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 4
  sharded_y, sharded_updates = step(parallel.replicate(variables, mesh), parallel.shard_batch(x, mesh))
  assert sharded_y.sharding.spec[0] == "data"
  np.testing.assert_allclose(sharded_y, y, rtol=1e-5, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), sharded_updates, updates)
  # Per-device statistics (as in PyTorch DataParallel) would have given something else.
  _, first_shard_updates = step(variables, x[:2])
  assert not np.allclose(first_shard_updates["batch_stats"]["mean"], updates["batch_stats"]["mean"], atol=0.1)


# Parameter and buffer (running mean/var) counts of torchvision's 1000-class models, from torchvision 0.28.
TORCHVISION_SIZES = {
    "resnet34": (21797672, 17024),
    "resnet101": (44549160, 105344),
    "resnext101_32x8d": (88791336, 202880),
    "densenet161": (28681000, 219936),
    "densenet169": (14149480, 158400),
    "densenet201": (20013928, 229056),
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_SIZES))
def test_architectures_without_fixture_have_torchvision_sizes(arch):
  """The variants without a golden output have exactly torchvision's parameter and buffer counts."""
  module = models.create_classifier(arch, 1000)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
  assert (count(shapes["params"]), count(shapes["batch_stats"])) == TORCHVISION_SIZES[arch]
