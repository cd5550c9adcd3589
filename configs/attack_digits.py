"""Plug & Play Attack on the embedded digits target (no download): a minute-scale run on 2 CPU cores.

    python -m jaxmia.train --config=configs/digits.py --workdir=runs/digits
    python -m jaxmia.attack --config=configs/attack_digits.py --workdir=runs/attack_digits

The prior is the StyleGAN2 shipped in converted_weights/mnist32_stylegan2 (trained by configs/gan_digits.py on
the public split). With `--config.generator=""` the attack uses a randomly initialised 32x32 StyleGAN2
(`random_generator`, seeded by `seed`) instead, which exercises the pipeline but is no image prior.
All other fields and their meaning: configs/attack_facescrub_ffhq.py.
"""
from ml_collections import ConfigDict

from jaxmia.config import sibling

attack_facescrub_ffhq = sibling(__file__, "attack_facescrub_ffhq")


def get_config(arg=None):
  """`arg`: None for the digits attack, 'smoke' for a few-second pipeline check."""
  config = attack_facescrub_ffhq.get_config(arg)
  config.generator = "converted_weights/mnist32_stylegan2"  # "" = the seeded random_generator below
  config.discriminator = ""             # converted_weights/mnist32_stylegan2_discriminator for a realism loss
  config.random_generator = ConfigDict(dict(  # NVlabs Generator kwargs of the seeded random prior
      z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
      synthesis_kwargs=dict(channel_base=2048, channel_max=64)))
  config.target = "runs/digits/model"   # what configs/digits.py exports (ResNet-18, 10 classes, 32x32)
  config.attack.center_crop = 32        # digits are centred: no crop (shared by all stages)
  config.attack.resize = 32             # the target's input size (shared by all stages)
  config.candidates.horizontal_flip = False       # mirrored digits are other digits
  config.final_selection.horizontal_flip = False
  # No truncation: the shipped prior covers the digits unevenly, and truncation narrows it further. Classes
  # of 2,000 prior samples by the study's evaluation model, digits 0-9:
  #   psi 1.0: 147 323 71 3 28 14 347 637 13 417;  psi 0.5: 283 61 44 0 8 2 481 289 3 829.
  config.candidates.truncation_psi = 1.0
  if arg is None:
    config.candidates.search_space_size = 500
    config.candidates.num_candidates = 20
    config.candidates.batch_size = 20
    config.attack.batch_size = 20
    config.attack.num_steps = 30
    config.final_selection.samples_per_target = 5
    config.final_selection.iterations = 20
    config.final_selection.batch_size = 40
    config.output.images_per_class = 5
    config.output.image_size = 64
  return config
