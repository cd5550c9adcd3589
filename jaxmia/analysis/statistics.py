"""Confidence intervals for paired comparisons of attack results (pure numpy).

A study measures one value per (seed, class) for each α, e.g. the Acc@1 of a class's attack samples; its
question is the difference to the baseline α. The differences are paired (same seed, same class, same data
order), and two sources of variation matter: which targets were trained (seeds) and which classes were
attacked. `hierarchical_bootstrap` resamples both: seeds with replacement, then classes with replacement,
and takes the mean difference of each resample, so an effect carried by one lucky seed or a few classes gets a
wide interval. With few seeds the seed level is coarse (3 seeds give 10 distinct resamples), which widens the
interval rather than narrowing it. A value measured once per target and not per class (a membership attack's
AUC) gets `seed_interval`, Student's t interval over the seeds.
"""
import numpy as np
import scipy.stats


def hierarchical_bootstrap(differences: np.ndarray, num_resamples: int = 10000, seed: int = 0,
                           confidence: float = 0.95) -> dict:
  """Mean of `differences` `[S, C]` (seeds x classes) with a percentile bootstrap interval.

  Returns `{'mean', 'low', 'high', 'num_seeds', 'num_classes'}`. NaN entries (a class missing in a run) are
  left out of each resample's mean.
  """
  d = np.asarray(differences, np.float64)
  if d.ndim != 2 or not d.size:
    raise ValueError(f"differences must be a non-empty [seeds, classes] array, got shape {d.shape}.")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  num_seeds, num_classes = d.shape
  rng = np.random.default_rng(seed)
  seed_weights = _resample_weights(rng, num_resamples, num_seeds)     # [R, S]
  class_weights = _resample_weights(rng, num_resamples, num_classes)  # [R, C]
  valid = np.isfinite(d)
  values = np.where(valid, d, 0.0)
  # Weighted mean over the resampled (seed, class) pairs: sum_s sum_c ws[s] wc[c] d[s, c] / same with 1.
  totals = np.einsum("rs,sc,rc->r", seed_weights, values, class_weights)
  counts = np.einsum("rs,sc,rc->r", seed_weights, valid.astype(np.float64), class_weights)
  means = totals / np.maximum(counts, 1e-12)
  tail = (1.0 - confidence) / 2.0
  low, high = np.quantile(means[counts > 0], [tail, 1.0 - tail])
  return {"mean": float(np.nanmean(d)), "low": float(low), "high": float(high), "num_seeds": num_seeds,
          "num_classes": num_classes}


def seed_interval(values, confidence: float = 0.95) -> dict:
  """Mean of one value per seed, `values` `[S]`, with Student's t interval `mean ± t * sd / sqrt(S)`.

  For a study's per-target summaries that have no per-class pairing (a membership attack's AUC, TPR at a fixed
  FPR): the interval covers the variation between trained targets, not the sampling of the evaluated examples.
  Returns `{'mean', 'sd', 'low', 'high', 'n'}`; non-finite values are left out; `sd`, `low` and `high` are None
  with fewer than two values (and everything but `n` with none).
  """
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  v = np.asarray([x for x in values if x is not None], np.float64).ravel()
  v = v[np.isfinite(v)]
  out = {"mean": float(v.mean()) if len(v) else None, "sd": None, "low": None, "high": None, "n": int(len(v))}
  if len(v) > 1:
    sd = float(np.std(v, ddof=1))
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, len(v) - 1)) * sd / np.sqrt(len(v))
    out.update(sd=sd, low=out["mean"] - half, high=out["mean"] + half)
  return out


def _resample_weights(rng: np.random.Generator, num_resamples: int, n: int) -> np.ndarray:
  """`[R, n]` multiplicities of each item in `R` resamples of `n` items with replacement."""
  draws = rng.integers(n, size=(num_resamples, n))
  weights = np.zeros((num_resamples, n))
  np.add.at(weights, (np.arange(num_resamples)[:, None], draws), 1.0)
  return weights
