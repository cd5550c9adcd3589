"""StyleGAN2 generator/discriminator parity with NVlabs stylegan2-ada-pytorch (golden PyTorch outputs).

Weights come from the fixtures' recipes, converted with `convert.stylegan2_from_torch` /
`discriminator_from_torch`. Tolerances follow the fixtures README: 1e-5 for mapping ws, rtol 1e-4 with atol
1e-4 * max|ref| for images, 1e-5 for discriminator logits (tight enough to catch a wrong mbstd grouping).
"""
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture, nchw_to_nhwc, recipe

from jaxmia.convert import stylegan2 as convert_sg2
from jaxmia.convert.common import ConversionError
from jaxmia.models import stylegan2 as sg2
from jaxmia.models import stylegan2_ops as ops

GENERATOR_FIXTURES = ["stylegan2_tiny32_skip", "stylegan2_tiny32_resnet", "stylegan2_tiny32_orig",
                      "stylegan2_ffhq256"]
# Configurations beyond the shared fixtures, written by scripts/make_stylegan2_goldens.py.
GOLDENS = sorted((pathlib.Path(__file__).parent / "golden").glob("stylegan2_golden_*.npz"))


def assert_image_close(actual, ref, rtol=1e-4):
  ref = np.asarray(ref, np.float32)
  np.testing.assert_allclose(np.asarray(actual), ref, rtol=rtol, atol=rtol * np.abs(ref).max())


@functools.lru_cache(maxsize=None)
def converted_generator(name):
  """(manifest, arrays, generator, variables, mapping, synthesis), jitted functions shared by all tests."""
  manifest, _, state, arrays = load_fixture(name)
  generator, variables = convert_sg2.stylegan2_from_torch((state, manifest["kwargs"]))
  mapping = jax.jit(functools.partial(generator.apply, method="mapping"), static_argnames="truncation_cutoff")
  synthesis = jax.jit(functools.partial(generator.apply, method="synthesis"), static_argnames="noise_mode")
  return manifest, arrays, generator, variables, mapping, synthesis


