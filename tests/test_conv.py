"""`jaxmia.models.conv.conv_general_dilated`: the values and both gradients of `lax.conv_general_dilated`."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxmia import models
from jaxmia.models import xla_cpu
from jaxmia.models.conv import conv_general_dilated, conv_transpose2x

CASES = {
    "same": dict(window_strides=(1, 1), padding="SAME"),
    "stride2": dict(window_strides=(2, 2), padding=((1, 1), (1, 1))),
    "asymmetric_pad": dict(window_strides=(1, 1), padding=((1, 2), (0, 1))),
    "groups": dict(window_strides=(1, 1), padding="SAME", feature_group_count=4),
    "rhs_dilation": dict(window_strides=(1, 1), padding="VALID", rhs_dilation=(2, 2)),
    "lhs_dilation": dict(window_strides=(1, 1), padding=((1, 1), (2, 1)), lhs_dilation=(2, 2)),
}


def assert_value_and_gradients_match_lax(x, w, options, atol, conv=conv_general_dilated):
  """`conv(x, w)` and the gradients of `sum(sin(conv(x, w)))` w.r.t. x and w equal those of
  `lax.conv_general_dilated`.

  The outputs are compared elementwise against their scale, not through the sum: a sum of ~100 sines that nearly
  cancel turns float32 rounding of a different summation order (it differs between CPU kinds) into a relative
  error of the sum far above the elements' own."""
  out, want_out = conv(x, w, **options), lax.conv_general_dilated(x, w, **options)
  assert out.shape == want_out.shape
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5 * float(np.abs(want_out).max()))

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, **options)))

  want = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
  got = jax.grad(loss(conv), (0, 1))(x, w)
  for g, h in zip(got, want):
    assert g.shape == h.shape
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("layout", [("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")])
@pytest.mark.parametrize("case", sorted(CASES))
def test_value_and_gradients_match_lax(case, layout):
  options = dict(CASES[case], dimension_numbers=layout)
  groups = options.get("feature_group_count", 1)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 9, 8) if layout[0] == "NHWC" else (2, 8, 9, 9)).astype(np.float32)
  w = rng.standard_normal((3, 2, 8 // groups, 12) if layout[1] == "HWIO" else (12, 8 // groups, 3, 2))
  assert_value_and_gradients_match_lax(x, w.astype(np.float32), options, atol=1e-4)


@pytest.mark.parametrize("stride,padding", [(1, "VALID"), (2, "SAME"), (3, ((0, 0), (0, 0))), (2, "VALID")])
def test_pointwise_conv_is_a_matmul_with_lax_values_and_gradients(stride, padding):
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 9, 8, 6)).astype(np.float32)
  w = rng.standard_normal((1, 1, 6, 5)).astype(np.float32)
  options = dict(window_strides=(stride, stride), padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  jaxpr = str(jax.make_jaxpr(lambda x, w: conv_general_dilated(x, w, **options))(x, w))
  assert "dot_general" in jaxpr and "conv_general_dilated" not in jaxpr
  assert_value_and_gradients_match_lax(x, w, options, atol=1e-5)


PATCHES_CASES = {  # (input side, kernel, options); the first five have maps smaller than the kernel
    "critic_5x5_stride2": (4, 5, dict(window_strides=(2, 2), padding=((2, 2), (2, 2)))),
    "transposed_5x5": (2, 5, dict(window_strides=(1, 1), padding=((2, 3), (2, 3)), lhs_dilation=(2, 2))),
    "same_string": (3, 5, dict(window_strides=(1, 1), padding="SAME")),
    "same_string_dilated": (3, 3, dict(window_strides=(2, 2), padding="SAME", rhs_dilation=(1, 3))),
    "asymmetric_negative": (2, 4, dict(window_strides=(1, 2), padding=((3, -1), (1, 2)))),
    "output_smaller": (8, 5, dict(window_strides=(2, 2), padding=((2, 2), (2, 2)))),
    "large_map_valid": (9, 3, dict(window_strides=(1, 1), padding="VALID")),
}


@pytest.mark.parametrize("case", sorted(PATCHES_CASES))
def test_as_patches_is_a_matrix_product_with_lax_values_and_gradients(case):
  size, kernel, options = PATCHES_CASES[case]
  options = dict(options, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  rng = np.random.default_rng(4)
  x = rng.standard_normal((3, size, size + 1, 5)).astype(np.float32)
  w = rng.standard_normal((kernel, kernel, 5, 7)).astype(np.float32)
  patches = functools.partial(conv_general_dilated, as_patches=True)
  jaxpr = str(jax.make_jaxpr(lambda x, w: patches(x, w, **options))(x, w))
  assert "dot_general" in jaxpr and "conv_general_dilated" not in jaxpr
  assert_value_and_gradients_match_lax(x, w, options, atol=1e-4, conv=patches)
  # Its second derivative (WGAN-GP's penalty differentiates an input gradient) is lax's too.
  grad_norm = lambda conv: lambda x, w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.sin(conv(x, w, **options))))(x) ** 2)
  np.testing.assert_allclose(jax.grad(grad_norm(patches), 1)(x, w),
                             jax.grad(grad_norm(lax.conv_general_dilated), 1)(x, w), rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("size,padding", [(3, 2), (2, 2), (3, 1)])
def test_conv_transpose2x_is_pytorch_conv_transpose(size, padding):
  """`conv_transpose2x` cropped as `ConvTranspose2d(stride 2, padding, output_padding 1)` equals the dilated
  convolution with the flipped kernel (PyTorch's definition), with and without patches."""
  rng = np.random.default_rng(5)
  x = rng.standard_normal((2, size, size, 4)).astype(np.float32)
  w = rng.standard_normal((5, 5, 4, 6)).astype(np.float32)
  low = 5 - 1 - padding
  want = lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), ((low, low + 1),) * 2, lhs_dilation=(2, 2),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  for as_patches in (False, True):
    full = conv_transpose2x(x, w, as_patches=as_patches)
    got = full[:, padding:padding + want.shape[1], padding:padding + want.shape[2]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_flax_conv_in_a_loop_matches_lax():
  """As Flax calls it (ConvDimensionNumbers, padding lists), inside `fori_loop` where the speed-up matters."""
  kwargs = dict(features=6, kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  ours, ref = nn.Conv(**kwargs, conv_general_dilated=conv_general_dilated), nn.Conv(**kwargs)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 8, 8, 4)), jnp.float32)
  params = ref.init(jax.random.key(0), x)

  def descend(model):
    step = jax.grad(lambda x: jnp.sum(model.apply(params, x) ** 2))
    return jax.jit(lambda x: lax.fori_loop(0, 3, lambda i, x: x - 0.01 * step(x), x))(x)

  np.testing.assert_allclose(descend(ours), descend(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("setting", ["1", "0"])
def test_xla_cpu_switch_turns_the_formulations_on_and_off(monkeypatch, setting):
  """`JAXMIA_XLA_CPU_FORMULATIONS` decides between jaxmia's formulations and plain lax; values agree."""
  module = models.create_classifier("resnet50", num_classes=3)
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  variables = module.init(jax.random.key(0), x)
  loss = lambda v: jnp.sum(module.apply(v, x) ** 2)
  monkeypatch.setenv(xla_cpu.ENV_VAR, setting)
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables))
  value = jax.jit(lambda v, x: module.apply(v, x))(variables, x)
  # ResNet-50 has 53 convolutions, 36 of them 1x1, and an fc head; each layer appears in the forward pass and
  # in both gradients (but for the stem's input gradient, which the parameter gradient does not need).
  on = setting == "1"
  assert ("optimization_barrier" in jaxpr) == on  # `materialize`, and the swapped kernels of 3x3 gradients
  assert jaxpr.count("dot_general[") == ((36 + 1) * 3 if on else 3)
  if not on:
    assert jaxpr.count("conv_general_dilated[") == 53 * 3 - 1
  monkeypatch.setenv(xla_cpu.ENV_VAR, "0" if on else "1")
  np.testing.assert_allclose(jax.jit(lambda v, x: module.apply(v, x))(variables, x), value, rtol=1e-4, atol=1e-5)


