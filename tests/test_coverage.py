"""Prior class coverage: the histogram of a generator whose class is known, and the summary's closed forms."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import generate
from jaxmia.analysis import coverage


class _BrightnessClassifier(nn.Module):
  """Class 0 for dark images, 1 for bright ones (a linear probe on the mean pixel)."""

  @nn.compact
  def __call__(self, x):
    m = jnp.mean(x, axis=(1, 2, 3))
    return jnp.stack([-20.0 * m, 20.0 * m], axis=-1)


def test_histogram_counts_the_classifier_labels_of_prior_samples():
  generator, variables = _random_generator()
  hist = coverage.prior_class_histogram(generator, variables, _BrightnessClassifier(), {}, num_samples=40,
                                        num_classes=3, seed=1, image_size=8, batch_size=16)
  images = np.clip(generate.generate_images(generator, variables, jax.random.key(1), 40, batch_size=16), -1, 1)
  bright = np.asarray(jax.image.resize(images, (40, 8, 8, 3), "linear")).mean(axis=(1, 2, 3)) > 0
  assert hist["counts"].tolist() == [int((~bright).sum()), int(bright.sum()), 0]
  assert np.isnan(hist["confidence"][2]) and np.all(hist["confidence"][:2][hist["counts"][:2] > 0] > 0.5)


def _random_generator():
  from jaxmia.models import stylegan2
  generator = stylegan2.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                                  mapping_kwargs=dict(num_layers=2),
                                  synthesis_kwargs=dict(channel_base=256, channel_max=16))
  variables = generator.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, jnp.zeros((1, 8)))
  return generator, variables


def test_summary_closed_forms():
  out = coverage.coverage_summary(np.array([50, 50, 0, 0]))
  assert out["never_drawn"] == [2, 3] and out["rarely_drawn"] == [] and out["normalised_entropy"] == pytest.approx(0.5)
  out = coverage.coverage_summary(np.array([25, 25, 25, 1]))
  assert out["never_drawn"] == [] and out["rarely_drawn"] == [3]
  assert coverage.coverage_summary(np.full(7, 3))["normalised_entropy"] == pytest.approx(1.0)
