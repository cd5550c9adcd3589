"""Stanford Dogs target: ResNet-152 on 120 breeds (uncropped images), 224x224, PPA's recipe.

    python -m jaxmia.train --config=configs/stanford_dogs.py --workdir=runs/dogs \
        --config.dataset.manual_dir=/data/stanford_dogs

All fields and their meaning: configs/faces.py; only the dataset differs.
"""
from jaxmia import data
from jaxmia.config import sibling

faces = sibling(__file__, "faces")


def get_config(arg=None):
  """`arg`: unused (override fields on the command line)."""
  del arg
  config = faces.get_config()
  # Whole images (not cropped to the bounding box) stretched to 224x224; train and test lists re-split 90/10
  # with PPA's seed, as PPA does.
  config.dataset = data.get_dataset_config("stanford_dogs")
  return config
