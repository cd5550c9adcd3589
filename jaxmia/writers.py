"""TensorBoard scalars without TensorFlow: event files written with tensorboard's own protos and record framing.

An event file is a sequence of TFRecords (little-endian length, masked CRC-32C of the length, the serialised
`Event`, masked CRC-32C of it); the first event names the format version, each later one holds the scalars of
one step as `simple_value`s (float32, as TensorBoard shows them). `tensorboard --logdir` and its
`event_accumulator` read these files; no TensorFlow is imported (`tensorboard.compat.proto` and
`tensorboard.summary.writer.record_writer` need only protobuf).

- `MetricWriter`: what the training loops log, a step at a time: each step's scalars as one log line and
  appended to an event file in the workdir (process 0; the others only log).
- `write_event_file`: a whole event file written at once and atomically, for curves computed after the fact
  (the attack's per-step telemetry, an evaluation's metrics): rewriting it on a resumed run replaces the file
  instead of adding duplicate points.
"""
import io
import itertools
import os
import socket
import time
from collections.abc import Mapping

import numpy as np
from absl import logging
from etils import epath
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from jaxmia import files

FILE_VERSION = "brain.Event:2"
_file_counter = itertools.count()


def scalar_event(step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> event_pb2.Event:
  """One `Event` at `step` holding each of `scalars` (`{tag: number}`) as a float32 `simple_value`."""
  event = event_pb2.Event(step=int(step), wall_time=time.time() if wall_time is None else float(wall_time))
  for tag, value in scalars.items():
    event.summary.value.add(tag=str(tag), simple_value=float(np.asarray(value, np.float64)))
  return event


def _version_event(wall_time: float | None = None) -> event_pb2.Event:
  return event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time, file_version=FILE_VERSION)


def event_file_name(suffix: str = "") -> str:
  """`events.out.tfevents.<seconds>.<host>.<pid>.<n><suffix>`: TensorBoard reads files whose name holds
  'tfevents', in name order; host, process id and a counter keep concurrent writers apart."""
  return f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_counter)}" \
      + suffix


class MetricWriter:
  """Scalars of a loop: one log line per `write_scalars` call and, unless `just_logging`, one event in a new
  event file in `logdir` (created on the first write; flushed after each call, so TensorBoard follows the run).

  The replacement of clu's `create_default_writer`: call sites keep `write_scalars(step, {name: value})` and
  `flush()`.
  """

  def __init__(self, logdir, just_logging: bool = False):
    self._logdir = epath.Path(logdir)
    self._just_logging = just_logging
    self._file = None
    self._records = None
    self.path = None  # the event file, once written


  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    scalars = {k: float(np.asarray(v, np.float64)) for k, v in scalars.items()}
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))
    if self._just_logging or not scalars:
      return
    if self._file is None:
      self._logdir.mkdir(parents=True, exist_ok=True)
      self.path = self._logdir / event_file_name()
      self._file = self.path.open("wb")
      self._records = RecordWriter(self._file)
      self._records.write(_version_event().SerializeToString())
    self._records.write(scalar_event(step, scalars).SerializeToString())
    self._file.flush()

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def event_file_bytes(points) -> bytes:
  """The bytes of an event file holding `points`: `(step, {tag: value})` pairs, one event each, in order."""
  buffer = io.BytesIO()
  records = RecordWriter(buffer)
  wall_time = time.time()
  records.write(_version_event(wall_time).SerializeToString())
  for step, scalars in points:
    if scalars:
      records.write(scalar_event(step, scalars, wall_time).SerializeToString())
  return buffer.getvalue()


def write_event_file(path, points) -> None:
  """Writes the event file `path` (its name must contain 'tfevents') holding `points` (`(step, {tag: value})`
  pairs) atomically, replacing an earlier version: for values known all at once, such as a finished stage's
  per-step curves."""
  path = epath.Path(path)
  if "tfevents" not in path.name:
    raise ValueError(f"{path}: TensorBoard reads only event files whose name contains 'tfevents'.")
  path.parent.mkdir(parents=True, exist_ok=True)
  data = event_file_bytes(points)
  files.atomic_write(path, lambda f: f.write(data))


def curves(scalars: Mapping[str, np.ndarray], first_step: int = 0) -> list[tuple[int, dict[str, float]]]:
  """`(step, {tag: value})` points from curves `{tag: values [T]}` of equal length: step `first_step + t`
  holds the t-th value of each; NaN values (nothing measured) are left out."""
  arrays = {tag: np.asarray(values, np.float64).reshape(-1) for tag, values in scalars.items()}
  lengths = {len(a) for a in arrays.values()}
  if len(lengths) > 1:
    raise ValueError(f"curves of different lengths: { {tag: len(a) for tag, a in arrays.items()} }.")
  length = lengths.pop() if lengths else 0
  return [(first_step + t, {tag: a[t] for tag, a in arrays.items() if not np.isnan(a[t])}) for t in range(length)]
