"""KED-MI's inversion-specific GAN on the embedded numbers (public split = the attacker's data), 32x32.

    python -m jaxmia.train --config=configs/numbers.py --workdir=runs/numbers
    python -m jaxmia.gan_kedmi --config=configs/gan_kedmi_numbers.py --workdir=runs/gan_kedmi_numbers \
        --config.target=runs/numbers/model

The GAN is trained against one target (its discriminator learns the target's soft labels of the public images),
so each attacked target gets its own GAN. Everything is the official `k+1_gan.py` / `config/celeba.json`
(batch 64, Adam lr 2e-4 betas (0.5, 0.999), a generator step every 5th iteration, entropy weight 1e-4) except
the scale, shrunk with the images and the CPU budget (one GAN per attacked target) as GMI's numbers prior:
* side: the embedded numbers are stored and the numbers target reads them at 32x32, so the networks are 32x32
  ones rather than 64x64 networks trained on upsampled images and downsampled again. They follow the official
  code's own 32x32 pattern (its `GeneratorMNIST` and GMI's `DGWGAN32`): the generator starts from 4x4 with
  4 * dim channels and doubles three times, the discriminator halves three times (two 5x5 convolutions and the
  3x3) to 4 * dim x 4 x 4 features. (The four-doubling networks from a 2x2 start, as GMI's numbers prior has
  them, collapsed here: D's real/fake loss fell to 0.01 within 1,000 iterations and the generator's samples
  were a few repeated "1010"-like images and flat grey ones at 2,000, on the α = 0.1 target of seed 0; GMI's
  WGAN-GP prior trains well with them. Judged on the samples only: no attack ran on that GAN.);
* width: `dim` 32 instead of 64 for both networks;
* length: 20 epochs of the 10,000 public composites (3,120 iterations): 0.2M images seen, 1/18 of the official
  120 epochs of ~30k public CelebA images (GMI's numbers prior keeps 1/17 of its official length).
Real 64x64 CelebA at the official scale: configs/gan_kedmi_celeba64.py.
`:smoke` is a seconds-long pipeline check (narrow networks, a few iterations).
"""
import ml_collections

from jaxmia import data


def get_config(arg=None) -> ml_collections.ConfigDict:
  """`arg`: None for the numbers GAN, 'smoke' for a few-second check."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown KED-MI GAN config variant {arg!r}; use no variant or ':smoke'.")
  config = ml_collections.ConfigDict()
  config.seed = 0                 # networks' initialisation, latents, and the three data orders (seed, +1, +2)
  config.dataset = data.get_dataset_config("numbers_embedded")  # 100 classes, 100 public images each
  config.split = "public"         # the attacker's data (disjoint digit images from the target's)
  config.target = "runs/numbers/model"  # the attacked classifier (weights folder); its soft labels teach D
  config.target_resize = 32       # the target's input side (public images are resized to it for the target)
  config.image_size = 32          # side of the generated images (a multiple of 16; official 64)

  config.generator = ml_collections.ConfigDict()
  config.generator.latent_dim = 100  # official z dimension
  config.generator.dim = 32          # official 64
  config.generator.start_size = 4    # first map 4x4 (official 32x32 pattern; 0: image_size / 16)
  config.discriminator = ml_collections.ConfigDict()
  config.discriminator.dim = 32      # channels of the first conv (official 64)
  config.discriminator.end_size = 4  # last map 4x4 (three layers at 32; 0: image_size / 16, the official four)
  config.discriminator.minibatch_kernels = 64     # official
  config.discriminator.minibatch_kernel_dim = 50  # official

  config.batch_size = 64          # official (global; divisible by the device count)
  config.num_epochs = 20.0        # one epoch is len(public) // batch_size iterations (official 120)
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 2e-4      # official, both networks
  config.optimizer.betas = (0.5, 0.999)  # official
  config.optimizer.eps = 1e-8     # PyTorch's Adam default
  config.n_critic = 5             # a generator step every n_critic iterations (official 5)
  config.entropy_weight = 1e-4    # weight of the summed entropy of D's predictions on fakes (official)
  config.compute_dtype = "float32"  # 'float32' or 'bfloat16' (convolutions; losses stay float32)

  config.num_samples = 64         # images in each sample grid (fixed latents)
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 500
  config.log_every_steps = 100
  config.progress_every_secs = 60.0
  config.max_steps = 0            # stop after this many iterations in this call (0: run to the end)
  config.overwrite = False        # True: delete another run's outputs in the workdir and start fresh

  if arg == "smoke":
    config.dataset.samples_per_class = None
    config.generator.dim = 4
    config.discriminator.dim = 4
    config.discriminator.minibatch_kernels = 8
    config.discriminator.minibatch_kernel_dim = 5
    config.batch_size = 8
    config.num_epochs = 6 * 8 / 10000  # 6 iterations of the 10,000 public images
    config.n_critic = 2
    config.num_samples = 8
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.log_every_steps = 2
  return config
