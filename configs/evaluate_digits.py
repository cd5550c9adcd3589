"""Evaluation of an attack on the embedded digits target (configs/digits.py).

    python -m jaxmia.evaluate --config=configs/evaluate_digits.py --run_dir=runs/attack_digits

Faces-only metrics are n/a: there is no FaceNet (δ_face). The evaluation model is a classifier of another
architecture than the ResNet-18 target, trained on the same digits, e.g.
`python -m jaxmia.train --config=configs/digits.py --config.model.arch=densenet121 --workdir=runs/digits_eval`.
The student for ξ is a small ResNet-18 trained from scratch at 32x32. Variant `smoke`: a few-second student.
"""
from jaxmia import data
from jaxmia.config import sibling

evaluate_faces = sibling(__file__, "evaluate_faces")


def get_config(arg=None):
  """`arg`: None for the full evaluation, 'smoke' for a tiny student (tests)."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown variant {arg!r}; use configs/evaluate_digits.py or configs/evaluate_digits.py:smoke.")
  config = evaluate_faces.get_config()
  config.dataset = data.get_dataset_config("mnist_embedded")
  config.batch_size = 64
  config.evaluation_model.weights = "runs/digits_eval/model"  # another architecture than the target
  config.evaluation_model.image_size = 32
  config.facenet.weights = ""    # no face embedding for digits: δ_face is n/a
  config.fid.image_size = 32     # only used when fid.weights is a jaxmia weights folder

  ke = config.knowledge_extraction
  ke.arch = "resnet18"
  ke.builder_kwargs.base_channels = 16  # a slim ResNet-18 (16-32-64-128 channels)
  ke.init_weights = ""                  # from scratch
  ke.image_size = 32
  ke.num_epochs = 30
  ke.batch_size = 64
  ke.eval_batch_size = 100
  ke.crop_scale = (0.8, 1.0)
  ke.flip = False                       # mirrored digits are other digits

  config.grid.num_classes = 10
  config.grid.image_size = 64
  if arg == "smoke":
    ke.builder_kwargs.base_channels = 4
    ke.num_epochs = 2
    ke.batch_size = 16
    config.batch_size = 16
  return config
