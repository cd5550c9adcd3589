"""Device mesh, shardings and host<->device batch helpers: the one place that knows about devices.

Convention: a 1-D mesh with axis `'data'` over all devices of all processes, built with `AxisType.Auto`
so that `jax.jit` propagates shardings the same way on jax 0.10 and 0.12 (where `jax.make_mesh`
defaults to explicit axes). Batches are split over `'data'`; parameters and optimiser state are
replicated. Multi-host runs call `initialize_distributed()` first.

`map_batches` (and `map_arrays` over it) is the one way to run a fixed-size jitted function over a dataset:
it pads the last batch, feeds each process's rows and brings the outputs back to the host.
"""
import os
from typing import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Joins a multi-process run when the standard JAX environment variables say there is one.

  `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (or a cluster JAX detects itself,
  e.g. SLURM/TPU pods) are honoured; a single-process run does nothing.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A `('data',)` mesh over the first `num_devices` devices (default: all devices of all processes)."""
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over devices, other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh, what: str = "batch size") -> None:
  """Raises a clear error unless `global_batch` splits evenly over the mesh's devices."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"The {what} ({global_batch}) must be divisible by the number of devices ({n}); "
                     f"choose a multiple of {n} or run on fewer devices.")


def shard_batch(batch, mesh: jax.sharding.Mesh):
  """Places a pytree of host arrays holding this process's part of a global batch on the mesh.

  Each process passes `global_batch / process_count` rows; the result is a global `jax.Array` sharded
  along `'data'`.
  """
  sharding = data_sharding(mesh)

  def put(x):
    if _is_key_array(x):  # typed PRNG keys have no host (numpy) form: place their data, then wrap it again
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree_util.tree_map(put, batch)


def _is_key_array(x) -> bool:
  return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree of host values (parameters, optimiser state) on every device of the mesh.

  Built per leaf with `make_array_from_callback`, which also works when the mesh spans several processes
  (each process fills only its own devices; every process must pass the same values).
  """
  sharding = replicated(mesh)

  def put(x):
    if _is_key_array(x):
      return jax.device_put(x, sharding)  # typed keys have no host (numpy) form
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree_util.tree_map(put, tree)


def process_slice(global_batch: int) -> slice:
  """Rows of a global batch that this process feeds (contiguous, equal-sized blocks per process)."""
  per_process = global_batch // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def to_host(tree):
  """A pytree of (possibly multi-process sharded) arrays as host numpy arrays holding the global values."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree_util.tree_map(np.asarray, tree)


def map_batches(fn: Callable, batches: Iterable[tuple], batch_size: int, *, mesh: jax.sharding.Mesh | None = None
                ) -> Iterator:
  """Yields the outputs of `fn(*batch)` for each batch, as host arrays cut to the batch's rows.

  `fn` is a function of fixed-size batches (jitted, so it compiles once): each batch, a tuple of arrays with
  the same leading size n <= `batch_size` (numpy, or jax arrays such as PRNG keys), is padded to `batch_size`
  rows by repeating its last row, and the padding rows are dropped from the outputs. Without a `mesh`, `fn`
  gets the padded arrays. With one, every process passes the same global batches and feeds its own rows
  (`process_slice`, `shard_batch`; `batch_size` must divide by the device count). Outputs, sharded or
  replicated, come back whole to every process (`to_host`). The next batch is dispatched before the previous
  one's outputs are copied to the host.
  """
  if mesh is not None:
    check_batch_size(batch_size, mesh)
    rows = process_slice(batch_size)
  pending = None
  for batch in batches:
    n = len(batch[0])
    if not 0 < n <= batch_size:
      raise ValueError(f"map_batches got a batch of {n} rows; batches need 1 to batch_size={batch_size} rows.")
    index = np.minimum(np.arange(batch_size), n - 1)
    padded = tuple(x[index] if isinstance(x, jax.Array) else np.asarray(x)[index] for x in batch)
    if mesh is not None:
      padded = shard_batch(tuple(x[rows] for x in padded), mesh)
    outputs = fn(*padded)
    if pending is not None:
      yield _rows_to_host(*pending)
    pending = (n, outputs)
  if pending is not None:
    yield _rows_to_host(*pending)


def _rows_to_host(num_rows: int, outputs):
  return jax.tree_util.tree_map(lambda x: x[:num_rows], to_host(outputs))


def map_arrays(fn: Callable, inputs: tuple, batch_size: int, *, mesh: jax.sharding.Mesh | None = None,
               progress: Callable[[int], None] | None = None):
  """`fn` over consecutive `batch_size`-row slices of `inputs` (a tuple of arrays with the same leading size N)
  through `map_batches`; returns its outputs concatenated on the host (N rows).

  `progress(rows_done)` is called after each batch's outputs reach the host.
  """
  num_rows = len(inputs[0])
  if mesh is not None:
    check_batch_size(batch_size, mesh)
  if not num_rows:
    raise ValueError("map_arrays got no rows to process.")
  slices = (tuple(x[start:start + batch_size] for x in inputs) for start in range(0, num_rows, batch_size))
  results = []
  for outputs in map_batches(fn, slices, batch_size, mesh=mesh):
    results.append(outputs)
    if progress:
      progress(min(len(results) * batch_size, num_rows))
  return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *results)
