"""Plug & Play Attack on a FaceScrub classifier with the FFHQ StyleGAN2 prior (the paper's settings).

    python -m jaxmia.attack --config=configs/attack_facescrub_ffhq.py --workdir=runs/attack_facescrub_ffhq

The target is what `python -m jaxmia.train --config=configs/faces.py --workdir=runs/faces` exports; the
generator is NVlabs' `ffhq.pkl` converted with `python -m jaxmia.convert stylegan2 --input=ffhq.pkl
--output=converted_weights/ffhq`. Settings of PPA's `configs/attacking/FaceScrub_FFHQ.yaml`: 2000 search
latents, 200 candidates and 50 kept samples per class, 50 Adam steps (lr 0.005, betas 0.1/0.1) on one w per
image, Poincaré loss, 100 random crops for the final selection. `:smoke` is a few-second pipeline check.
"""
import ml_collections
from ml_collections import config_dict


def get_config(arg=None) -> ml_collections.ConfigDict:
  """`arg`: None for the paper's settings, 'smoke' for a few-second pipeline check."""
  config = ml_collections.ConfigDict()
  config.seed = 42                # seeds the search space and every latent's augmentations
  config.generator = "converted_weights/ffhq"  # weights folder of the StyleGAN2 generator (FFHQ-1024)
  # weights folder of the generator's discriminator (`python -m jaxmia.convert stylegan2 --network=D`);
  # read only if attack.discriminator_loss_weight > 0.
  config.discriminator = "converted_weights/ffhq_discriminator"
  config.target = "runs/faces/model"  # weights folder of the target classifier (530 classes)
  config.targets = "all"          # "all", "N" (the first N classes) or a list of classes, e.g. "[0, 7, 42]"
  # A workdir holding an attack with other settings (run.json): False stops with the differing fields; True
  # deletes that attack's outputs (its evaluation included) and starts fresh. Same settings: resumed either way.
  config.overwrite = False

  # Shared by all stages: how a generated image becomes the target model's input.
  center_crop = config_dict.FieldReference(0)    # centre crop in generator pixels; 0 = round(R * 800 / 1024)
  resize = config_dict.FieldReference(224)       # target input size (antialiased bilinear resize after the crop)
  dtype = config_dict.FieldReference("float32")  # compute dtype of generator and target: 'float32' or 'bfloat16'
  # XLA:CPU compilation of the stages' jitted cores: 'step' as the training step (YNNPACK for matrix products only),
  # 'default' XLA's own choices (faster for stage 2 on an Intel Xeon, slower on AMD: docs/speed.md)
  xla_cpu_options = config_dict.FieldReference("step")

  config.candidates = ml_collections.ConfigDict()
  config.candidates.search_space_size = 2000    # random latents scored to find starting points
  config.candidates.num_candidates = 200        # starting latents (= optimised latents) per target class
  config.candidates.batch_size = 25             # global batch for scoring (divisible by the device count)
  config.candidates.truncation_psi = 0.5        # StyleGAN2 truncation of the sampled w
  config.candidates.truncation_cutoff = 8       # truncate only the first 8 of the num_ws style vectors
  config.candidates.clamp = True                # clamp generated images to [-1, 1] before scoring
  config.candidates.horizontal_flip = True      # score = mean softmax over the image and its mirror image
  config.candidates.center_crop = center_crop
  config.candidates.resize = resize
  config.candidates.dtype = dtype
  config.candidates.xla_cpu_options = xla_cpu_options

  config.attack = ml_collections.ConfigDict()
  config.attack.batch_size = 25                 # global batch of latents optimised together (one resume unit)
  config.attack.num_steps = 50                  # Adam steps per latent
  config.attack.single_w = True                 # optimise one w per image (broadcast to all layers); False = W+
  config.attack.identity_loss = "poincare"      # 'poincare', 'cross_entropy' or 'logit'
  config.attack.learning_rate = 0.005           # Adam learning rate
  config.attack.b1 = 0.1                        # Adam beta1
  config.attack.b2 = 0.1                        # Adam beta2
  config.attack.eps = 1e-8                      # Adam epsilon (added to sqrt(v), as in PyTorch)
  config.attack.lr_schedule = "constant"        # 'constant' or 'multistep' (x lr_gamma at each milestone step)
  config.attack.lr_milestones = (30, 40)        # steps where 'multistep' decays the learning rate
  config.attack.lr_gamma = 0.1                  # 'multistep' decay factor
  config.attack.discriminator_loss_weight = 0.0  # weight of the realism loss softplus(-D(x)); > 0 needs a discriminator
  config.attack.clamp = False                   # clamp images to [-1, 1] before the target model
  config.attack.crop_scale = (0.9, 1.0)         # random resized crop: area fraction of the (resized) image
  config.attack.crop_ratio = (1.0, 1.0)         # random resized crop: aspect ratio range
  config.attack.remat = "none"                  # rematerialise synthesis in the backward pass: 'none', 'dots', 'full'
  config.attack.center_crop = center_crop
  config.attack.resize = resize
  config.attack.dtype = dtype
  config.attack.xla_cpu_options = xla_cpu_options

  config.final_selection = ml_collections.ConfigDict()
  config.final_selection.samples_per_target = 50  # latents kept per class
  config.final_selection.iterations = 100       # random augmentations averaged per latent
  config.final_selection.crop_scale = (0.5, 0.9)  # random resized crop: area fraction
  config.final_selection.crop_ratio = (0.8, 1.2)  # random resized crop: aspect ratio range
  config.final_selection.horizontal_flip = True  # mirror each augmented view with probability 1/2
  config.final_selection.clamp = False          # clamp images to [-1, 1] before scoring
  config.final_selection.batch_size = 50        # global batch for scoring (divisible by the device count)
  config.final_selection.center_crop = center_crop
  config.final_selection.resize = resize
  config.final_selection.dtype = dtype
  config.final_selection.xla_cpu_options = xla_cpu_options

  config.output = ml_collections.ConfigDict()
  config.output.images_per_class = 10           # selected images in each class's grid (0: no grids)
  config.output.image_size = 128                # pixel size of each grid image

  if arg == "smoke":
    config.targets = "2"
    config.candidates.search_space_size = 16
    config.candidates.num_candidates = 4
    config.candidates.batch_size = 8
    config.attack.batch_size = 4
    config.attack.num_steps = 2
    config.final_selection.samples_per_target = 2
    config.final_selection.iterations = 2
    config.final_selection.batch_size = 8
    config.output.images_per_class = 2
  elif arg is not None:
    raise ValueError(f"Unknown attack config variant {arg!r}; use no variant or ':smoke'.")
  return config
