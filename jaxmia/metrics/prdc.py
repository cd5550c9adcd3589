"""Precision, recall, density and coverage of generated features (Naeem et al., 2020; Kynkäänniemi et al., 2019).

Every real sample `x_i` owns the ball `B(x_i, r_i)` whose radius is the distance to its k-th nearest
other real sample; likewise every fake sample `y_j` owns `B(y_j, s_j)` among the fakes.
  precision = fraction of fakes inside at least one real ball
  recall    = fraction of reals inside at least one fake ball
  density   = (1 / (k M)) * sum over fakes of the number of real balls containing it   (M = #fakes)
  coverage  = fraction of reals whose ball contains at least one fake
Balls are closed (distance <= radius). Distances are computed blockwise (see `distances.py`), so memory
stays bounded for large sets.

`ppa_compat=True` reproduces Plug & Play Attacks' variant: precision (recall) only tests the ball of the
nearest real (fake) sample, and density divides by the number of reals instead of fakes. PPA also
evaluates these per target class and averages over classes; do that by calling `prdc` per class.
"""
import functools

import jax
import jax.numpy as jnp

from jaxmia.metrics.distances import _HIGHEST, _float_dtype

Array = jax.Array


def _row_distances(row: Array, points: Array, points_sq: Array) -> Array:
  return jnp.maximum(jnp.sum(row * row) + points_sq - 2.0 * jnp.matmul(points, row, precision=_HIGHEST), 0.0)


def _kth_neighbour_radii(points: Array, k: int, block: int) -> Array:
  """Squared distance `[N]` from each point to its k-th nearest other point."""
  points_sq = jnp.sum(points * points, axis=1)

  def radius(args):
    row, index = args
    dist = _row_distances(row, points, points_sq).at[index].set(jnp.inf)   # exclude the point itself
    return -jax.lax.top_k(-dist, k)[0][k - 1]

  return jax.lax.map(radius, (points, jnp.arange(points.shape[0])), batch_size=block)


def _ball_membership(queries: Array, query_radii: Array, points: Array, point_radii: Array, block: int):
  """Per query: (#point balls containing it, nearest point's ball contains it, own ball holds a point)."""
  points_sq = jnp.sum(points * points, axis=1)

  def stats(args):
    row, own_radius = args
    dist = _row_distances(row, points, points_sq)
    nearest = jnp.argmin(dist)
    return (jnp.sum(dist <= point_radii), dist[nearest] <= point_radii[nearest], dist[nearest] <= own_radius)

  return jax.lax.map(stats, (queries, query_radii), batch_size=block)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _prdc(real: Array, fake: Array, k: int, block: int):
  dtype = _float_dtype(real, fake)
  centre = jnp.mean(jnp.asarray(real, dtype), axis=0)
  real, fake = jnp.asarray(real, dtype) - centre, jnp.asarray(fake, dtype) - centre
  real_radii = _kth_neighbour_radii(real, k, block)
  fake_radii = _kth_neighbour_radii(fake, k, block)
  fake_counts, fake_in_nearest, _ = _ball_membership(fake, fake_radii, real, real_radii, block)
  real_counts, real_in_nearest, real_covered = _ball_membership(real, real_radii, fake, fake_radii, block)
  num_real, num_fake = real.shape[0], fake.shape[0]
  hits = jnp.sum(fake_counts).astype(jnp.float32)
  return {
      "precision": jnp.mean(fake_counts > 0), "recall": jnp.mean(real_counts > 0),
      "density": hits / (k * num_fake), "coverage": jnp.mean(real_covered),
      "ppa_precision": jnp.mean(fake_in_nearest), "ppa_recall": jnp.mean(real_in_nearest),
      "ppa_density": hits / (k * num_real),
  }


def prdc(real_features: Array, fake_features: Array, k: int = 3, *, ppa_compat: bool = False,
         block_size: int = 512) -> dict[str, float]:
  """`{'precision', 'recall', 'density', 'coverage'}` (Python floats) of fakes `[M, D]` against reals `[N, D]`.

  `k`: the neighbour that sets each ball's radius (needs more than `k` samples in each set).
  `ppa_compat`: PPA's definitions (see the module docstring). `block_size`: rows per distance block.
  """
  real_features, fake_features = jnp.asarray(real_features), jnp.asarray(fake_features)
  if real_features.ndim != 2 or fake_features.ndim != 2 or real_features.shape[1] != fake_features.shape[1]:
    raise ValueError(f"expected real [N, D] and fake [M, D] features with the same D, got "
                     f"{real_features.shape} and {fake_features.shape}.")
  if min(real_features.shape[0], fake_features.shape[0]) <= k:
    raise ValueError(f"prdc with k={k} needs more than {k} real and fake samples, got "
                     f"{real_features.shape[0]} real and {fake_features.shape[0]} fake.")
  values = _prdc(real_features, fake_features, k, block_size)
  keys = {name: name for name in ("precision", "recall", "density", "coverage")}
  if ppa_compat:
    keys.update(precision="ppa_precision", recall="ppa_recall", density="ppa_density")
  return {name: float(values[key]) for name, key in keys.items()}
