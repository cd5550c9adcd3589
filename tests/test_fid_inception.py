"""The pytorch-fid Inception network against `fid_inception.npz` (pytorch-fid 0.3.0, resize + normalise + pool3)."""
import functools

import jax
import numpy as np
import pytest
from conftest import load_fixture, nchw_to_nhwc

from jaxmia.convert.common import ConversionError
from jaxmia.convert.inception import fid_inception_from_torch
from jaxmia.models.inception import fid_preprocess


def assert_close(actual, expected):
  expected = np.asarray(expected)
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.fixture(scope="module")
def fid():
  _, _, state, arrays = load_fixture("fid_inception")
  # The released weight file may lack the `num_batches_tracked` buffers; the converter must not need them.
  state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  module, variables = fid_inception_from_torch(state)
  return module, variables, arrays, state


def test_resize_is_pytorch_bilinear_without_antialias(fid):
  _, _, arrays, _ = fid
  x256 = nchw_to_nhwc(arrays["input/x256"])
  x299 = nchw_to_nhwc(arrays["input/x299"])
  resized = np.asarray(jax.jit(fid_preprocess)(x256))
  assert resized.shape == (2, 299, 299, 3)
  np.testing.assert_allclose((resized[0, :, :, 0] + 1) / 2, arrays["output/resized_x256_img0_c0"], atol=1e-6)
  # A 299x299 input goes through the resize unchanged; only 2x - 1 is applied.
  np.testing.assert_allclose(np.asarray(fid_preprocess(x299)), 2 * x299 - 1, atol=1e-6)


def test_shrinking_does_not_antialias():
  # Halving with half-pixel centres and no antialiasing averages each 2x2 block exactly; an antialiased
  # resize (torchvision's `resize`) would spread over 4x4 taps.
  x = np.random.default_rng(0).random((1, 598, 598, 3), dtype=np.float32)
  block_mean = x.reshape(1, 299, 2, 299, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(np.asarray(fid_preprocess(x)), 2 * block_mean - 1, atol=1e-6)


def test_pool3_and_logits_match_pytorch_fid(fid):
  module, variables, arrays, _ = fid
  # One compile for both inputs: image batch [resize(x256), x299], all 299x299 in [0, 1]. Resizing a
  # 299x299 image is the identity (checked above), so this is exactly fid_features on each input.
  x256_resized = (np.asarray(fid_preprocess(nchw_to_nhwc(arrays["input/x256"]))) + 1) / 2
  images = np.concatenate([x256_resized, nchw_to_nhwc(arrays["input/x299"])])
  pool3 = np.asarray(jax.jit(functools.partial(module.apply, method="fid_features"))(variables, images))
  assert pool3.shape == (4, 2048)
  assert_close(pool3[:2], arrays["output/pool3_x256"][:, :, 0, 0])
  assert_close(pool3[2:], arrays["output/pool3_x299"][:, :, 0, 0])
  # The 1008-way logits are `fc(pool3)`, which checks the converted head.
  fc = variables["params"]["fc"]
  logits = pool3 @ fc["kernel"] + fc["bias"]
  assert_close(logits[:2], arrays["output/logits_x256"])
  assert_close(logits[2:], arrays["output/logits_x299"])


def test_conversion_reports_missing_and_unexpected_keys(fid):
  state = dict(fid[3])
  state.pop("Mixed_7c.branch_pool.conv.weight")
  state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  with pytest.raises(ConversionError, match=r"(?s)1 missing keys.*Mixed_7c\.branch_pool\.conv\.weight.*"
                                            r"1 unexpected keys.*AuxLogits\.fc\.weight"):
    fid_inception_from_torch(state)
