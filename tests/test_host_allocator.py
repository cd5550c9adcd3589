"""`jaxmia.host_allocator`: with freed host memory kept, a jitted call's large output reuses pages instead of
faulting in fresh ones; with glibc's defaults it faults them in on every call (the measured reason it exists).

Each case runs in a child process (the setting is process-wide) and counts the minor page faults of steady-state
calls made from the main thread and from a new thread (glibc gives threads their own arenas).
"""
import json
import subprocess

import pytest

from conftest import start_program
from jaxmia import host_allocator

pytestmark = pytest.mark.skipif(not host_allocator.available(), reason="glibc's malloc only")

CHILD = r"""
import json, resource, threading
import jax, jax.numpy as jnp
from jaxmia import host_allocator
kept = host_allocator.keep_freed_memory()
x = jnp.ones((4096, 4096), jnp.float32)  # 64 MiB: above glibc's largest dynamic mmap threshold (32 MiB)
double = jax.jit(lambda x: x * 2 + 1)
faults = {}

def measure(name):
  # The heap grows to its high-water mark over the first calls: a freed block of exactly the requested size
  # cannot serve an aligned request of that size until it has merged with a free neighbour.
  for _ in range(16):
    jax.block_until_ready(double(x))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(8):
    jax.block_until_ready(double(x))
  faults[name] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8

measure("main")
thread = threading.Thread(target=measure, args=("thread",))
thread.start()
thread.join()
print(json.dumps(dict(kept=kept, pages=x.nbytes // resource.getpagesize(), **faults)))
"""


def faults_per_call(setting: str) -> dict:
  with start_program("-c", CHILD, env={host_allocator.ENV_VAR: setting}, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE) as proc:
    stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr
  return json.loads(stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults():
  kept = faults_per_call("1")
  assert kept["kept"]
  for name in ("main", "thread"):
    assert kept[name] < 0.125 * kept["pages"], kept  # less than one call's pages over the 8 calls


def test_glibc_defaults_fault_in_every_call():
  default = faults_per_call("0")
  assert not default["kept"]
  assert default["main"] > 0.9 * default["pages"], default


def test_bad_setting_is_a_one_line_error(monkeypatch):
  monkeypatch.setenv(host_allocator.ENV_VAR, "yes")
  with pytest.raises(ValueError, match="must be 1"):
    host_allocator.keep_freed_memory()
