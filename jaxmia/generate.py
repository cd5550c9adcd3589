"""Sample a converted StyleGAN2 generator into a PNG grid.

    python -m jaxmia.generate --weights=converted_weights/ffhq --num=16 --truncation_psi=0.7 --seed=0 \\
        --out=grid.png

`z` is drawn from `jax.random.key(seed)`; the same seed, count and weights always give the same grid.
Images are clamped to [-1, 1] for display only (the generator itself never clamps). A bad input (no weights
folder, another kind of weights, an unwritable --out) is one `error:` line and exit code 2.
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from jaxmia import cli, parallel
from jaxmia.files import image_grid, save_png  # the grid helpers of this CLI (jaxmia.gan imports them here)


def generate_images(generator, variables, key, num: int, *, truncation_psi: float = 1.0,
                    truncation_cutoff: int | None = None, class_idx: int | None = None,
                    noise_mode: str = "const", batch_size: int = 8) -> np.ndarray:
  """`num` images `[num, R, R, C]` float32 (not clamped) from latents `z ~ N(0, I)` drawn with `key`.

  All batches have `batch_size` rows (the last one padded), so the generator compiles once. For noise mode
  'random' the noise key is split from `key` per batch. Conditional generators need `class_idx`.
  """
  if generator.c_dim and class_idx is None:
    raise ValueError(f"This generator is conditional ({generator.c_dim} classes): pass a class index.")
  if class_idx is not None and not 0 <= class_idx < max(generator.c_dim, 1):
    raise ValueError(f"class index {class_idx} is out of range for a generator with c_dim {generator.c_dim}.")
  z_key, noise_key = jax.random.split(key)
  z = jax.random.normal(z_key, (num, generator.z_dim))
  c = jax.nn.one_hot(jnp.full((batch_size,), class_idx), generator.c_dim) if generator.c_dim else None

  @jax.jit
  def run(z_batch, batch_index):
    batch_key = jax.random.fold_in(noise_key, batch_index[0])  # every row of a batch holds the batch's index
    ws = generator.apply(variables, z_batch, c, truncation_psi, truncation_cutoff, method="mapping")
    return generator.apply(variables, ws, noise_mode=noise_mode, method="synthesis", rngs={"noise": batch_key})

  return parallel.map_arrays(run, (z, np.arange(num, dtype=np.int32) // batch_size), batch_size)


def write_grid(weights, out, *, num: int = 16, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
               class_idx: int | None = None, noise_mode: str = "const", seed: int = 0, batch_size: int = 8,
               columns: int | None = None) -> None:
  """Writes the grid of `num` images of the generator in the weights folder `weights` to the PNG file `out`
  (`generate_images` with `jax.random.key(seed)`; `columns`: default about sqrt(num))."""
  from jaxmia import model_store  # noqa: PLC0415 (orbax loads only for the CLI; jaxmia.gan imports this module)
  info = model_store.read_info(weights)
  if info["kind"] != "stylegan2_generator":
    raise ValueError(f"{weights} holds a {info['kind']!r}, not a StyleGAN2 generator; convert one with "
                     "`python -m jaxmia.convert stylegan2 --input=FILE.pkl --output=DIR`.")
  generator, variables = model_store.load_model(weights)
  images = generate_images(generator, variables, jax.random.key(seed), num, truncation_psi=truncation_psi,
                           truncation_cutoff=truncation_cutoff, class_idx=class_idx, noise_mode=noise_mode,
                           batch_size=min(batch_size, num))
  save_png(image_grid(images, columns), out)
  print(f"Wrote {num} images ({generator.img_resolution}x{generator.img_resolution}) to {out}")


def _define_flags():
  flags.DEFINE_string("weights", None, "Weights folder of a converted StyleGAN2 generator.")
  flags.DEFINE_integer("num", 16, "Number of images.", lower_bound=1)
  flags.DEFINE_float("truncation_psi", 1.0, "Truncation psi (1: none).")
  flags.DEFINE_integer("truncation_cutoff", None, "Truncate only the first N ws (default: all).")
  flags.DEFINE_integer("class_idx", None, "Class of a conditional generator.")
  flags.DEFINE_enum("noise_mode", "const", ("const", "random", "none"), "Noise inputs of the synthesis network.")
  flags.DEFINE_integer("seed", 0, "Seed of the latents (and of random noise).")
  flags.DEFINE_integer("batch_size", 8, "Images per jitted call.", lower_bound=1)
  flags.DEFINE_integer("columns", None, "Grid columns (default: about sqrt(num)).", lower_bound=1)
  flags.DEFINE_string("out", None, "Output PNG file.")
  flags.mark_flags_as_required(["weights", "out"])


def main(argv):
  cli.start(argv)
  FLAGS = flags.FLAGS
  write_grid(FLAGS.weights, FLAGS.out, num=FLAGS.num, truncation_psi=FLAGS.truncation_psi,
             truncation_cutoff=FLAGS.truncation_cutoff, class_idx=FLAGS.class_idx, noise_mode=FLAGS.noise_mode,
             seed=FLAGS.seed, batch_size=FLAGS.batch_size, columns=FLAGS.columns)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
