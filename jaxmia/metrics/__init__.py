"""Evaluation metrics: accuracy, calibration, feature distances, FID and PRDC, as pure (jitted) functions.

Jitted cores take NumPy or JAX arrays. `topk_accuracy` and `expected_calibration_error` return 0-d
arrays (usable inside jit; `float()` them outside), `fid_from_features` a Python float and `prdc` a dict
of Python floats. `metrics.knowledge_extraction` (a submodule) holds the settings and scoring of the
knowledge extraction score ξ; its student is trained by `jaxmia.student`. Nothing here imports the training,
attack or evaluation code.
"""
from jaxmia.metrics.accuracy import topk_accuracy, topk_correct
from jaxmia.metrics.calibration import expected_calibration_error, reliability_bins
from jaxmia.metrics.distances import (nearest_neighbour_distances, nearest_neighbour_distances_by_class,
                                      nearest_neighbours, pairwise_squared_distances)
from jaxmia.metrics.fid import feature_statistics, fid_from_features, frechet_distance
from jaxmia.metrics.prdc import prdc

__all__ = [
    "expected_calibration_error", "feature_statistics", "fid_from_features", "frechet_distance",
    "nearest_neighbour_distances", "nearest_neighbour_distances_by_class", "nearest_neighbours",
    "pairwise_squared_distances", "prdc", "reliability_bins", "topk_accuracy", "topk_correct",
]
