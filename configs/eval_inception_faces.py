"""FaceScrub evaluation model: Inception-v3 at 299x299, the classifier that scores attack results.

    python -m jaxmia.train --config=configs/eval_inception_faces.py --workdir=runs/eval_inception_faces \
        --config.dataset.manual_dir=/data/facescrub

PPA's evaluation-model recipe: Adam 1e-3 for 100 epochs, learning rate x0.1 at epoch 80, plain
cross-entropy, auxiliary-head loss with weight 1. All other fields: configs/faces.py.
"""
from jaxmia import data
from jaxmia.config import sibling

faces = sibling(__file__, "faces")


def get_config(arg=None):
  """`arg`: unused (override fields on the command line)."""
  del arg
  config = faces.get_config()
  config.dataset = data.get_dataset_config("facescrub")
  config.dataset.image_size = 299  # stored at the model's input size
  config.image_size = 299  # Inception-v3's input size (config.augment.size follows it)
  config.model.arch = "inception_v3"
  config.model.aux_loss_weight = 1.0  # the auxiliary head's loss is added with weight 1, as in PPA
  config.init_weights = "converted_weights/inception_v3_imagenet"  # ImageNet weights; heads are fresh
  config.optimizer.lr_decay_epochs = (80,)  # a single decay at epoch 80
  return config
