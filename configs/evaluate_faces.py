"""Evaluation of a face attack (FaceScrub or CelebA target) with PPA's metrics.

    python -m jaxmia.evaluate --config=configs/evaluate_faces.py --run_dir=runs/attack_facescrub_ffhq
    python -m jaxmia.evaluate --config=configs/evaluate_faces.py:celeba --run_dir=runs/attack_celeba_ffhq

The generator, the target and the attack's centre crop come from the run's summary.json unless set here.
Every network is optional: a weights field set to '' turns its metrics into n/a with the reason.
"""
from ml_collections import ConfigDict

from jaxmia import data
from jaxmia.metrics import knowledge_extraction

# dataset name -> the Inception-v3 evaluation model trained on it (configs/eval_inception_faces.py).
_EVALUATION_MODELS = {"facescrub": "runs/eval_inception_faces/model", "celeba": "runs/eval_inception_celeba/model"}


def get_config(arg=None):
  """`arg`: the target's dataset, 'facescrub' (default) or 'celeba'."""
  name = arg or "facescrub"
  if name not in _EVALUATION_MODELS:
    raise ValueError(f"Unknown face dataset {name!r}; use configs/evaluate_faces.py[:facescrub|:celeba].")
  config = ConfigDict()
  config.generator = ""          # weights folder of the StyleGAN2 generator; '' = the one the attack used
  config.target = ""             # weights folder of the target model; '' = the one the attack used
  config.target_image_size = 0   # target input size for Test Acc / ECE; 0 = the attack's resize
  config.dataset = data.get_dataset_config(name)  # the target's data: training images and test split
  config.batch_size = 32         # global batch of latents / images per jitted call (divisible by device count)
  config.ppa_compat = False      # reproduce PPA's numbers (unclamped images, FID input scaling, PPA's PRDC)
  config.feature_cache_dir = "runs/feature_cache"  # training-image features per network and class; '' = in out_dir

  config.evaluation_model = ConfigDict()
  config.evaluation_model.weights = _EVALUATION_MODELS[name]  # classifier for Acc@k and δ_eval
  config.evaluation_model.image_size = 299                    # its input size

  config.facenet = ConfigDict()
  config.facenet.weights = "converted_weights/facenet_vggface2"  # inception_resnet_v1 weights folder for δ_face
  config.facenet.image_size = 160                              # FaceNet's input size

  config.fid = ConfigDict()
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (pool3 features at 299x299), or a jaxmia weights folder
  # whose pooled features are used instead (at fid.image_size).
  config.fid.weights = "converted_weights/pt_inception-2015-12-05-6726825d.pth"
  config.fid.image_size = 299    # input size when fid.weights is a jaxmia weights folder
  config.fid.prdc_k = 3          # neighbour defining the balls of precision / recall / density / coverage

  config.knowledge_extraction = knowledge_extraction.student_config()  # PPA: ImageNet ResNet-50, 75 epochs
  config.knowledge_extraction.enabled = True  # train the student (the slowest metric by far)

  config.grid = ConfigDict()
  config.grid.num_classes = 8        # classes shown in nearest_neighbours.png (the first attacked ones)
  config.grid.samples_per_class = 6  # selected samples per class, each above its nearest training image
  config.grid.image_size = 128       # pixels per image in the grid
  return config
