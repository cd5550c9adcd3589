"""Progress of a long loop as log lines: `what: done/total unit (percent), rate, ETA`, at most every
`every_secs` and always at the end. The rate reads `12.5 steps/s`, or `174 s each` for slow units.

The rate is measured between two reports (so compilation before the first report and work resumed from an
earlier run do not count), the ETA is the work left at that rate. `timed(name)` blocks add the share of time
spent in them (evaluation inside a training loop). Replaces clu's `ReportProgress`, which imports TensorFlow.
"""
import contextlib
import time

from absl import logging


def format_seconds(seconds: float) -> str:
  """`42s`, `7m05s`, `3h12m`: a duration at the precision an ETA deserves."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
  """`progress(done, note="")` after each unit of work; logs a line when `every_secs` have passed since the
  last one (0: every call) or when `done` reaches `total`. The first call sets the starting point and logs
  nothing. With a `writer` (`jaxmia.writers.MetricWriter`), each line's rate is also written as the scalar
  `<unit>_per_sec` at step `done`.

  Returns whether it logged, so a caller can add its own line at the same moments.
  """

  def __init__(self, total: int, *, unit: str = "steps", what: str = "Progress", every_secs: float = 60.0,
               writer=None, clock=time.monotonic):
    self.total, self.unit, self.what, self.every_secs = int(total), unit, what, float(every_secs)
    self._writer, self._clock = writer, clock
    self._last = None  # (done, time) of the previous line (or of the first call)
    self._started = clock()
    self._timed: dict[str, float] = {}

  def message(self, done: int, rate: float, note: str = "") -> str:
    """The line logged at `done` with `rate` units per second."""
    text = f"{self.what}: {done:,}/{self.total:,} {self.unit}"
    if self.total > 0:
      text += f" ({100 * done / self.total:.1f}%)"
    text += f", {rate:.3g} {self.unit}/s" if rate >= 1 else f", {1 / rate:.3g} s each" if rate > 0 else ""
    if done < self.total:
      text += f", ETA {format_seconds((self.total - done) / rate) if rate > 0 else 'unknown'}"
    if self._timed:
      elapsed = max(self._clock() - self._started, 1e-9)
      text += " (" + ", ".join(f"{100 * t / elapsed:.0f}% {name}" for name, t in sorted(self._timed.items())) + ")"
    return text + (f"; {note}" if note else "")

  def __call__(self, done: int, note: str = "") -> bool:
    now = self._clock()
    if self._last is None:
      self._last = (done, now)
      return False
    last_done, last_time = self._last
    if done == last_done or (now - last_time < self.every_secs and done < self.total):
      return False
    rate = (done - last_done) / max(now - last_time, 1e-9)
    logging.info("%s", self.message(done, rate, note))
    if self._writer is not None:
      self._writer.write_scalars(done, {f"{self.unit}_per_sec": rate})
    self._last = (done, now)
    return True

  @contextlib.contextmanager
  def timed(self, name: str):
    """Counts the wall-clock time of the block as `name` in the lines' breakdown."""
    start = self._clock()
    try:
      yield
    finally:
      self._timed[name] = self._timed.get(name, 0.0) + self._clock() - start
