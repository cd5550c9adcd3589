"""Training-image features of the attacked classes, computed once per network and class and cached as npz
files under `cache_dir/<network>-<hash of weights + preprocessing>/<dataset>-<hash of the dataset config>/`."""
import pathlib
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxmia import data, files, parallel
from jaxmia.data.pipeline import IndexedSource
from jaxmia.evaluate.networks import json_digest
from jaxmia.evaluate.scoring import jit_sharded_batch, real_features_fn


def class_subset(split, classes) -> tuple[Any, np.ndarray]:
  """`(split restricted to the given classes, positions of its examples in split)`, in split order."""
  positions = np.flatnonzero(np.isin(split.labels, np.asarray(classes)))
  subset = data.Split(IndexedSource(split.source, positions), num_classes=split.num_classes,
                      num_examples=len(positions), class_names=split.class_names, labels=split.labels[positions])
  return subset, positions


def dataset_cache_key(dataset_config) -> str:
  """The cache folder name of a dataset config: its name and a hash of its settings (not its local paths)."""
  settings = {k: v for k, v in dataset_config.to_dict().items() if k not in ("manual_dir", "data_dir")}
  return f"{dataset_config.name}-{json_digest(settings)}"


def training_features(networks, network_variables, split, classes, *, cache_dir: pathlib.Path, dataset_key: str,
                      batch_size: int, mesh, ppa_compat: bool) -> dict:
  """`{network name: (features [R, D], labels [R], positions [R])}` of the training images of `classes`.

  Rows are grouped by class in the order of `classes`; positions index `split`. Each (network, class) is
  read from `cache_dir/<network key>/<dataset_key>/class_XXXXX.npz` when that file matches the split's
  images of the class, else computed (one pass over the missing classes for all networks) and written there.
  """
  folders = {net.name: cache_dir / net.cache_key(ppa_compat) / dataset_key for net in networks}
  path = lambda name, c: folders[name] / f"class_{int(c):05d}.npz"
  per_class = {}   # (network name, class) -> (features, positions)
  for net in networks:
    for c in classes:
      if path(net.name, c).is_file():
        with np.load(path(net.name, c)) as f:
          if np.array_equal(f["positions"], np.flatnonzero(split.labels == c)):
            per_class[net.name, int(c)] = (f["features"], f["positions"])

  todo = {net.name: [int(c) for c in classes if (net.name, int(c)) not in per_class] for net in networks}
  computing = tuple(net for net in networks if todo[net.name])
  if computing:
    missing = sorted(set().union(*todo.values()))
    subset, positions = class_subset(split, missing)
    logging.info("Computing training-image features of %d classes (%d images) for %s.", len(missing),
                 len(positions), ", ".join(net.name for net in computing))
    fn = jit_sharded_batch(real_features_fn(computing, ppa_compat=ppa_compat), mesh, batch_args=1, replicated_args=1)
    variables = parallel.replicate({net.name: network_variables[net.name] for net in computing}, mesh)
    batches = ((b["image"],) for b in data.batches(subset, batch_size, seed=0, epoch=0, shuffle=False,
                                                     drop_remainder=False, process_index=0, process_count=1))
    parts = list(parallel.map_batches(lambda images: fn(images, variables), batches, batch_size, mesh=mesh))
    for net in computing:
      features = np.concatenate([part[net.name] for part in parts])
      if jax.process_index() == 0:
        folders[net.name].mkdir(parents=True, exist_ok=True)
      for c in todo[net.name]:
        rows = subset.labels == c
        per_class[net.name, c] = (features[rows], positions[rows])
        if jax.process_index() == 0:
          files.atomic_write(path(net.name, c),
                             lambda f: np.savez(f, features=features[rows], positions=positions[rows]))
  result = {}
  for net in networks:
    parts = [per_class[net.name, int(c)] for c in classes]
    result[net.name] = (np.concatenate([f for f, _ in parts]),
                        np.concatenate([np.full(len(p), c, np.int32) for (_, p), c in zip(parts, classes)]),
                        np.concatenate([p for _, p in parts]))
  return result
