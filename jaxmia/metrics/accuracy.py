"""Top-k accuracy (jit-able; per-example flags for accumulating over batches)."""
import jax
import jax.numpy as jnp

Array = jax.Array


def topk_correct(logits: Array, labels: Array, k: int = 1) -> Array:
  """`[B]` bool: is `labels[b]` among the `k` largest entries of `logits[b]` (`[B, C]`)?"""
  if not 1 <= k <= logits.shape[-1]:
    raise ValueError(f"top-k accuracy needs 1 <= k <= number of classes ({logits.shape[-1]}), got k={k}.")
  top = jax.lax.top_k(logits, k)[1]
  return jnp.any(top == jnp.asarray(labels)[:, None], axis=-1)


def topk_accuracy(logits: Array, labels: Array, k: int = 1) -> Array:
  """Fraction of rows whose label is in the top `k` logits (0-d float32 array; `float()` for a number)."""
  return jnp.mean(topk_correct(logits, labels, k).astype(jnp.float32))
