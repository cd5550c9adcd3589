"""FaceScrub target: ResNet-152, 224x224, 530 identities, PPA's training recipe (Adam, 100 epochs).

    python -m jaxmia.train --config=configs/faces.py --workdir=runs/faces \
        --config.dataset.manual_dir=/data/facescrub --config.label_smoothing=-0.05

Defenses: `--config.defense.name=mid`, `=bido` or `=calor`; label smoothing: `--config.label_smoothing=0.1` (or
negative). Every field below can be overridden the same way.
"""
from ml_collections import ConfigDict

from jaxmia import data


def get_config(arg=None):
  """`arg`: unused (the faces config has no variants; override fields on the command line)."""
  del arg
  config = ConfigDict()
  config.seed = 42  # root of every random choice: init, data order, augmentation, bottleneck noise

  # Data (see jaxmia.data.get_dataset_config): FaceScrub actors + actresses, stored at 224x224 (stretched),
  # PPA's seeded 90/10 train/test split. Set manual_dir to the extracted dataset for the first run.
  config.dataset = data.get_dataset_config("facescrub")

  config.image_size = 224  # model input size (training crops and evaluation images are resized to it)
  config.augment = augment_config(config)

  config.model = ConfigDict()
  config.model.arch = "resnet152"  # any jaxmia.models.ARCHITECTURES entry
  config.model.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (parameters stay float32)
  config.model.builder_kwargs = ConfigDict()  # extra kwargs of the architecture's builder (e.g. base_channels)
  config.model.aux_loss_weight = 0.0  # weight of Inception-v3's auxiliary-head loss (0 = not computed)
  # ImageNet initialisation: a weights folder (jaxmia.model_store) or a torchvision .pth file;
  # the head (`fc`) is always created fresh for the dataset's classes. '' = random initialisation.
  config.init_weights = "converted_weights/resnet152_imagenet"

  config.defense = defense_config()

  config.label_smoothing = 0.0  # smoothing factor alpha of the cross-entropy target (negative allowed)
  # negative-alpha schedule: 'ppa' (exact, 100 epochs) | 'proportional' | 'smooth' | 'constant'
  config.ls_schedule = "ppa"

  config.optimizer = ConfigDict()
  config.optimizer.learning_rate = 1e-3  # Adam step size before decays
  config.optimizer.b1 = 0.9  # Adam beta1
  config.optimizer.b2 = 0.999  # Adam beta2
  config.optimizer.eps = 1e-8  # Adam epsilon (PyTorch's default)
  config.optimizer.weight_decay = 0.0  # L2 term added to the gradients, as PyTorch Adam's weight_decay
  config.optimizer.lr_decay_epochs = (75, 90)  # epochs at which the learning rate is multiplied by lr_decay
  config.optimizer.lr_decay = 0.1  # multiplier at each of lr_decay_epochs (PyTorch MultiStepLR gamma)

  config.batch_size = 128  # global batch size, split over all devices (and processes)
  config.eval_batch_size = 128  # global batch size for test/validation evaluation
  config.num_epochs = 100  # training epochs (the last partial batch of each epoch is dropped)
  config.max_steps = -1  # stop with a checkpoint after this many steps in total (-1 = train to the end)
  config.checkpoint_every_steps = 0  # extra checkpoints within epochs (0 = only at the end of each epoch)
  # A workdir holding a run with other settings (run.json): False stops with the differing fields; True deletes
  # that run's outputs and starts fresh. A run with the same settings is resumed either way.
  config.overwrite = False
  return config


def augment_config(config: ConfigDict) -> ConfigDict:
  """PPA's target-training augmentation (kwargs of `jaxmia.data.augment.train_augment`):
  RandomResizedCrop(scale 0.85-1, ratio 1), ColorJitter(0.2, 0.2, 0.1, 0.1), horizontal flip."""
  augment = ConfigDict()
  augment.size = config.get_ref("image_size")  # output size of the random resized crop (= config.image_size)
  augment.crop_scale = (0.85, 1.0)  # area fraction range of the random crop
  augment.crop_ratio = (1.0, 1.0)  # aspect ratio range of the random crop
  augment.brightness = 0.2  # colour jitter strengths (torchvision ColorJitter semantics)
  augment.contrast = 0.2
  augment.saturation = 0.1
  augment.hue = 0.1
  augment.flip = True  # horizontal flip with probability 0.5
  return augment


def defense_config() -> ConfigDict:
  """Defense settings shared by all target configs (`name` picks one; the others' fields are ignored)."""
  defense = ConfigDict()
  defense.name = "none"  # 'none' | 'mid' | 'bido' | 'calor'
  defense.mid = ConfigDict()
  defense.mid.bottleneck_dim = 1024  # size k of MID's variational bottleneck
  defense.mid.beta = 0.01  # weight of the KL term (MID's lambda)
  defense.bido = ConfigDict()
  defense.bido.lambda_x = 0.05  # weight of sum_j HSIC(x, z_j) (minimised)
  defense.bido.lambda_y = 0.5  # weight of sum_j HSIC(y, z_j) (maximised)
  defense.bido.sigma = 5.0  # Gaussian kernel width per input dimension
  defense.calor = ConfigDict()
  defense.calor.rank = 50  # rank of the compressed head (features -> BatchNorm -> rank -> tanh -> classes)
  defense.calor.activation = "tanh"  # between the two head layers: 'tanh' (CALoR's) | 'relu' | 'none'
  defense.calor.gamma = 4.0  # confidence adaptation exponent: the loss pulls p_y to exp(-1/gamma) (0.78)
  defense.calor.scale = 0.25  # weight of the confidence adaptation loss (only rescales the gradient)
  # The confidence adaptation loss trains only the last finetune_epochs epochs (cross-entropy before them), as the
  # authors fine-tune a cross-entropy-trained model with it for 5 epochs; >= num_epochs: the CA loss throughout.
  defense.calor.finetune_epochs = 5
  return defense
