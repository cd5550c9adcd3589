"""GMI's WGAN-GP prior on the embedded numbers (public split = the attacker's data), 32x32.

    python -m jaxmia.gan_gmi --config=configs/gan_gmi_numbers.py --workdir=runs/gan_gmi_numbers
    python -m jaxmia.attack --config=configs/attack_gmi_numbers.py --workdir=runs/gmi_numbers

Everything is the official `Celeba/train_gan.py` / `celeba.json` (batch 64, Adam lr 2e-4 betas (0.5, 0.999) for
both networks, a generator step every 5th iteration, gradient-penalty weight 10) except the scale, shrunk with
the images and the CPU budget the same way as KED-MI's numbers GAN (configs/gan_kedmi_numbers.py):
* side: the numbers are stored and the numbers target reads them at 32x32, so the networks are GMI's at 32
  (`jaxmia.models.dcgan`: the same layers from a 2x2 instead of a 4x4 start, the critic's last kernel 2x2
  instead of 4x4) rather than 64x64 networks trained on upsampled images and downsampled again;
* width: `dim` 32 instead of 64 (half the channels at half the side; a quarter of the official FLOPs per
  image again);
* length: 50 epochs of the 10,000 public composites (7,800 iterations, 1,560 generator steps): 0.5M images
  seen, 1/17 of the official 280 epochs of ~30k public CelebA images, the fraction KED-MI's numbers GAN keeps.
`:smoke` is a seconds-long pipeline check (narrow networks, a few iterations).
"""
import ml_collections

from jaxmia import data


def get_config(arg=None) -> ml_collections.ConfigDict:
  """`arg`: None for the numbers GAN, 'smoke' for a few-second check."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown GMI GAN config variant {arg!r}; use no variant or ':smoke'.")
  config = ml_collections.ConfigDict()
  config.seed = 0                 # networks' initialisation, latents, interpolation points and the data order
  config.dataset = data.get_dataset_config("numbers_embedded")  # 100 classes, 100 public images each
  config.split = "public"         # the attacker's data (disjoint digit images from the target's)
  config.image_size = 32          # side of the generated images (a multiple of 16; official 64)

  config.generator = ml_collections.ConfigDict()
  config.generator.latent_dim = 100  # official z dimension
  config.generator.dim = 32          # official 64 (8 * dim channels at the start)
  config.discriminator = ml_collections.ConfigDict()
  config.discriminator.dim = 32      # channels of the critic's first conv (official 64)

  config.batch_size = 64          # official (global; divisible by the device count)
  config.num_epochs = 50.0        # one epoch is len(public) // batch_size iterations (official: 280 on CelebA)
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 2e-4      # official, both networks
  config.optimizer.betas = (0.5, 0.999)  # official
  config.optimizer.eps = 1e-8     # PyTorch's Adam default
  config.n_critic = 5             # a generator step every n_critic iterations (official 5)
  config.gp_weight = 10.0         # weight of the gradient penalty (official 10)
  config.compute_dtype = "float32"  # 'float32' or 'bfloat16' (convolutions; losses stay float32)

  config.num_samples = 64         # images in each sample grid (fixed latents)
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 500
  config.log_every_steps = 100
  config.progress_every_secs = 60.0
  config.max_steps = 0            # stop after this many iterations in this call (0: run to the end)
  config.overwrite = False        # True: delete another run's outputs in the workdir and start fresh

  if arg == "smoke":
    config.generator.dim = 4
    config.discriminator.dim = 4
    config.batch_size = 8
    config.num_epochs = 6 * 8 / 10000  # 6 iterations of the 10,000 public images
    config.n_critic = 2
    config.num_samples = 8
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.log_every_steps = 2
  return config
