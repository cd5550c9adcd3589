"""Calibration: reliability bins and expected calibration error (Guo et al., 2017)."""
import functools

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.jit, static_argnames="num_bins")
def reliability_bins(probs: Array, labels: Array, num_bins: int = 10) -> dict[str, Array]:
  """Per-bin statistics of the top-1 confidence: `{'count', 'accuracy', 'confidence'}`, each `[num_bins]`.

  `probs` `[N, C]` (softmax outputs), `labels` `[N]`. Bin `b` holds confidences in
  `(b / num_bins, (b + 1) / num_bins]`; empty bins have accuracy and confidence 0.
  """
  confidence = jnp.max(probs, axis=-1).astype(jnp.float32)
  correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
  inner_edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=jnp.float32)[1:-1]
  bins = jnp.searchsorted(inner_edges, confidence, side="left")
  total = lambda values: jax.ops.segment_sum(values, bins, num_segments=num_bins)
  count = total(jnp.ones_like(confidence))
  safe = jnp.maximum(count, 1.0)
  return {"count": count, "accuracy": total(correct) / safe, "confidence": total(confidence) / safe}


def expected_calibration_error(probs: Array, labels: Array, num_bins: int = 10) -> Array:
  """ECE = sum over bins of (bin size / N) * |accuracy - mean confidence| (0-d array; jit-able).

  `probs` `[N, C]`, `labels` `[N]`; equal-width confidence bins as in `reliability_bins`.
  """
  bins = reliability_bins(probs, labels, num_bins)
  return jnp.sum(bins["count"] * jnp.abs(bins["accuracy"] - bins["confidence"])) / probs.shape[0]
