"""Plug & Play Attack on a CelebA (1000 identities) classifier with the FFHQ StyleGAN2 prior (the paper's settings).

`python -m jaxmia.attack --config=configs/attack_celeba_ffhq.py --workdir=runs/attack_celeba_ffhq`.
Every knob is documented in `attack_facescrub_ffhq.py`; as PPA's `configs/attacking/CelebA_FFHQ.yaml`, CelebA
differs only in a larger search space (5000 latents) and more optimisation steps (70).
"""
import importlib.util
import pathlib

import ml_collections


def _facescrub_config(variant: str) -> ml_collections.ConfigDict:
  path = pathlib.Path(__file__).with_name("attack_facescrub_ffhq.py")
  spec = importlib.util.spec_from_file_location("attack_facescrub_ffhq", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = _facescrub_config(variant)
  config.target = "runs/celeba_resnet152/model"   # load_converted dir of the target classifier (1000 classes)
  if not variant:
    config.candidates.search_space_size = 5000    # random latents scored to find starting points
    config.attack.num_steps = 70                  # Adam steps per latent
  return config
