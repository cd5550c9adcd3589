"""`python -m jaxmia.generate`: a converted generator folder -> deterministic PNG grid."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import run_program
from jaxmia import generate, model_store
from jaxmia.models import stylegan2 as sg2

KWARGS = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 2},
              synthesis_kwargs={"channel_base": 64, "channel_max": 8})


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  generator = sg2.Generator(**KWARGS)
  variables = generator.init(jax.random.key(0), jnp.zeros((1, 8)), None, noise_mode="const")
  folder = tmp_path_factory.mktemp("weights") / "tiny"
  model_store.save_model(folder, variables, kind="stylegan2_generator", module_kwargs=KWARGS)
  return folder, generator, variables


def test_image_grid_layout_and_quantisation():
  images = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 0.0, 1.0, 7.0, -3.0)])
  grid = generate.image_grid(images, columns=2)
  assert grid.shape == (3 * 2, 2 * 3, 1) and grid.dtype == np.uint8
  cells = grid.reshape(3, 2, 2, 3, 1)[:, 0, :, 0, 0]  # top-left pixel of every cell, [rows, columns]
  np.testing.assert_array_equal(cells, [[0, 128], [255, 255], [0, 0]])  # clamped; empty cell stays black


def test_writes_deterministic_grid_and_cli_flags(weights, tmp_path):
  folder, generator, variables = weights
  settings = dict(num=5, truncation_psi=0.7, seed=3, batch_size=2)
  generate.write_grid(folder, tmp_path / "a.png", **settings)
  generate.write_grid(folder, tmp_path / "b.png", **settings)
  a = np.asarray(Image.open(tmp_path / "a.png"))
  assert a.shape == (2 * 8, 3 * 8, 3)
  np.testing.assert_array_equal(a, np.asarray(Image.open(tmp_path / "b.png")))
  # The grid holds exactly the generator's images for z drawn from the seed (batching does not matter).
  images = generate.generate_images(generator, variables, jax.random.key(3), 5, truncation_psi=0.7, batch_size=5)
  assert np.abs(a.astype(np.int32) - generate.image_grid(images)).max() <= 1  # rounding at a quantisation step
  generate.write_grid(folder, tmp_path / "c.png", **{**settings, "seed": 4})
  assert np.abs(np.asarray(Image.open(tmp_path / "c.png"), np.int32) - a).mean() > 1
  # The command line passes the same settings (on its own single device: same images).
  code, stderr = run_program("jaxmia.generate", f"--weights={folder}", "--num=5", "--truncation_psi=0.7", "--seed=3",
                             "--batch_size=2", f"--out={tmp_path / 'cli.png'}")
  assert code == 0, stderr[-2000:]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cli.png")), a)


@pytest.mark.parametrize("weights_path, flags, message", [
    ("missing", [], "{path}: no such weights folder. Convert PyTorch weights with"),
    ("file.pth", [], "{path} is a file, not a jaxmia weights folder."),
    ("discriminator", [], "{path} holds a 'stylegan2_discriminator', not a StyleGAN2 generator; convert one with"),
    ("missing", ["--num=0"], "bad command line: flag --num=0: 0 is not"),
])
def test_cli_bad_inputs_are_one_error_line_with_exit_code_2(weights_path, flags, message, tmp_path):
  (tmp_path / "file.pth").write_bytes(b"PK\x03\x04 not weights")
  model_store.save_model(tmp_path / "discriminator", {"params": {"w": np.zeros(2, np.float32)}},
                         kind="stylegan2_discriminator", module_kwargs={})
  path = tmp_path / weights_path
  code, stderr = run_program("jaxmia.generate", f"--weights={path}", f"--out={tmp_path / 'x.png'}", *flags)
  last = stderr.splitlines()[-1]
  assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
  assert last.startswith("error: " + message.format(path=path)), last
  assert last.endswith("(--verbose or JAXMIA_TRACEBACK=1 shows the traceback)")
  assert not (tmp_path / "x.png").exists()


def test_cli_rejects_wrong_inputs():
  conditional = sg2.Generator(**{**KWARGS, "c_dim": 4})
  variables = conditional.init(jax.random.key(0), jnp.zeros((1, 8)), jnp.zeros((1, 4)), noise_mode="const")
  with pytest.raises(ValueError, match="conditional"):
    generate.generate_images(conditional, variables, jax.random.key(0), 2)
  images = generate.generate_images(conditional, variables, jax.random.key(0), 3, class_idx=1, batch_size=2)
  assert images.shape == (3, 8, 8, 3) and np.isfinite(images).all()