def test_xla_cpu_switch_rejects_other_values(monkeypatch):
  monkeypatch.setenv(xla_cpu.ENV_VAR, "yes")
  with pytest.raises(ValueError, match="must be 1"):
    xla_cpu.enabled()


def test_a_config_chooses_between_the_step_options_and_xla_defaults(monkeypatch):
  monkeypatch.setattr(xla_cpu, "step_compiler_options", lambda: {"an": "option"})
  assert xla_cpu.compiler_options("step") == {"an": "option"}
  assert xla_cpu.compiler_options("default") is None
  with pytest.raises(ValueError, match="xla_cpu_options must be one of"):
    xla_cpu.compiler_options("fast")


@pytest.mark.parametrize("backend,expected", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_xla_cpu_switch_default_follows_the_backend(monkeypatch, backend, expected):
  monkeypatch.delenv(xla_cpu.ENV_VAR, raising=False)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert xla_cpu.enabled() == expected


def _library_fused_ops(options) -> set[str]:
  """The ops XLA:CPU hands to a library fusion (YNNPACK's `ynn_fusion`) in a conv + matmul program."""
  def f(x, w, m):
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(-1, 64) @ m
  args = (jnp.ones((8, 32, 32, 64)), jnp.ones((3, 3, 64, 64)), jnp.ones((64, 64)))  # large enough for YNNPACK
  text = jax.jit(f, compiler_options=options).lower(*args).compile().as_text()
  called = {line.split("calls=")[1].split(",")[0].strip() for line in text.splitlines()
            if "ynn_fusion" in line.split("=")[0] and "calls=" in line}
  blocks, name = {}, None  # computation name -> its body
  for line in text.splitlines():
    if line.endswith("{") and "->" in line:
      name = line.split()[1] if line.startswith("ENTRY") else line.split()[0]
    elif name is not None:
      blocks[name] = blocks.get(name, "") + line
  return {op for c in called for op in ("convolution", "dot") if f" {op}(" in blocks.get(c, "")}


def test_training_step_options_keep_convolutions_off_the_library(monkeypatch):
  """The switch's training-step options (on XLA:CPU) leave matrix products to YNNPACK and convolutions to XLA;
  off, there are none. A canary for the option's meaning in the installed jaxlib."""
  monkeypatch.setenv(xla_cpu.ENV_VAR, "1")
  options = xla_cpu.step_compiler_options()
  assert options == {xla_cpu.YNN_FUSION_OPTION: xla_cpu.YNN_DOTS_ONLY}
  assert _library_fused_ops(options) == {"dot"}
  assert "convolution" in _library_fused_ops(None)  # XLA's default: convolutions to YNNPACK as well
  monkeypatch.setenv(xla_cpu.ENV_VAR, "0")
  assert xla_cpu.step_compiler_options() is None


def test_unknown_compiler_options_compile_without_them():
  assert not xla_cpu._supported(((xla_cpu.YNN_FUSION_OPTION, "NOT_A_FUSION_TYPE"),))
