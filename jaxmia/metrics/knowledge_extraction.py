"""Knowledge extraction score ξ (Struppek et al., 2022): how much of the target's task a student classifier
learns from attack results alone. ξ_train / ξ_test are the student's top-1 accuracy on the target's real
training / test images of the attacked classes.

This module holds what the metric is made of without training anything: the student's settings
(`student_config()`, the `knowledge_extraction` section of the evaluation configs), the remapping of attacked
class ids to the student's labels and the accuracy of the student's logits. The student is trained by
`jaxmia.student` (`knowledge_extraction_score`).
"""
import ml_collections
import numpy as np


def student_config() -> ml_collections.ConfigDict:
  """PPA's knowledge-extraction student: ImageNet ResNet-50 at 224x224, SGD 0.1, 75 epochs."""
  config = ml_collections.ConfigDict()
  config.arch = "resnet50"                # any jaxmia.models architecture
  config.builder_kwargs = ml_collections.ConfigDict()  # extra kwargs of the architecture's builder
  config.init_weights = "converted_weights/resnet50_imagenet"  # weights folder or .pth; '' = random init
  config.dtype = "float32"                # compute dtype: 'float32' or 'bfloat16'
  config.image_size = 224                 # student input size (render output and real images are resized to it)
  config.num_epochs = 75                  # passes over the attack images
  config.batch_size = 32                  # global batch (divisible by the device count)
  config.eval_batch_size = 64             # global batch for the real train/test images
  config.learning_rate = 0.1              # SGD learning rate at epoch 0
  config.final_learning_rate = 1e-4       # cosine floor (PyTorch CosineAnnealingLR eta_min)
  config.momentum = 0.9                   # SGD momentum (PyTorch semantics, no dampening)
  config.weight_decay = 1e-4              # L2 term added to the gradients
  config.crop_scale = (0.8, 1.0)          # random resized crop: area fraction
  config.crop_ratio = (1.0, 1.0)          # random resized crop: aspect ratio
  config.flip = True                      # random horizontal flip
  config.seed = 0                         # student init, data order and augmentation
  return config


def remap_labels(targets) -> tuple[np.ndarray, np.ndarray]:
  """Targets (any class ids) -> (labels in 0..K-1 `[N]`, sorted class ids `[K]`), `labels = searchsorted(classes)`."""
  classes, labels = np.unique(np.asarray(targets), return_inverse=True)
  return labels.astype(np.int32).reshape(-1), classes.astype(np.int32)


def extraction_accuracy(logits, labels, classes) -> float:
  """Top-1 accuracy of student `logits` `[N, K]` on images of original class ids `labels` `[N]`.

  The student predicts positions in the sorted attacked `classes` `[K]` (`remap_labels`); every label must be
  one of them.
  """
  classes, labels = np.asarray(classes), np.asarray(labels)
  positions = np.searchsorted(classes, labels)
  if np.any(positions >= len(classes)) or np.any(classes[np.minimum(positions, len(classes) - 1)] != labels):
    raise ValueError("The split holds images of classes the student was not trained on; restrict it to "
                     "the attacked classes first.")
  return float(np.mean(np.argmax(logits, axis=-1) == positions))