@pytest.mark.parametrize("name", GENERATOR_FIXTURES)
def test_generator_matches_nvlabs(name):
  manifest, arrays, generator, variables, mapping, synthesis = converted_generator(name)
  spec = manifest["spec"]
  z = arrays["input/z"]
  ws = mapping(variables, z, None, truncation_psi=spec["truncation_psi"],
               truncation_cutoff=spec["truncation_cutoff"])
  np.testing.assert_allclose(ws, arrays["output/ws"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mapping(variables, z, None), arrays["output/ws_psi1"], rtol=1e-5, atol=1e-5)

  # img (z -> mapping -> synthesis) and img_ws_const share one call: both use noise_mode='const'.
  b = z.shape[0]
  const = synthesis(variables, jnp.concatenate([ws, arrays["input/ws_in"]]), noise_mode="const")
  assert const.shape == (2 * b, generator.img_resolution, generator.img_resolution, 3)
  assert_image_close(const[:b], nchw_to_nhwc(arrays["output/img"]))
  assert_image_close(const[b:], nchw_to_nhwc(arrays["output/img_ws_const"]))
  none = synthesis(variables, arrays["input/ws_in"], noise_mode="none")
  assert_image_close(none, nchw_to_nhwc(arrays["output/img_ws_none"]))


def test_ffhq1024_full_key_set_matches_nvlabs():
  manifest, arrays, generator, variables, _, _ = converted_generator("stylegan2_ffhq1024_shapes")
  assert generator.num_ws == 18
  spec = manifest["spec"]
  img = jax.jit(functools.partial(generator.apply, noise_mode="const"), static_argnames="truncation_cutoff")(
      variables, arrays["input/z"], None, truncation_psi=spec["truncation_psi"],
      truncation_cutoff=spec["truncation_cutoff"])
  ws = generator.apply(variables, arrays["input/z"], None, spec["truncation_psi"], spec["truncation_cutoff"],
                       method="mapping")
  np.testing.assert_allclose(ws, arrays["output/ws"], rtol=1e-5, atol=1e-5)
  ref = nchw_to_nhwc(arrays["output/img"]).astype(np.float32)  # stored as float16
  np.testing.assert_allclose(img, ref, rtol=1e-4, atol=np.abs(ref).max() * (2.0 ** -10 + 1e-4))


@pytest.mark.parametrize("name", ["stylegan2_disc_tiny32", "stylegan2_disc_tiny32_cond",
                                  "stylegan2_disc_ffhq256"])
def test_discriminator_matches_nvlabs(name):
  manifest, _, state, arrays = load_fixture(name)
  discriminator, variables = convert_sg2.discriminator_from_torch((state, manifest["kwargs"]))
  img = nchw_to_nhwc(arrays["input/img"])
  c = arrays.get("input/c")
  run = jax.jit(lambda d, v, img, c: d.apply(v, img, c, mutable="intermediates"), static_argnums=0)
  logits, state = run(discriminator, variables, img, c)
  np.testing.assert_allclose(state["intermediates"]["epilogue_in"][0], nchw_to_nhwc(arrays["output/epilogue_in"]),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits, arrays["output/logits"], rtol=1e-5, atol=1e-5)
  if "output/logits_mbstd2" in arrays:
    # Groups of 2 are strided ({0, 2}, {1, 3}); contiguous groups would miss this tolerance.
    grouped = discriminator.clone(epilogue_kwargs={**discriminator.epilogue_kwargs, "mbstd_group_size": 2})
    logits2, _ = run(grouped, variables, img, c)
    np.testing.assert_allclose(logits2, arrays["output/logits_mbstd2"], rtol=1e-5, atol=1e-5)
    assert np.abs(arrays["output/logits_mbstd2"] - arrays["output/logits"]).max() > 1e-4


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_more_configurations_match_nvlabs(path):
  """Conditional G and D, 1 and 4 image channels, resolutions 4..64, custom filter/activation, skip/orig D."""
  manifest, _, state, arrays = recipe.load_fixture(str(path))
  spec = manifest["spec"]
  c = arrays.get("input/c")
  if spec["kind"] == "D":
    discriminator, variables = convert_sg2.discriminator_from_torch((state, manifest["kwargs"]))
    logits = jax.jit(discriminator.apply)(variables, nchw_to_nhwc(arrays["input/img"]), c)
    np.testing.assert_allclose(logits, arrays["output/logits"], rtol=1e-5, atol=1e-5)
    return
  generator, variables = convert_sg2.stylegan2_from_torch((state, manifest["kwargs"]))

  @jax.jit
  def run(variables, z, c, ws_in):
    ws = generator.apply(variables, z, c, spec["psi"], spec["cutoff"], method="mapping")
    img = generator.apply(variables, ws, noise_mode="const", method="synthesis")
    return ws, img, generator.apply(variables, ws_in, noise_mode="none", method="synthesis")

  ws, img, img_none = run(variables, arrays["input/z"], c, arrays["input/ws_in"])
  np.testing.assert_allclose(ws, arrays["output/ws"], rtol=1e-5, atol=1e-5)
  assert_image_close(img, nchw_to_nhwc(arrays["output/img"]))
  if "output/img_ws_none" in arrays:
    assert_image_close(img_none, nchw_to_nhwc(arrays["output/img_ws_none"]))


@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1]])
@pytest.mark.parametrize("settings", [dict(up=2, padding=(2, 1), gain=4.0), dict(down=2, padding=(1, 1)),
                                      dict(padding=(1, 1)), dict(up=2, down=2, padding=(3, -1))])
def test_fir_gradient_is_the_adjoint(taps, settings):
  """The custom VJP of the FIR passes: <A x, y> == <x, A^T y> (dot-product test of the transpose)."""
  fir = functools.partial(ops.upfirdn2d, taps=ops.fir_taps(taps), **settings)
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
  out, vjp = jax.vjp(fir, x)
  y = jax.random.normal(jax.random.key(1), out.shape)
  np.testing.assert_allclose(jnp.vdot(out, y), jnp.vdot(x, vjp(y)[0]), rtol=1e-5)


