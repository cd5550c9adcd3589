"""facenet-pytorch InceptionResnetV1 against `facenet_irv1.npz` (vggface2 key set, 8631-way `logits`) and
`facenet_irv1_cls530.npz` (a 530-way head)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture, nchw_to_nhwc

from jaxmia import convert, models
from jaxmia.convert.common import ConversionError


def assert_close(actual, expected):
  expected = np.asarray(expected)
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def forward(num_classes, variables, x, dtype=jnp.float32):
  module = models.create_classifier("inception_resnet_v1", num_classes, dtype=dtype)
  return jax.jit(lambda v, x: module.apply(v, x, return_features=True))(variables, x)


@pytest.fixture(scope="module")
def vggface2():
  _, _, state, arrays = load_fixture("facenet_irv1")
  return state, arrays


def test_embedding_ignores_the_vggface2_logits_layer(vggface2):
  state, arrays = vggface2
  variables = convert.classifier_from_torch("inception_resnet_v1", state, None)
  assert "logits" not in variables["params"]
  embedding = forward(None, variables, nchw_to_nhwc(arrays["input/x"]))
  assert embedding.shape == (2, 512)
  assert_close(embedding, arrays["output/embedding"])
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, rtol=1e-6)


def test_vggface2_logits_and_embedding(vggface2):
  state, arrays = vggface2
  variables = convert.classifier_from_torch("inception_resnet_v1", state, 8631)
  logits, embedding = forward(8631, variables, nchw_to_nhwc(arrays["input/x"]))
  assert_close(logits, arrays["output/logits"])
  assert_close(embedding, arrays["output/embedding"])


def test_other_class_count_is_a_clear_error(vggface2):
  state, _ = vggface2
  with pytest.raises(ConversionError, match=r"8631-way `logits` head but num_classes=530.*num_classes=None"):
    convert.classifier_from_torch("inception_resnet_v1", state, 530)


def test_530_way_head():
  _, _, state, arrays = load_fixture("facenet_irv1_cls530")
  variables = convert.classifier_from_torch("inception_resnet_v1", state, 530)
  logits, embedding = forward(530, variables, nchw_to_nhwc(arrays["input/x"]))
  assert_close(logits, arrays["output/logits"])
  assert_close(embedding, arrays["output/embedding"])


def test_bfloat16_embedding_stays_close(vggface2):
  state, arrays = vggface2
  variables = convert.classifier_from_torch("inception_resnet_v1", state, None)
  embedding = forward(None, variables, nchw_to_nhwc(arrays["input/x"]), dtype=jnp.bfloat16)
  assert embedding.dtype == jnp.float32
  cosine = np.sum(np.asarray(embedding) * arrays["output/embedding"], axis=-1)  # both unit vectors
  assert (cosine > 0.99).all(), cosine
