"""Sample a converted StyleGAN2 generator into a PNG grid.

    python -m jaxmia.generate --weights converted_weights/ffhq --num 16 --truncation-psi 0.7 --seed 0 \\
        --out grid.png

`z` is drawn from `jax.random.key(seed)`; the same seed, count and weights always give the same grid.
Images are clamped to [-1, 1] for display only (the generator itself never clamps).
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

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


def write_grid(args) -> None:
  """The grid of the parsed command line `args` (see `main`), written to `args.out`."""
  from jaxmia import model_store  # noqa: PLC0415 (orbax loads only for the CLI; jaxmia.gan imports this module)
  info = model_store.read_info(args.weights)
  if info["kind"] != "stylegan2_generator":
    raise ValueError(f"{args.weights} holds a {info['kind']!r}, not a StyleGAN2 generator; convert one with "
                     "`python -m jaxmia.convert stylegan2 --input FILE.pkl --output DIR`.")
  generator, variables = model_store.load_model(args.weights)
  images = generate_images(generator, variables, jax.random.key(args.seed), args.num,
                           truncation_psi=args.truncation_psi, truncation_cutoff=args.truncation_cutoff,
                           class_idx=args.class_idx, noise_mode=args.noise_mode,
                           batch_size=min(args.batch_size, args.num))
  save_png(image_grid(images, args.columns), args.out)
  print(f"Wrote {args.num} images ({generator.img_resolution}x{generator.img_resolution}) to {args.out}")


def main(argv=None):
  """A bad input (no weights folder, another kind of weights, an unwritable --out) is one `error:` line and exit
  code 2 (`cli.exit_on_user_error`)."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--weights", required=True, help="weights folder of a converted StyleGAN2 generator")
  parser.add_argument("--num", type=int, default=16, help="number of images")
  parser.add_argument("--truncation-psi", type=float, default=1.0)
  parser.add_argument("--truncation-cutoff", type=int, default=None, help="truncate only the first N ws")
  parser.add_argument("--class-idx", type=int, default=None, help="class of a conditional generator")
  parser.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--columns", type=int, default=None, help="grid columns (default: about sqrt(num))")
  parser.add_argument("--out", required=True, help="output PNG file")
  parser.add_argument("--verbose", action="store_true",
                      help=f"on an error, show its Python traceback (or set {cli.TRACEBACK_ENV}=1)")
  args = parser.parse_args(argv)
  if args.num < 1 or args.batch_size < 1:
    parser.error("--num and --batch-size must be positive")
  cli.exit_on_user_error(lambda: write_grid(args), argv)


if __name__ == "__main__":
  main()
