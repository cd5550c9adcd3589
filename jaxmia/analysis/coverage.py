"""Class coverage of a GAN prior: which classes its samples look like to a classifier.

A model inversion attack can only find what its prior can draw. Labelling many prior samples with the
evaluation model tells which classes the prior draws often, rarely or never; PPA's stage 1 picks its starting
points from such samples, so a class the prior never draws starts from another class's images.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import generate, parallel
from jaxmia.data import image_ops


def prior_class_histogram(generator, generator_variables, classifier, classifier_variables, *, num_samples: int,
                          num_classes: int, seed: int, image_size: int, truncation_psi: float = 1.0,
                          batch_size: int = 100) -> dict:
  """`{'counts' [num_classes], 'confidence' [num_classes]}` of `num_samples` prior samples.

  Samples `z ~ N(0, I)` from `jax.random.key(seed)` (const noise), clamped to [-1, 1], resized to the
  classifier's `image_size` (antialiased bilinear) and labelled by its top-1 class; `confidence` is the mean
  top-1 softmax probability of the samples given each class (NaN where none).
  """
  images = generate.generate_images(generator, generator_variables, jax.random.key(seed), num_samples,
                                    truncation_psi=truncation_psi, batch_size=batch_size)

  @jax.jit
  def classify(batch):
    x = jnp.clip(batch, -1.0, 1.0)
    if x.shape[1] != image_size:
      x = image_ops.resize(x, image_size)
    probs = jax.nn.softmax(classifier.apply(classifier_variables, x).astype(jnp.float32), axis=-1)
    return jnp.argmax(probs, axis=-1), jnp.max(probs, axis=-1)

  labels, confidence = parallel.map_arrays(classify, (images,), batch_size)
  counts = np.bincount(labels, minlength=num_classes)
  sums = np.bincount(labels, weights=confidence, minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_confidence = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
  return {"counts": counts, "confidence": mean_confidence}


def coverage_summary(counts: np.ndarray, rare_fraction: float = 0.1) -> dict:
  """Classes never drawn, drawn rarely (< `rare_fraction` of the uniform share) and the normalised entropy."""
  counts = np.asarray(counts, np.float64)
  share = counts.sum() / len(counts)
  p = counts / counts.sum()
  entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)) / np.log(len(counts))
  return {"num_samples": int(counts.sum()), "num_classes": len(counts),
          "never_drawn": np.flatnonzero(counts == 0).tolist(),
          "rarely_drawn": np.flatnonzero((counts > 0) & (counts < rare_fraction * share)).tolist(),
          "normalised_entropy": float(entropy)}
