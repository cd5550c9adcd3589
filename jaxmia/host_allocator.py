"""Keeping freed host memory for reuse, so XLA:CPU's per-call buffers stop costing page faults.

XLA:CPU allocates each call's temporary buffer and outputs with `posix_memalign` on its worker threads. glibc
serves a large request from a worker thread's arena with a fresh `mmap` and returns it with `munmap` on free,
so every call of a jitted step touches its buffers' pages for the first time again: the kernel zero-fills
each 4 KiB page on a fault (`docs/speed.md` has what it cost). With one arena, no `mmap` for large blocks and
no trimming of the heap's top, freed blocks stay mapped and the next call reuses them; the process keeps its
peak heap (as PyTorch's and XLA's GPU caching allocators do).

Process-wide and only for glibc (Linux); elsewhere a no-op. Call it before the JAX backend starts its threads
(`jaxmia.cli.start` and the benchmark workers do): a thread that has already allocated keeps its arena.
`JAXMIA_KEEP_FREED_MEMORY=0` leaves glibc's defaults.
"""
import ctypes
import os
import platform

from absl import logging

ENV_VAR = "JAXMIA_KEEP_FREED_MEMORY"

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim the heap's top


def available() -> bool:
  """Whether this process's malloc is glibc's (Linux), the one `keep_freed_memory` knows how to set."""
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory mapped (module docstring); whether it did."""
  setting = os.environ.get(ENV_VAR, "1")
  if setting not in ("0", "1"):
    raise ValueError(f"{ENV_VAR} must be 1 (keep freed host memory, the default) or 0 (glibc's defaults), "
                     f"got {setting!r}.")
  if setting == "0" or not available():
    return False
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  done = all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
  if not done:
    logging.warning("glibc's mallopt refused %s; host buffers are allocated with its defaults.", SETTINGS)
  return done
