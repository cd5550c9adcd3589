"""CelebA target: ResNet-152 on the 1,000 most frequent identities, 224x224, PPA's recipe.

    python -m jaxmia.train --config=configs/celeba.py --workdir=runs/celeba \
        --config.dataset.manual_dir=/data/celeba

All fields and their meaning: configs/faces.py; only the dataset differs.
"""
from jaxmia import data
from jaxmia.config import sibling

faces = sibling(__file__, "faces")


def get_config(arg=None):
  """`arg`: unused (override fields on the command line)."""
  del arg
  config = faces.get_config()
  # CelebA aligned faces of the 1,000 identities with most images, centre-cropped and resized to 224x224,
  # PPA's seeded 90/10 train/test split.
  config.dataset = data.get_dataset_config("celeba")
  return config
