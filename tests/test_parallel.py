"""`parallel.map_batches` / `map_arrays`: padding to a fixed batch, rows cut back, PRNG keys and sharded inputs
on a 4-device mesh, one compilation for all batches."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import parallel


@pytest.mark.parametrize("num_devices", [None, 4])
def test_map_arrays_pads_cuts_and_compiles_once(num_devices):
  mesh = parallel.make_mesh(num_devices) if num_devices else None
  x = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  keys = jax.random.split(jax.random.key(0), 10)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(x, k):
    return {"sum": x.sum(-1), "noise": jax.vmap(jax.random.normal)(k)}

  done = []
  out = parallel.map_arrays(fn, (x, keys), 4, mesh=mesh, progress=done.append)
  np.testing.assert_array_equal(out["sum"], 3 * np.arange(10))
  np.testing.assert_array_equal(out["noise"], jax.vmap(jax.random.normal)(keys))  # per-row keys follow their rows
  assert done == [4, 8, 10]


def test_map_batches_yields_each_batch_cut_to_its_rows():
  batches = [(np.arange(4),), (np.arange(2) + 10,), (np.arange(3) + 20,)]
  seen = []

  def fn(x):
    seen.append(np.asarray(x))
    return jnp.asarray(x) * 2

  outputs = list(parallel.map_batches(fn, batches, 4, mesh=parallel.make_mesh()))
  assert [o.tolist() for o in outputs] == [[0, 2, 4, 6], [20, 22], [40, 42, 44]]
  np.testing.assert_array_equal(seen[1], [10, 11, 11, 11])  # padded by repeating the last row
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    list(parallel.map_batches(fn, batches, 3, mesh=parallel.make_mesh()))
  with pytest.raises(ValueError, match="no rows"):
    parallel.map_arrays(fn, (np.zeros((0, 2)),), 4)
