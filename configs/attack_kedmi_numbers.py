"""KED-MI on the embedded 100-class numbers target (no download), with its inversion-specific GAN.

    python -m jaxmia.train --config=configs/numbers.py --workdir=runs/numbers
    python -m jaxmia.gan_kedmi --config=configs/gan_kedmi_numbers.py --workdir=runs/gan_kedmi_numbers \
        --config.target=runs/numbers/model
    python -m jaxmia.attack --config=configs/attack_kedmi_numbers.py --workdir=runs/kedmi_numbers
    python -m jaxmia.evaluate --config=configs/evaluate_digits.py --run_dir=runs/kedmi_numbers  # + numbers fields

The attack learns one Gaussian over the GAN's latent z per class (`jaxmia.attack.kedmi`) with the official
`dist_inversion` settings of `recovery.py` (2,400 Adam steps at lr 0.02, one sample per class and step, identity
weight 100 on the target's cross-entropy, mu = 0 and log_var = 1 at the start, 5 final samples per class). The
GAN (generator and discriminator) must be the one trained against this target (configs/gan_kedmi_numbers.py).
The networks are 32x32 (the numbers' side; configs/gan_kedmi_numbers.py says why), so the target's view is the
whole image at 32. `:smoke` is a seconds-long pipeline check (6 classes in two batches, a few steps).
"""
import ml_collections


def get_config(arg=None) -> ml_collections.ConfigDict:
  """`arg`: None for the numbers attack, 'smoke' for a few-second pipeline check."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown KED-MI config variant {arg!r}; use no variant or ':smoke'.")
  config = ml_collections.ConfigDict()
  config.kind = "kedmi"           # the attack (jaxmia.attack.run.KINDS)
  config.seed = 42                # seeds every class's sampling noise and its final samples
  config.generator = "runs/gan_kedmi_numbers/generator"          # jaxmia.gan_kedmi's export (kind dcgan_generator)
  config.discriminator = "runs/gan_kedmi_numbers/discriminator"  # its discriminator (kind kedmi_discriminator)
  config.target = "runs/numbers/model"  # the attacked classifier (configs/numbers.py's export, 100 classes, 32x32)
  config.targets = "all"          # "all", "N" (the first N classes) or a list of classes, e.g. "[0, 7, 42]"
  # A workdir holding an attack with other settings (run.json): False stops with the differing fields; True
  # deletes that attack's outputs (its evaluation included) and starts fresh. Same settings: resumed either way.
  config.overwrite = False

  config.attack = ml_collections.ConfigDict()
  # How a generated image becomes the target's input (also read by jaxmia.evaluate): clamp -> crop -> resize.
  config.attack.center_crop = 32       # the whole 32x32 image (no crop, as the official low-resolution attack)
  config.attack.resize = 32            # the target's input side
  config.attack.clamp = True           # the generator's images are in [-1, 1] already; harmless
  config.attack.dtype = "float32"      # compute dtype of the three networks: 'float32' or 'bfloat16'
  # XLA:CPU compilation of the attack's core: 'default' XLA's own choices (faster for this gradient attack at the
  # official 64x64 shapes on an Intel Xeon, docs/speed.md), 'step' as the training and PPA steps compile
  config.attack.xla_cpu_options = "default"
  config.attack.batch_size = 20        # classes optimised together (one resume unit; divisible by the devices)
  config.attack.steps_per_call = 100   # steps per jitted call (progress with ETA after each)
  # The optimisation (jaxmia.attack.kedmi.KedmiSettings); official values.
  config.attack.iterations = 2400      # Adam steps per class
  config.attack.learning_rate = 0.02
  config.attack.b1 = 0.9               # PyTorch's Adam defaults
  config.attack.b2 = 0.999
  config.attack.eps = 1e-8
  config.attack.identity_weight = 100.0  # lambda: total = prior + lambda * identity
  config.attack.identity_loss = "ce"   # 'ce' (official) or 'max_margin'
  config.attack.samples_per_step = 1   # latents drawn per class and step
  config.attack.init_mu = 0.0          # start of every mu coordinate
  config.attack.init_log_var = 1.0     # start of every log_var coordinate
  config.attack.num_samples = 5        # final samples per class (the run's latents; official: one per seed, 5)

  config.output = ml_collections.ConfigDict()
  config.output.images_per_class = 0   # images in each class's grid (0: no grids; 100 classes)
  config.output.image_size = 32        # pixel size of each grid image

  if arg == "smoke":
    config.targets = "6"
    config.attack.batch_size = 4
    config.attack.iterations = 6
    config.attack.steps_per_call = 4
    config.attack.num_samples = 2
    config.output.images_per_class = 2
  return config
