"""BiDO-HSIC (Peng et al., KDD 2022): bilateral dependency optimisation with the HSIC.

The defense adds to the classification loss, for every hidden representation `z_j` (here the four ResNet
stage outputs, sown by the model as `('intermediates', 'stage_outputs')`)::

    lambda_x * sum_j HSIC(x, z_j)  -  lambda_y * sum_j HSIC(y, z_j)

so the representations keep little information about the input image `x` beyond what predicts the label `y`
(one-hot). HSIC is the biased empirical estimator of Gretton et al. (2005) with Gaussian kernels,
`tr(K H L H) / (m - 1)^2` with `H = I - 11^T / m`.

Kernel width: `k(a, b) = exp(-|a - b|^2 / (2 sigma^2 d))` for `d`-dimensional rows, i.e. `sigma` is a width per
dimension, so one `sigma` fits the image, the one-hot labels and every stage (BiDO's convention, sigma = 5).
All kernel arithmetic is done in float32 whatever the model's compute dtype. Wide kernels put every entry
near 1, and centring then cancels almost all of it; the estimator therefore works on `K - 1` (computed with
`expm1`, exact to float32 precision), which centring maps to the same matrix as `K`.
"""
from typing import Sequence

import jax
import jax.numpy as jnp


def _scaled_sq_dists(x: jax.Array, sigma: float) -> jax.Array:
  """`|x_i - x_j|^2 / (2 sigma^2 d)` for the rows of `x` flattened to `[m, d]`."""
  x = x.reshape(x.shape[0], -1).astype(jnp.float32)
  sq_norms = jnp.sum(x * x, axis=1)
  gram = jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
  sq_dists = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram, 0.0)
  sq_dists = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, sq_dists)  # exact zeros, not rounding residue
  return sq_dists / (2.0 * sigma**2 * x.shape[1])


def gaussian_kernel(x: jax.Array, sigma: float) -> jax.Array:
  """Gram matrix `[m, m]` of the rows of `x` (`[m, ...]`, flattened to `[m, d]`) under the Gaussian kernel."""
  return jnp.exp(-_scaled_sq_dists(x, sigma))


def _kernel_minus_one(x: jax.Array, sigma: float) -> jax.Array:
  """`gaussian_kernel(x, sigma) - 1`, accurate also where the kernel is close to 1."""
  return jnp.expm1(-_scaled_sq_dists(x, sigma))


def hsic_from_kernels(k: jax.Array, l: jax.Array) -> jax.Array:  # noqa: E741 (the K and L of the formula)
  """Biased HSIC estimate `tr(K H L H) / (m - 1)^2` from two symmetric Gram matrices `[m, m]`.

  Adding a constant to every entry of `K` or `L` does not change the result.
  """
  m = k.shape[0]
  k_centred = k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()
  return jnp.sum(k_centred * l) / (m - 1) ** 2


def hsic(x: jax.Array, y: jax.Array, sigma: float = 5.0) -> jax.Array:
  """HSIC between paired samples `x [m, ...]` and `y [m, ...]` with Gaussian kernels of width `sigma`."""
  return hsic_from_kernels(_kernel_minus_one(x, sigma), _kernel_minus_one(y, sigma))


def bido_penalty(images: jax.Array, labels: jax.Array, num_classes: int, hidden: Sequence[jax.Array], *,
                 lambda_x: float, lambda_y: float, sigma: float = 5.0) -> tuple[jax.Array, dict]:
  """The BiDO-HSIC term added to the mean classification loss.

  Args:
    images: the model inputs `[m, H, W, C]` (after augmentation).
    labels: int class labels `[m]`, one-hot encoded here.
    num_classes: size of the one-hot encoding.
    hidden: hidden representations `z_j`, each `[m, ...]`.
    lambda_x, lambda_y: weights of the input and label dependencies.
    sigma: Gaussian kernel width per dimension.

  Returns `(penalty, {'hsic_x': sum_j HSIC(x, z_j), 'hsic_y': sum_j HSIC(y, z_j)})`, all scalars.
  """
  if not hidden:
    raise ValueError("BiDO needs hidden representations, but the model sowed none; use a ResNet (it sows "
                     "('intermediates', 'stage_outputs')) or set config.defense.name='none'.")
  k_x = _kernel_minus_one(images, sigma)
  k_y = _kernel_minus_one(jax.nn.one_hot(labels, num_classes), sigma)
  hsic_x = hsic_y = jnp.zeros((), jnp.float32)
  for z in hidden:
    k_z = _kernel_minus_one(z, sigma)
    hsic_x += hsic_from_kernels(k_z, k_x)
    hsic_y += hsic_from_kernels(k_z, k_y)
  return lambda_x * hsic_x - lambda_y * hsic_y, {"hsic_x": hsic_x, "hsic_y": hsic_y}
