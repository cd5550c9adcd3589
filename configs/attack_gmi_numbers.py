"""GMI (generative model inversion, Zhang et al. 2020) on the embedded 100-class numbers target (no download).

    python -m jaxmia.train --config=configs/numbers.py --workdir=runs/numbers
    python -m jaxmia.gan_gmi --config=configs/gan_gmi_numbers.py --workdir=runs/gan_gmi_numbers
    python -m jaxmia.attack --config=configs/attack_gmi_numbers.py --workdir=runs/gmi_numbers
    python -m jaxmia.evaluate --config=configs/evaluate_digits.py --run_dir=runs/gmi_numbers  # + numbers fields

The prior is GMI's WGAN-GP GAN trained on the public numbers (`jaxmia.gan_gmi`, 32x32: GMI's networks at the
numbers' side). The optimisation (`jaxmia.attack.gmi`) has the official defaults of `Celeba/attack.py`: 5 random
restarts per class, 1,500 momentum-SGD iterations (lr 0.02, momentum 0.9, z clipped to [-1, 1]), loss =
-D(G(z)) + 100 * CE(T(G(z)), class) averaged as over the official batch of 100 identities; per class the
restart the target scores highest is kept.
`:smoke` is a seconds-long pipeline check (3 classes, 2 restarts, 6 iterations).
"""
import ml_collections


def get_config(arg=None) -> ml_collections.ConfigDict:
  """`arg`: None for the numbers attack, 'smoke' for a few-second pipeline check."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown GMI config variant {arg!r}; use no variant or ':smoke'.")
  config = ml_collections.ConfigDict()
  config.kind = "gmi"             # the attack (jaxmia.attack.run.KINDS)
  config.seed = 42                # seeds every latent's starting point
  config.generator = "runs/gan_gmi_numbers/generator"      # GMI generator (jaxmia.gan_gmi's export)
  config.discriminator = "runs/gan_gmi_numbers/discriminator"  # its WGAN-GP critic (the prior loss)
  config.target = "runs/numbers/model"  # what configs/numbers.py exports (slim ResNet-18, 100 classes, 32x32)
  config.targets = "all"          # "all", "N" (the first N classes) or a list of classes, e.g. "[0, 7, 42]"
  # A workdir holding an attack with other settings (run.json): False stops with the differing fields; True
  # deletes that attack's outputs (its evaluation included) and starts fresh. Same settings: resumed either way.
  config.overwrite = False

  config.attack = ml_collections.ConfigDict()
  # How G's image becomes the target's input (also read by jaxmia.evaluate): clamp -> centre crop -> resize.
  config.attack.center_crop = 32       # the generator's whole 32x32 image
  config.attack.resize = 32            # the target's input size
  config.attack.clamp = True           # clamp to [-1, 1] (G's sigmoid output is inside already)
  config.attack.dtype = "float32"      # compute dtype of G, D and the target: 'float32' or 'bfloat16'
  # XLA:CPU compilation of the attack's core: 'default' XLA's own choices (faster for this gradient attack at the
  # official 64x64 shapes on an Intel Xeon, docs/speed.md), 'step' as the training and PPA steps compile
  config.attack.xla_cpu_options = "default"
  config.attack.batch_size = 100       # latents optimised together (one resume unit; divisible by the devices)
  config.attack.steps_per_call = 100   # iterations per jitted call (progress at most every 30 s)
  config.attack.restarts = 5           # random starting latents per class (official: 5 seeds)
  config.attack.samples_per_target = 1  # kept per class: the restarts with the largest target logit (official 1)
  # The optimisation (jaxmia.attack.gmi.GmiSettings), official values.
  config.attack.iterations = 1500      # momentum-SGD iterations per latent
  config.attack.learning_rate = 0.02
  config.attack.momentum = 0.9
  config.attack.identity_weight = 100.0  # lamda: weight of the target's cross-entropy
  config.attack.prior_weight = 1.0     # weight of the prior loss -D(G(z))
  config.attack.clip = 1.0             # every coordinate of z clipped to [-clip, clip] after each step
  config.attack.loss_batch = 100       # the official batch of identities its mean losses divide by

  config.output = ml_collections.ConfigDict()
  config.output.images_per_class = 0   # images in each class's grid (0: no grids; 100 classes)
  config.output.image_size = 32        # pixel size of each grid image

  if arg == "smoke":
    config.targets = "3"
    config.attack.batch_size = 4
    config.attack.restarts = 2
    config.attack.iterations = 6
    config.attack.steps_per_call = 4
    config.output.images_per_class = 1
  return config
