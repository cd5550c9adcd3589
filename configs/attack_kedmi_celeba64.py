"""KED-MI against a 64x64 CelebA VGG-16 target (the low-resolution protocol of GMI / KED-MI; real data, manual
download).

    python -m jaxmia.train --config=configs/celeba64_vgg16.py --workdir=runs/celeba64_vgg16 \
        --config.dataset.manual_dir=/data/celeba
    python -m jaxmia.gan_kedmi --config=configs/gan_kedmi_celeba64.py --workdir=runs/gan_kedmi_celeba64
    python -m jaxmia.attack --config=configs/attack_kedmi_celeba64.py --workdir=runs/kedmi_celeba64

Fields (the rest as configs/attack_kedmi_numbers.py, whose values are the official recovery settings):
  generator      KED-MI's generator at 64x64 (`jaxmia.gan_kedmi`'s `generator/`, kind dcgan_generator).
  discriminator  its MinibatchDiscriminator (`discriminator/`, kind kedmi_discriminator), trained against the same
                 target (its classes are the target's 1,000 identities).
  target         configs/celeba64_vgg16.py's export (VGG-16-BN, low-resolution head, 64x64 input).
  targets        "300": identities 0-299, as the official `recovery.py` (five batches of 60).
  attack.center_crop / attack.resize  64 / 64: the generator's whole 64x64 image goes to the target unchanged.
  output         one grid image per class, 64 pixels.

The GAN: configs/gan_kedmi_celeba64.py, KED-MI's GAN trained on the public part of CelebA (the CelebA builder's
'public' split: identities disjoint from the 1,000 private ones) with the target's soft labels. Evaluate with
configs/evaluate_faces.py's fields.
"""
from jaxmia.config import sibling

numbers = sibling(__file__, "attack_kedmi_numbers")


def get_config(arg=None):
  """`arg`: None, or 'smoke' for the numbers smoke settings on these paths."""
  config = numbers.get_config(arg)
  config.generator = "runs/gan_kedmi_celeba64/generator"          # KED-MI generator at 64x64
  config.discriminator = "runs/gan_kedmi_celeba64/discriminator"  # its (K+1)-class discriminator
  config.target = "runs/celeba64_vgg16/model"                     # configs/celeba64_vgg16.py's export
  config.targets = "300" if arg is None else config.targets       # official: identities 0-299
  config.attack.batch_size = 60 if arg is None else config.attack.batch_size  # the official batch of identities
  config.attack.center_crop = 64       # the generator's whole 64x64 image
  config.attack.resize = 64            # the VGG-16 target's input side (its lowres head is built for 64)
  config.output.images_per_class = 1 if arg is None else config.output.images_per_class
  config.output.image_size = 64
  return config
