"""Locating what the analyses need from training runs: a model folder's training config and its data."""
import json
import pathlib

import ml_collections

from jaxmia import data


def training_config(model_dir) -> ml_collections.ConfigDict | None:
  """The config of the `jaxmia.train` run that exported `model_dir` (its parent's `config.json`), or None.

  `jaxmia.train` writes `WORKDIR/config.json` and exports to `WORKDIR/model` and `WORKDIR/best_model`.
  """
  path = pathlib.Path(model_dir).absolute().parent / "config.json"
  if not path.is_file():
    return None
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); it should be the config.json written by jaxmia.train.") from e


def dataset_and_image_size(model_dir, dataset: str | None = None, data_dir: str | None = None,
                           manual_dir: str | None = None, image_size: int | None = None):
  """(dataset config, model input size) for `model_dir`: from its training run, or from the arguments.

  A given `dataset` name means its default config (`data.get_dataset_config`) instead of the run's; the other
  arguments that are given override single values. Without a training run, `dataset` and `image_size` are
  required.
  """
  config = training_config(model_dir)
  if dataset is not None:
    dataset_config = data.get_dataset_config(dataset)
  elif config is not None:
    dataset_config = config.dataset
  else:
    raise ValueError(f"{model_dir} has no training config.json beside it (it was not exported by jaxmia.train); "
                     "name its dataset with --dataset (and --image_size).")
  if data_dir is not None:
    dataset_config.data_dir = data_dir
  if manual_dir is not None:
    dataset_config.manual_dir = manual_dir
  size = image_size or (config.image_size if config is not None else None)
  if size is None:
    raise ValueError(f"the input size of {model_dir} is unknown (no training config.json); pass --image_size.")
  return dataset_config, int(size)

