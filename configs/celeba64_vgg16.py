"""VGG-16 target of the low-resolution protocol (GMI / KED-MI; the paper's Appendix C.5) on CelebA, 64x64.

    python -m jaxmia.train --config=configs/celeba64_vgg16.py --workdir=runs/celeba64_vgg16 \
        --config.dataset.manual_dir=/data/celeba --config.label_smoothing=0.1

The model is GMI's `VGG16`: torchvision's VGG-16-BN stack with the low-resolution head (flattened 512x2x2 map ->
BatchNorm1d -> Linear; `jaxmia.models.vgg`, head 'lowres', [0, 1] inputs), on the 1,000 CelebA identities with
most images stored at 64x64. `--config.label_smoothing=α` (negative allowed, with `ls_schedule`) trains the
smoothed targets the paper compares. Everything else is configs/faces.py's recipe (Adam, 100 epochs, PPA's
augmentation at 64 pixels), the recipe of jaxmia's other targets; GMI's own training code is not reproduced
(its SGD recipe and its crop, a 128x128 box at (25, 45) of the aligned 178x218 images, where jaxmia's CelebA
builder takes the centred 178x178 square), nor its ImageNet start: `init_weights` is '' (random init).
The attackers' GANs: configs/gan_gmi_celeba64.py, gan_kedmi_celeba64.py (CelebA's public split); the attacks:
configs/attack_{gmi,kedmi,rlb,brep}_celeba64.py. `:smoke` is a seconds-long pipeline check (a 5-conv VGG of
width 8-16, 2 epochs at batch 8) for tiny fake CelebA folders.
"""
from jaxmia.config import sibling

celeba = sibling(__file__, "celeba")


def get_config(arg=None):
  """`arg`: None (override fields on the command line, e.g. --config.label_smoothing=0.1) or 'smoke'."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown CelebA VGG-16 config variant {arg!r}; use no variant or ':smoke'.")
  config = celeba.get_config()
  config.dataset.image_size = 64        # stored side (the low-resolution protocol's 64x64 faces)
  config.image_size = 64                # model input side; the lowres head is built for it (512 x 2 x 2)
  config.model.arch = "vgg16_bn"        # GMI's VGG16 is torchvision's vgg16_bn stack
  config.model.builder_kwargs.head = "lowres"  # flattened map -> BatchNorm1d `bn` -> Linear `fc_layer`
  config.init_weights = ""              # random initialisation (no converted ImageNet VGG-16-BN is shipped)
  config.batch_size = 64                # GMI / KED-MI's batch
  config.eval_batch_size = 128
  config.label_smoothing = 0.0          # α: the smoothing factor of the cross-entropy target (negative allowed)
  if arg == "smoke":
    config.model.builder_kwargs.layers = (8, "M", 8, "M", 16, "M", 16, "M", 16, "M")  # features 16 x 2 x 2
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_epochs = 2
    config.optimizer.lr_decay_epochs = (1,)
  return config


def public_dataset(arg=None):
  """The GANs' data (configs/gan_gmi_celeba64.py, gan_kedmi_celeba64.py): this target's dataset config — the same
  prepared data and the same private identities, whose complement is the 'public' split — with
  `public_subset` seeded public images: 30,000, the size of KED-MI's official `data/ganset.txt` (None: all);
  48 for `arg='smoke'`."""
  dataset = get_config(arg).dataset
  dataset.public_subset = 48 if arg == "smoke" else 30_000
  return dataset
