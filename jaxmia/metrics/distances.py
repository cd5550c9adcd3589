"""Squared Euclidean distances between feature sets and nearest-neighbour search with bounded memory.

Distances use `|a|^2 + |b|^2 - 2 a.b` (one matrix product, HIGHEST precision) after subtracting the
reference mean from both sets, which removes most of the float32 cancellation for features far from
the origin; results are clamped at 0. Inputs in float64 (with `jax_enable_x64`) are computed in float64.
The search scans the references in chunks of `chunk_size` and the queries in blocks of `query_block`,
so memory stays at `query_block x chunk_size` distances whatever the set sizes.
"""
import functools

import jax
import jax.numpy as jnp

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def _float_dtype(*arrays):
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def pairwise_squared_distances(a: Array, b: Array) -> Array:
  """`[A, B]` squared L2 distances between rows of `a` `[A, D]` and `b` `[B, D]`, clamped at 0."""
  dtype = _float_dtype(a, b)
  a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
  cross = jnp.matmul(a, b.T, precision=_HIGHEST)
  squared = jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2.0 * cross
  return jnp.maximum(squared, 0.0)


def nearest_neighbours(queries: Array, references: Array, query_labels: Array | None = None,
                       reference_labels: Array | None = None, *, chunk_size: int = 2048,
                       query_block: int = 1024) -> tuple[Array, Array]:
  """Nearest reference of every query: `(squared_distance [Q], index [Q])`.

  `queries` `[Q, D]`, `references` `[R, D]`. With labels (`[Q]`, `[R]` ints), only references of the
  query's own class count; a query whose class has no reference gets distance `inf` and index -1.
  """
  if queries.ndim != 2 or references.ndim != 2 or queries.shape[1] != references.shape[1]:
    raise ValueError(f"expected queries [Q, D] and references [R, D] with the same D, got {queries.shape} "
                     f"and {references.shape}.")
  if (query_labels is None) != (reference_labels is None):
    raise ValueError("give both query_labels and reference_labels, or neither.")
  if references.shape[0] == 0:
    raise ValueError("nearest_neighbours needs at least one reference.")
  chunk_size = min(chunk_size, references.shape[0])
  return _nearest(queries, references, query_labels, reference_labels, chunk_size, query_block)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _nearest(queries, references, query_labels, reference_labels, chunk_size, query_block):
  dtype = _float_dtype(queries, references)
  queries, references = jnp.asarray(queries, dtype), jnp.asarray(references, dtype)
  centre = jnp.mean(references, axis=0)
  queries, references = queries - centre, references - centre

  num_refs = references.shape[0]
  padding = -num_refs % chunk_size
  num_chunks = (num_refs + padding) // chunk_size
  chunks = (
      jnp.pad(references, ((0, padding), (0, 0))).reshape(num_chunks, chunk_size, -1),
      jnp.pad(jnp.sum(references * references, axis=1), (0, padding)).reshape(num_chunks, chunk_size),
      (jnp.arange(num_refs + padding) < num_refs).reshape(num_chunks, chunk_size),
      jnp.arange(num_refs + padding, dtype=jnp.int32).reshape(num_chunks, chunk_size),
  )
  by_class = query_labels is not None
  if by_class:
    labels = jnp.pad(jnp.asarray(reference_labels, jnp.int32), (0, padding)).reshape(num_chunks, chunk_size)
    query_labels = jnp.asarray(query_labels, jnp.int32)
  else:   # dummy labels that always match
    labels = jnp.zeros((num_chunks, chunk_size), jnp.int32)
    query_labels = jnp.zeros(queries.shape[0], jnp.int32)

  def nearest_one(args):
    query, label = args
    query_sq = jnp.sum(query * query)

    def scan_chunk(best, chunk):
      (refs, refs_sq, valid, index, ref_labels), (best_dist, best_index) = chunk, best
      dist = jnp.maximum(query_sq + refs_sq - 2.0 * jnp.matmul(refs, query, precision=_HIGHEST), 0.0)
      dist = jnp.where(valid & (ref_labels == label), dist, jnp.inf)
      arg = jnp.argmin(dist)
      closer = dist[arg] < best_dist
      return (jnp.where(closer, dist[arg], best_dist), jnp.where(closer, index[arg], best_index)), None

    init = (jnp.array(jnp.inf, dtype), jnp.array(-1, jnp.int32))
    return jax.lax.scan(scan_chunk, init, (*chunks, labels))[0]

  return jax.lax.map(nearest_one, (queries, query_labels), batch_size=query_block)


def nearest_neighbour_distances(queries: Array, references: Array, *, chunk_size: int = 2048) -> Array:
  """Squared L2 distance `[Q]` from each query `[Q, D]` to its nearest reference `[R, D]`."""
  return nearest_neighbours(queries, references, chunk_size=chunk_size)[0]


def nearest_neighbour_distances_by_class(queries: Array, query_labels: Array, references: Array,
                                         reference_labels: Array, *, chunk_size: int = 2048) -> Array:
  """Squared L2 distance `[Q]` from each query to the nearest reference of the query's own class.

  E.g. PPA's feature distance: every attack result against the training images of its target class.
  `inf` for a query whose class has no reference.
  """
  return nearest_neighbours(queries, references, query_labels, reference_labels, chunk_size=chunk_size)[0]
