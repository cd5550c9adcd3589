"""What every `python -m jaxmia.<program>` does before its work: checks argv, joins the other processes
(`jax.distributed` when launched multi-host), keeps TensorFlow (tfds, clu's writers) off accelerators and
drops orbax's per-checkpoint INFO lines from the log (its warnings and errors still show)."""
import logging as std_logging
import os

import jax
from absl import app, logging

from jaxmia import parallel


class _WithoutOrbaxInfo(std_logging.Filter):

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def start(argv) -> None:
  """Call first in an absl `main(argv)`."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_WithoutOrbaxInfo())
  parallel.initialize_distributed()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (heavy; only programs need it)
  tf.config.set_visible_devices([], "GPU")
  logging.info("JAX process %d/%d, %d local / %d global devices.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
