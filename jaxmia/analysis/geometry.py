"""Embedding geometry of a classifier (the paper's Figs. 4-5): how label smoothing shapes penultimate features.

For every training sample: the mean L2 distance to the other samples of its class (intra-class) and to the
samples of all other classes (inter-class), and the distance to its nearest neighbour of its own class and of
another class. Positive α pulls classes into tight clusters; negative α spreads them out.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import parallel
from jaxmia.data import augment
from jaxmia.metrics import pairwise_squared_distances

STAT_NAMES = ("intra_mean", "inter_mean", "intra_nearest", "inter_nearest")


class DistanceStats(NamedTuple):
  """Per-sample distances `[N]` (NaN where undefined, e.g. the intra-class values of a one-sample class)."""
  intra_mean: np.ndarray     # mean distance to the other samples of the same class
  inter_mean: np.ndarray     # mean distance to the samples of the other classes
  intra_nearest: np.ndarray  # distance to the nearest other sample of the same class
  inter_nearest: np.ndarray  # distance to the nearest sample of another class
  max_distance: float        # largest distance between any two samples

  def scaled(self) -> "DistanceStats":
    """All distances divided by `max_distance` (values in [0, 1], comparable across models)."""
    scale = self.max_distance if self.max_distance > 0 else 1.0
    return DistanceStats(*(getattr(self, name) / scale for name in STAT_NAMES), max_distance=1.0)


@functools.partial(jax.jit, static_argnames=("block_size",))
def _block_stats(features, labels, block_size: int):
  num = features.shape[0]
  features = features - jnp.mean(features, axis=0)  # centring reduces float32 cancellation in |a|^2+|b|^2-2ab
  counts = jnp.zeros(num, jnp.int32).at[labels].add(1)[labels]  # size of each sample's class
  padding = -num % block_size
  rows = jnp.arange(num + padding).reshape(-1, block_size)

  def one_block(block):
    valid = block < num
    block = jnp.minimum(block, num - 1)
    dist = jnp.sqrt(pairwise_squared_distances(features[block], features))  # [b, N]
    same = labels[block][:, None] == labels[None, :]
    not_self = block[:, None] != jnp.arange(num)[None, :]
    intra = same & not_self
    sums = jnp.stack([jnp.sum(jnp.where(intra, dist, 0.0), 1), jnp.sum(jnp.where(same, 0.0, dist), 1)])
    nearest = jnp.stack([jnp.min(jnp.where(intra, dist, jnp.inf), 1), jnp.min(jnp.where(same, jnp.inf, dist), 1)])
    farthest = jnp.max(jnp.where(valid[:, None], dist, 0.0))
    return sums, nearest, farthest

  sums, nearest, farthest = jax.lax.map(one_block, rows)
  sums = jnp.moveaxis(sums, 0, 1).reshape(2, -1)[:, :num]
  nearest = jnp.moveaxis(nearest, 0, 1).reshape(2, -1)[:, :num]
  intra_mean = sums[0] / (counts - 1)          # 0/0 = NaN for one-sample classes
  inter_mean = sums[1] / (num - counts)
  nearest = jnp.where(jnp.isinf(nearest), jnp.nan, nearest)
  return intra_mean, inter_mean, nearest[0], nearest[1], jnp.max(farthest)


def class_distance_stats(features, labels, *, block_size: int = 256) -> DistanceStats:
  """Intra-/inter-class mean and nearest-neighbour L2 distances of every sample.

  `features` `[N, D]`, `labels` int `[N]` (values in [0, N)). Exact distances, computed for `block_size` samples
  at a time against all N (memory `block_size x N`, so any training set fits).
  """
  features = jnp.asarray(features, jnp.float32)
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(f"expected features [N, D] and labels [N], got {features.shape} and {labels.shape}.")
  if labels.min() < 0:
    raise ValueError("labels must be non-negative class indices.")
  _, labels = np.unique(labels, return_inverse=True)  # dense 0..K-1
  values = jax.device_get(_block_stats(features, jnp.asarray(labels, jnp.int32), min(block_size, len(labels))))
  return DistanceStats(*(np.asarray(v, np.float64) for v in values[:4]), max_distance=float(values[4]))


def penultimate_features(module, variables, images, *, image_size: int, batch_size: int = 128, mesh=None):
  """Pooled penultimate features `[N, D]` (float32, host) of uint8 images `[N, H, W, 3]`, in eval mode.

  Images get the evaluation transform (antialiased resize to `image_size`, scaling to [-1, 1]); batches run
  jitted, the last one padded so that one compilation serves all.
  """
  @jax.jit
  def features(v, x):
    x = augment.eval_transform(x, size=image_size)
    return module.apply(v, x, train=False, return_features=True)[1].astype(jnp.float32)

  return parallel.map_arrays(lambda x: features(variables, x), (images,), batch_size, mesh=mesh)


def select_classes(labels, max_classes: int | None, seed: int = 0) -> np.ndarray:
  """Row indices of the samples of at most `max_classes` classes (a seeded random choice, sorted)."""
  classes = np.unique(labels)
  if max_classes is not None and len(classes) > max_classes:
    classes = np.sort(np.random.default_rng(seed).choice(classes, max_classes, replace=False))
  return np.flatnonzero(np.isin(labels, classes))


def tsne_embedding(features, *, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50) -> np.ndarray:
  """2-D t-SNE `[N, 2]` of `features` `[N, D]` (scikit-learn; PCA to `pca_dims` first when D is larger)."""
  from sklearn.decomposition import PCA  # noqa: PLC0415 (scikit-learn is slow to import; only t-SNE needs it)
  from sklearn.manifold import TSNE  # noqa: PLC0415
  features = np.asarray(features, np.float32)
  if features.shape[1] > pca_dims and features.shape[0] > pca_dims:
    features = PCA(pca_dims, random_state=seed).fit_transform(features)
  perplexity = min(perplexity, (features.shape[0] - 1) / 3)
  return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
