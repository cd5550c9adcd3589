"""Plug & Play Attack on a CelebA (1000 identities) classifier with the FFHQ StyleGAN2 prior (the paper's settings).

    python -m jaxmia.attack --config=configs/attack_celeba_ffhq.py --workdir=runs/attack_celeba_ffhq

All fields and their meaning: configs/attack_facescrub_ffhq.py. As in PPA's `configs/attacking/CelebA_FFHQ.yaml`,
CelebA differs only in a larger search space (5000 latents) and more optimisation steps (70).
"""
from jaxmia.config import sibling

attack_facescrub_ffhq = sibling(__file__, "attack_facescrub_ffhq")


def get_config(arg=None):
  """`arg`: None for the paper's settings, 'smoke' for a few-second pipeline check."""
  config = attack_facescrub_ffhq.get_config(arg)
  config.target = "runs/celeba/model"    # weights folder of the target classifier (1000 classes)
  if arg is None:
    config.candidates.search_space_size = 5000  # random latents scored to find starting points
    config.attack.num_steps = 70                # Adam steps per latent
  return config
