"""BiDO-HSIC (Peng et al., KDD 2022): bilateral dependency optimisation with the normalized HSIC.

The defense adds to the classification loss, for every hidden representation `z_j` (here the four ResNet
stage outputs, sown by the model as `('intermediates', 'stage_outputs')`, and the pooled features that feed the
head)::

    lambda_x * sum_j nHSIC(x, z_j)  -  lambda_y * sum_j nHSIC(y, z_j)

so the representations keep little information about the input image `x` beyond what predicts the label `y`.

**The dependency measure** is the official code's `hsic_normalized_cca` (BiDO/hsic.py in the authors' Defend_MI
repository; its λx = 0.05, λy = 0.5 were tuned for it), the normalized cross-covariance of Fukumizu et al.::

    nHSIC(a, b) = tr(R_a R_b),   R = K~ (K~ + eps m I)^-1,   K~ = H K H,   H = I - 11^T / m,   eps = 1e-5

for `m` paired samples. `R` shrinks every eigenvalue `l` of the centred Gram matrix to `l / (l + eps m)`, so
`R` is close to the projector onto the kernel's dominant eigenvectors and `nHSIC` counts the directions the
two kernels share: it lies in `[0, m - 1]`, equals `(m - 1) / (1 + eps m)^2` for a Gram matrix equal to `I`
with itself, and is of order one and more where the plain biased HSIC `tr(KHLH) / (m-1)^2` of the same kernels
is ~1e-5 (the plain form made the official weights a no-op). The official code centres on the right only
(`K H`); the trace is the same (both products are block-triangular with the same diagonal block in a basis
that starts with `1 / sqrt(m)`), and centring on both sides keeps `R` symmetric.

**Kernels**, as in the official code: Gaussian for the images and the hidden representations,
`k(a, b) = exp(-|a - b|^2 / (2 sigma^2 d))` for `d`-dimensional rows (a width per dimension, so one
`sigma = 5` fits the image and every layer); linear for the one-hot labels (`Y Y^T`: 1 for a pair of the same
class, else 0; the official training scripts' `ktype='linear'`). Every representation is flattened per example.

All kernel arithmetic is float32 whatever the model's compute dtype. `R` is computed with a Cholesky solve of
the symmetric positive definite `K~ + eps m I` (never an eigendecomposition, whose gradient is undefined for
the repeated eigenvalues of the label kernel).
"""
from typing import Sequence

import jax
import jax.numpy as jnp

# The official regulariser of the normalized HSIC (times the batch size m).
EPSILON = 1e-5

_HIGHEST = jax.lax.Precision.HIGHEST


def _rows(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def gaussian_kernel(x: jax.Array, sigma: float) -> jax.Array:
  """Gram matrix `[m, m]` of the rows of `x` (`[m, ...]`, flattened to `[m, d]`): `exp(-|a-b|^2 / (2 sigma^2 d))`."""
  x = _rows(x)
  sq_norms = jnp.sum(x * x, axis=1)
  sq_dists = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * jnp.dot(x, x.T, precision=_HIGHEST), 0.0)
  sq_dists = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, sq_dists)  # exact zeros, not rounding residue
  return jnp.exp(-sq_dists / (2.0 * sigma**2 * x.shape[1]))


def linear_kernel(x: jax.Array) -> jax.Array:
  """Gram matrix `[m, m]` of inner products of the rows of `x` (`[m, ...]`, flattened)."""
  x = _rows(x)
  return jnp.dot(x, x.T, precision=_HIGHEST)


def _shrunk_projector(k: jax.Array, epsilon: float) -> jax.Array:
  """`R = K~ (K~ + epsilon m I)^-1` for the doubly centred `K~` of the symmetric Gram matrix `k [m, m]`."""
  m = k.shape[0]
  centred = k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()
  centred = 0.5 * (centred + centred.T)  # exactly symmetric, for the Cholesky factorisation
  # K~ and (K~ + cI)^-1 commute, so R = (K~ + cI)^-1 K~: one positive definite solve.
  factor = jax.scipy.linalg.cho_factor(centred + epsilon * m * jnp.eye(m, dtype=k.dtype))
  return jax.scipy.linalg.cho_solve(factor, centred)


def normalized_hsic_from_kernels(k: jax.Array, l: jax.Array, epsilon: float = EPSILON) -> jax.Array:  # noqa: E741
  """Normalized HSIC `tr(R_k R_l)` of two symmetric positive semi-definite Gram matrices `[m, m]` (a scalar).

  Symmetric in `k` and `l`; adding a constant to every entry of either changes nothing (centring removes it).
  """
  return jnp.sum(_shrunk_projector(k, epsilon) * _shrunk_projector(l, epsilon).T)


def normalized_hsic(x: jax.Array, y: jax.Array, sigma: float = 5.0, epsilon: float = EPSILON) -> jax.Array:
  """Normalized HSIC between paired samples `x [m, ...]` and `y [m, ...]`, Gaussian kernels of width `sigma`."""
  return normalized_hsic_from_kernels(gaussian_kernel(x, sigma), gaussian_kernel(y, sigma), epsilon)


def bido_penalty(images: jax.Array, labels: jax.Array, num_classes: int, hidden: Sequence[jax.Array], *,
                 lambda_x: float, lambda_y: float, sigma: float = 5.0,
                 epsilon: float = EPSILON) -> tuple[jax.Array, dict]:
  """The BiDO-HSIC term added to the mean classification loss.

  Args:
    images: the model inputs `[m, H, W, C]` (after augmentation).
    labels: int class labels `[m]`, one-hot encoded here (linear kernel).
    num_classes: size of the one-hot encoding.
    hidden: hidden representations `z_j`, each `[m, ...]` (Gaussian kernel).
    lambda_x, lambda_y: weights of the input and label dependencies.
    sigma: Gaussian kernel width per dimension.
    epsilon: regulariser of the normalized HSIC (times m).

  Returns `(penalty, {'hsic_x': sum_j nHSIC(x, z_j), 'hsic_y': sum_j nHSIC(y, z_j)})`, all scalars.
  """
  if not hidden:
    raise ValueError("BiDO needs hidden representations, but the model sowed none; use a ResNet (it sows "
                     "('intermediates', 'stage_outputs')) or set config.defense.name='none'.")
  r_x = _shrunk_projector(gaussian_kernel(images, sigma), epsilon)
  r_y = _shrunk_projector(linear_kernel(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)), epsilon)
  hsic_x = hsic_y = jnp.zeros((), jnp.float32)
  for z in hidden:
    r_z = _shrunk_projector(gaussian_kernel(z, sigma), epsilon)
    hsic_x += jnp.sum(r_z * r_x.T)
    hsic_y += jnp.sum(r_z * r_y.T)
  return lambda_x * hsic_x - lambda_y * hsic_y, {"hsic_x": hsic_x, "hsic_y": hsic_y}