def test_noise_modes():
  _, arrays, _, variables, _, synthesis = converted_generator("stylegan2_tiny32_skip")
  ws = arrays["input/ws_in"]
  a = synthesis(variables, ws, noise_mode="random", rngs={"noise": jax.random.key(1)})
  b = synthesis(variables, ws, noise_mode="random", rngs={"noise": jax.random.key(1)})
  c = synthesis(variables, ws, noise_mode="random", rngs={"noise": jax.random.key(2)})
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).mean() > 1e-3
  # With zero noise strength every mode gives the noiseless image.
  silent = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if p[-1].key == "noise_strength" else x, variables)
  none = synthesis(silent, ws, noise_mode="none")
  assert_image_close(synthesis(silent, ws, noise_mode="const"), none, rtol=1e-5)
  assert_image_close(synthesis(silent, ws, noise_mode="random", rngs={"noise": jax.random.key(1)}), none, rtol=1e-5)
  assert_image_close(synthesis(variables, ws, noise_mode="none"), nchw_to_nhwc(arrays["output/img_ws_none"]))


def test_traced_truncation_matches_static():
  manifest, arrays, generator, variables, _, _ = converted_generator("stylegan2_tiny32_skip")
  cutoff = manifest["spec"]["truncation_cutoff"]
  traced = jax.jit(lambda v, z, psi: generator.apply(v, z, None, psi, cutoff, method="mapping"))
  np.testing.assert_allclose(traced(variables, arrays["input/z"], 0.7), arrays["output/ws"], rtol=1e-5, atol=1e-5)
  w_avg = variables["buffers"]["mapping"]["w_avg"]
  ws0 = traced(variables, arrays["input/z"], 0.0)
  np.testing.assert_allclose(ws0[:, :cutoff], np.broadcast_to(w_avg, ws0[:, :cutoff].shape), atol=1e-6)
  np.testing.assert_allclose(ws0[:, cutoff:], arrays["output/ws_psi1"][:, cutoff:], rtol=1e-5, atol=1e-5)


def test_bfloat16_synthesis_close_to_float32():
  manifest, _, state, arrays = load_fixture("stylegan2_tiny32_skip")
  generator, variables = convert_sg2.stylegan2_from_torch((state, manifest["kwargs"]), dtype=jnp.bfloat16)
  img = jax.jit(lambda v, ws: generator.apply(v, ws, noise_mode="const", method="synthesis"))(
      variables, arrays["input/ws_in"])
  assert img.dtype == jnp.float32
  ref = nchw_to_nhwc(arrays["output/img_ws_const"])
  rel = np.abs(np.asarray(img) - ref).max() / np.abs(ref).max()
  assert 1e-5 < rel < 5e-2, rel  # bf16 rounding is visible, but the image is the same


def test_num_ws_and_output_shapes_for_every_resolution():
  for res in (4, 8, 64, 1024):
    generator = sg2.Generator(z_dim=8, c_dim=3, w_dim=8, img_resolution=res, img_channels=1,
                              synthesis_kwargs={"channel_base": 64, "channel_max": 8})
    assert generator.num_ws == 2 * int(np.log2(res)) - 2
    if res <= 64:
      out = jax.eval_shape(lambda: generator.init_with_output(
          jax.random.key(0), jnp.zeros((5, 8)), jnp.zeros((5, 3)), noise_mode="const")[0])
      assert out.shape == (5, res, res, 1)


def test_converter_reports_bad_inputs():
  manifest, _, state, _ = load_fixture("stylegan2_tiny32_orig")
  kwargs = manifest["kwargs"]
  broken = dict(state)
  del broken["synthesis.b8.conv0.weight"]
  broken["synthesis.b8.extra"] = np.zeros(3, np.float32)
  with pytest.raises(ConversionError, match=r"(?s)synthesis\.b8\.conv0\.weight.*synthesis\.b8\.extra"):
    convert_sg2.stylegan2_from_torch((broken, kwargs))
  wrong_res = {**kwargs, "img_resolution": 64}
  with pytest.raises(ConversionError, match="missing keys"):
    convert_sg2.stylegan2_from_torch((state, wrong_res))
  wrong_filter = {**kwargs, "synthesis_kwargs": {**kwargs["synthesis_kwargs"], "resample_filter": [1, 2, 1]}}
  with pytest.raises(ConversionError, match="resample filters"):
    convert_sg2.stylegan2_from_torch((state, wrong_filter))
  with pytest.raises(ConversionError, match="init_kwargs"):
    convert_sg2.stylegan2_from_torch((state, {**kwargs, "bogus": 1}))
  with pytest.raises(ValueError, match="Unknown synthesis_kwargs"):
    convert_sg2.stylegan2_from_torch((state, {**kwargs, "synthesis_kwargs": {"channel_bse": 2048}}))
