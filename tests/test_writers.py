"""TensorBoard event files written without TensorFlow (`jaxmia.writers`) and the progress lines (`jaxmia.progress`):
the files read back through tensorboard's own reader with the exact values, their TFRecord framing and CRCs
checked here byte by byte."""
import struct

import numpy as np
import pytest
from absl import logging
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2

from jaxmia import progress, writers

# Values exact in float32 (what TensorBoard stores), of several magnitudes and signs.
VALUES = {"loss": [2.5, 0.125, -3.75e-5], "accuracy": [0.5, 0.75, 1.0]}


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """`{tag: [(step, value)]}` of the event files in `logdir`, by tensorboard's event accumulator."""
  accumulator = event_accumulator.EventAccumulator(str(logdir))
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def masked_crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) masked as TFRecord does, computed bitwise here."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(data: bytes) -> list[bytes]:
  """The payloads of a TFRecord file, each frame's two CRCs checked."""
  out, offset = [], 0
  while offset < len(data):
    header = data[offset:offset + 8]
    (length,), (length_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[offset + 8:offset + 12])
    assert length_crc == masked_crc32c(header)
    payload = data[offset + 12:offset + 12 + length]
    assert struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])[0] == masked_crc32c(payload)
    out.append(payload)
    offset += 16 + length
  assert offset == len(data)
  return out


def test_crc32c_reference_value():
  # The CRC-32C check value of "123456789" (RFC 3720), unmasked through the mask's inverse.
  masked = masked_crc32c(b"123456789")
  rotated = (masked - 0xA282EAD8) & 0xFFFFFFFF
  assert ((rotated << 15) | (rotated >> 17)) & 0xFFFFFFFF == 0xE3069283


def test_metric_writer_events_read_back_by_tensorboard(tmp_path):
  writer = writers.MetricWriter(tmp_path)
  for step in range(3):
    writer.write_scalars(10 * step, {tag: values[step] for tag, values in VALUES.items()})
  writer.write_scalars(30, {"loss": np.float64(0.1)})  # a float64 is stored as the float32 TensorBoard shows
  writer.close()
  assert writer.path.parent == tmp_path and "tfevents" in writer.path.name
  scalars = read_scalars(tmp_path)
  assert scalars == {"loss": [(0, 2.5), (10, 0.125), (20, np.float32(-3.75e-5)), (30, np.float32(0.1))],
                     "accuracy": [(0, 0.5), (10, 0.75), (20, 1.0)]}
  # The framing and CRCs of every record, and the first event naming the format.
  payloads = records(writer.path.read_bytes())
  assert len(payloads) == 5
  first = event_pb2.Event.FromString(payloads[0])
  assert first.file_version == "brain.Event:2"
  last = event_pb2.Event.FromString(payloads[-1])
  assert last.step == 30 and [v.tag for v in last.summary.value] == ["loss"]


def test_just_logging_writes_no_file(tmp_path):
  writer = writers.MetricWriter(tmp_path / "logs", just_logging=True)
  writer.write_scalars(1, {"loss": 1.0})
  assert writer.path is None and not (tmp_path / "logs").exists()


def test_write_event_file_replaces_the_curves(tmp_path):
  path = tmp_path / "events.out.tfevents.stage2"
  curves = {"stage2/loss": np.array([3.0, 2.0, np.nan, 0.5]), "stage2/confidence": np.array([0.25, 0.5, 0.75, 1.0])}
  writers.write_event_file(path, writers.curves(curves))
  writers.write_event_file(path, writers.curves({k: v * 2 for k, v in curves.items()}))  # a rerun rewrites it
  assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
  assert read_scalars(tmp_path) == {"stage2/loss": [(0, 6.0), (1, 4.0), (3, 1.0)],  # NaN: no point
                                    "stage2/confidence": [(0, 0.5), (1, 1.0), (2, 1.5), (3, 2.0)]}
  with pytest.raises(ValueError, match="tfevents"):
    writers.write_event_file(tmp_path / "curves.bin", [])
  with pytest.raises(ValueError, match="different lengths"):
    writers.curves({"a": [1.0], "b": [1.0, 2.0]})


class FakeClock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_lines_rate_and_eta(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
  clock = FakeClock()
  report = progress.Progress(100, unit="latents", what="Stage 2", every_secs=30.0, clock=clock)
  assert not report(20)  # the starting point (e.g. resumed work): no line, not counted in the rate
  clock.now += 10
  assert not report(30)  # less than every_secs since the start
  clock.now += 30
  assert report(40, "batch 2/5")  # 20 latents in 40 s: 0.5/s, 60 left: 2 minutes
  assert lines == ["Stage 2: 40/100 latents (40.0%), 2 s each, ETA 2m00s; batch 2/5"]
  with report.timed("eval"):
    clock.now += 20
  assert report(100)  # the end is always reported, without an ETA
  assert lines[-1] == "Stage 2: 100/100 latents (100.0%), 3 latents/s (33% eval)"
  assert not report(100)


def test_progress_writes_its_rate(tmp_path):
  clock, writer = FakeClock(), writers.MetricWriter(tmp_path)
  report = progress.Progress(10, writer=writer, every_secs=0, clock=clock)
  report(0)
  clock.now += 4
  report(2)
  writer.close()
  assert read_scalars(tmp_path) == {"steps_per_sec": [(2, 0.5)]}


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3599, "59m59s"),
                                           (3600 * 5 + 60 * 7 + 30, "5h07m")])
def test_format_seconds(seconds, text):
  assert progress.format_seconds(seconds) == text
