"""jaxmia.models.dcgan: GMI's generator and WGAN-GP critic (shapes, the transposed conv against its definition,
per-image independence of the critic)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.attack import render
from jaxmia.models import dcgan


def _conv_transpose_reference(x, weight, bias, stride, padding, output_padding):
  """PyTorch's ConvTranspose2d by its definition: every input pixel scatters `x[b, i, j, :] @ weight[:, :, h, w]`
  to output (stride * i + h - padding, stride * j + w - padding). `weight` `[in, out, k, k]`, x `[B, H, W, in]`."""
  batch, height, width, _ = x.shape
  _, out_channels, k, _ = weight.shape
  side_h = (height - 1) * stride - 2 * padding + k + output_padding
  side_w = (width - 1) * stride - 2 * padding + k + output_padding
  full = np.zeros((batch, side_h + 2 * padding + k, side_w + 2 * padding + k, out_channels))
  for i in range(height):
    for j in range(width):
      for h in range(k):
        for w in range(k):
          full[:, stride * i + h, stride * j + w] += x[:, i, j] @ weight[:, :, h, w]
  return full[:, padding:padding + side_h, padding:padding + side_w] + bias


def test_conv_transpose_matches_definition():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  module = dcgan.ConvTranspose(6)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  kernel = np.asarray(variables["params"]["kernel"])            # [k, k, in, out]
  bias = np.asarray(variables["params"]["bias"])
  assert kernel.shape == (5, 5, 5, 6)
  assert np.abs(kernel).max() <= 1 / np.sqrt(6 * 25)            # PyTorch's bound from the output channels
  expected = _conv_transpose_reference(x, kernel.transpose(2, 3, 0, 1), bias, 2, 2, 1)
  got = np.asarray(jax.jit(module.apply)(variables, x))
  assert got.shape == (2, 6, 8, 6)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image_size", [32, 64])
def test_shapes_and_ranges(image_size):
  generator = dcgan.Generator(dim=8, image_size=image_size)
  critic = dcgan.Discriminator(dim=8, image_size=image_size)
  z = jax.random.normal(jax.random.key(1), (3, dcgan.LATENT_DIM))
  g_vars = jax.jit(generator.init)(jax.random.key(2), z)
  images = jax.jit(generator.apply)(g_vars, z)
  assert images.shape == (3, image_size, image_size, 3)
  assert float(images.min()) >= -1 and float(images.max()) <= 1
  d_vars = jax.jit(critic.init)(jax.random.key(3), images)
  assert jax.jit(critic.apply)(d_vars, images).shape == (3,)
  # Official layer widths: Linear 100 -> 8 dim * (size / 16)^2, critic's last kernel size / 16.
  assert g_vars["params"]["l1_0"]["kernel"].shape == (100, 64 * (image_size // 16) ** 2)
  assert d_vars["params"]["ls_5"]["kernel"].shape == (image_size // 16,) * 2 + (64, 1)
  # Train mode uses batch statistics and updates the running ones.
  _, updates = jax.jit(lambda v, z: generator.apply(v, z, train=True, mutable=["batch_stats"]))(g_vars, z)
  assert not np.allclose(updates["batch_stats"]["l1_1"]["mean"], 0)


def test_official_defaults_at_64():
  generator, critic = dcgan.Generator(), dcgan.Discriminator()
  z = jnp.zeros((1, 100))
  shapes = jax.tree.map(jnp.shape, jax.eval_shape(generator.init, jax.random.key(0), z))
  assert shapes["params"]["l1_0"]["kernel"] == (100, 512 * 4 * 4)
  assert shapes["params"]["l2_5_0_0"]["kernel"] == (5, 5, 512, 256)
  assert shapes["params"]["l2_5_3"]["kernel"] == (5, 5, 64, 3)
  d_shapes = jax.tree.map(jnp.shape, jax.eval_shape(critic.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert d_shapes["params"]["ls_4_0"]["kernel"] == (5, 5, 256, 512)
  assert d_shapes["params"]["ls_5"]["kernel"] == (4, 4, 512, 1)


def test_critic_scores_are_per_image():
  critic = dcgan.Discriminator(dim=4, image_size=32)
  images = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1, maxval=1)
  variables = jax.jit(critic.init)(jax.random.key(1), images)
  apply = jax.jit(critic.apply)
  together = apply(variables, images)
  alone = jnp.concatenate([apply(variables, images[i:i + 1]) for i in range(4)])
  np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_bad_image_size():
  with pytest.raises(ValueError, match="multiple of 16"):
    dcgan.Generator(image_size=40).init(jax.random.key(0), jnp.zeros((1, 100)))
  with pytest.raises(ValueError, match="at least 32"):
    dcgan.Discriminator(image_size=16).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_start_size_4_is_the_official_32x32_pattern():
  """start_size=4: KED-MI's `GeneratorMNIST` layout (Linear to 4 dim x 4 x 4, two BN deconvs, the last deconv) at
  32; at 64 it is the default network (same parameters, same images); a side that is not 4 doubled raises."""
  g = dcgan.Generator(dim=8, image_size=32, start_size=4)
  variables = g.init(jax.random.key(0), jnp.zeros((2, 100)))
  shapes = {k: {n: a.shape for n, a in v.items()} for k, v in variables["params"].items()}
  assert shapes == {"l1_0": {"kernel": (100, 32 * 16)}, "l1_1": {"scale": (512,), "bias": (512,)},
                    "l2_5_0_0": {"kernel": (5, 5, 32, 16)}, "l2_5_0_1": {"scale": (16,), "bias": (16,)},
                    "l2_5_1_0": {"kernel": (5, 5, 16, 8)}, "l2_5_1_1": {"scale": (8,), "bias": (8,)},
                    "l2_5_2": {"kernel": (5, 5, 8, 3), "bias": (3,)}}
  assert g.apply(variables, jnp.ones((2, 100))).shape == (2, 32, 32, 3)
  z = jax.random.normal(jax.random.key(1), (2, 100))
  default, explicit = dcgan.Generator(dim=4), dcgan.Generator(dim=4, start_size=4)
  v = default.init(jax.random.key(2), z)
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, explicit.init(jax.random.key(2), z))
  np.testing.assert_array_equal(default.apply(v, z), explicit.apply(v, z))
  with pytest.raises(ValueError, match="start_size=3"):
    dcgan.Generator(image_size=32, start_size=3).init(jax.random.key(0), z)


def test_stylegan2_rendering_interface():
  """Attack runs store z as [N, 1, latent_dim]; render.synthesize draws them as the generator does z."""
  generator = dcgan.Generator(latent_dim=6, dim=4, image_size=32)
  z = jax.random.normal(jax.random.key(0), (2, 6))
  variables = jax.jit(generator.init)(jax.random.key(1), z)
  assert (generator.img_resolution, generator.num_ws, generator.z_dim, generator.c_dim) == (32, 1, 6, 0)
  synthesize = jax.jit(lambda v, w: render.synthesize(generator, v, w))
  np.testing.assert_allclose(synthesize(variables, z[:, None]), jax.jit(generator.apply)(variables, z),
                             rtol=1e-6, atol=1e-7)
