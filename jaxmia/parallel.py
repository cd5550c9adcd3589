"""Device mesh, shardings and host<->device batch helpers: the one place that knows about devices.

Convention: a 1-D mesh with axis `'data'` over all devices of all processes, built with `AxisType.Auto`
so that `jax.jit` propagates shardings the same way on jax 0.10 and 0.12 (where `jax.make_mesh`
defaults to explicit axes). Batches are split over `'data'`; parameters and optimiser state are
replicated. Multi-host runs call `initialize_distributed()` first.
"""
import os

import jax
import numpy as np
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
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree of host values (parameters, optimiser state) on every device of the mesh.

  Built per leaf with `make_array_from_callback`, which also works when the mesh spans several processes
  (each process fills only its own devices; every process must pass the same values).
  """
  sharding = replicated(mesh)

  def put(x):
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      return jax.device_put(x, sharding)  # typed keys have no host (numpy) form
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree_util.tree_map(put, tree)


def process_slice(global_batch: int) -> slice:
  """Rows of a global batch that this process feeds (contiguous, equal-sized blocks per process)."""
  per_process = global_batch // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)
