"""Fréchet distance between Gaussians fitted to feature sets (FID when the features are Inception pool3).

Statistics and the matrix square root are computed on the host in float64 NumPy: FID subtracts traces of
2048 x 2048 matrices of similar size, which float32 cannot do reliably. `tr sqrt(S1 S2)` is taken from the
eigenvalues of the symmetric PSD matrix `sqrt(S1) S2 sqrt(S1)` (same spectrum as `S1 S2`), with round-off
negatives clipped to 0. Unlike `scipy.linalg.sqrtm` of the non-symmetric `S1 S2`, this never produces
complex values or needs an epsilon retry, also for singular covariances (fewer samples than dimensions).
"""
import numpy as np


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean `[D]` and unbiased covariance `[D, D]` (float64) of features `[N, D]`, N >= 2."""
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"feature_statistics needs features [N, D] with N >= 2, got shape {features.shape}.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  eigenvalues, eigenvectors = np.linalg.eigh(matrix)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """`|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)` for Gaussians N(mu1, S1), N(mu2, S2)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
    raise ValueError(f"mismatched statistics: means {mu1.shape} and {mu2.shape}, covariances "
                     f"{sigma1.shape} and {sigma2.shape}; both sets must use the same feature network.")
  root1 = _psd_sqrt(sigma1)
  product = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
  trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid_from_features(real_features, fake_features) -> float:
  """FID between two feature sets `[N, D]` and `[M, D]` (e.g. pytorch-fid Inception pool3, D = 2048)."""
  return frechet_distance(*feature_statistics(real_features), *feature_statistics(fake_features))
