"""torchvision Inception-v3 as PPA builds it (530-way `fc`, 1000-way aux head) against `inception_v3.npz`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture, nchw_to_nhwc

from jaxmia import convert, models
from jaxmia.convert.common import ConversionError
from jaxmia.convert.inception import inception_v3_module_kwargs


def assert_close(actual, expected):
  expected = np.asarray(expected)
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.fixture(scope="module")
def converted():
  _, _, state, arrays = load_fixture("inception_v3")
  kwargs = inception_v3_module_kwargs(state, 530)
  module = models.create_classifier("inception_v3", 530, **kwargs)
  variables = convert.classifier_from_torch("inception_v3", state, 530)
  return state, arrays, kwargs, module, variables


def test_module_kwargs_follow_the_checkpoint(converted):
  state, _, kwargs, _, _ = converted
  assert kwargs == {"aux_logits": True, "aux_num_classes": 1000}  # PPA replaces only `fc`.
  no_aux = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
  assert inception_v3_module_kwargs(no_aux, 530) == {"aux_logits": False, "aux_num_classes": None}
  with pytest.raises(ConversionError, match="530-way `fc` head but num_classes=10"):
    inception_v3_module_kwargs(state, 10)


def test_logits_and_features_match_torchvision(converted):
  _, arrays, _, module, variables = converted
  x = nchw_to_nhwc(arrays["input/x"])
  logits, features = jax.jit(lambda v, x: module.apply(v, x, return_features=True))(variables, x)
  assert logits.dtype == features.dtype == jnp.float32
  assert_close(logits, arrays["output/logits"])
  assert_close(features, arrays["output/features"])


def test_backbone_only_conversion_gives_features(converted):
  state, arrays, kwargs, _, _ = converted
  variables = convert.classifier_from_torch("inception_v3", state, None)
  assert "fc" not in variables["params"] and "AuxLogits" in variables["params"]
  module = models.create_classifier("inception_v3", None, **kwargs)
  out = jax.eval_shape(module.apply, variables, nchw_to_nhwc(arrays["input/x"]))
  assert out.shape == (2, 2048)


def test_train_mode_sows_aux_logits_and_updates_batch_stats(converted):
  _, arrays, _, module, variables = converted
  x = nchw_to_nhwc(arrays["input/x"])

  @jax.jit
  def train_forward(variables, x, key):
    return module.apply(variables, x, train=True, rngs={"dropout": key},
                        mutable=["batch_stats", "intermediates"])

  logits, updates = train_forward(variables, x, jax.random.key(0))
  assert logits.shape == (2, 530)
  (aux,) = updates["intermediates"]["aux_logits"]
  assert aux.shape == (2, 1000) and np.isfinite(np.asarray(aux)).all()
  # Running statistics follow PyTorch (momentum 0.1): check the first BatchNorm against its conv output.
  kernel = variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"]
  y = jax.lax.conv_general_dilated(x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   precision="highest")
  old = variables["batch_stats"]["Conv2d_1a_3x3"]["bn"]["mean"]
  new = updates["batch_stats"]["Conv2d_1a_3x3"]["bn"]["mean"]
  np.testing.assert_allclose(new, 0.9 * old + 0.1 * np.asarray(y).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
