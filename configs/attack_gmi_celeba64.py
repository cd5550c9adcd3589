"""GMI against a 64x64 CelebA VGG-16 target (the low-resolution protocol of GMI / KED-MI; real data, manual download).

    python -m jaxmia.train --config=configs/celeba64_vgg16.py --workdir=runs/celeba64_vgg16 \
        --config.dataset.manual_dir=/data/celeba
    python -m jaxmia.gan_gmi --config=configs/gan_gmi_celeba64.py --workdir=runs/gan_gmi_celeba64
    python -m jaxmia.attack --config=configs/attack_gmi_celeba64.py --workdir=runs/gmi_celeba64

Fields: `generator` and `discriminator` are GMI's GAN at 64x64 (`jaxmia.gan_gmi`'s `generator/` and
`discriminator/` folders, kinds dcgan_generator / dcgan_discriminator), trained by configs/gan_gmi_celeba64.py on
the public part of CelebA (the CelebA builder's 'public' split: identities disjoint from the 1,000 private
ones). `target` is
configs/celeba64_vgg16.py's export. `targets` "100" attacks classes 0-99 as the official `attack.py` (`iden`
0..99). The optimisation is the official `attack.py`'s (5 restarts, 1,500 iterations, lr 0.02, momentum 0.9, λ 100,
z clipped to [-1, 1]); the 64x64 image goes to the target unchanged (no crop or resize). Evaluate with
configs/evaluate_faces.py's fields (its evaluation model reads 64x64 views resized to its own input).
"""
from jaxmia.config import sibling

numbers = sibling(__file__, "attack_gmi_numbers")


def get_config(arg=None):
  """`arg`: None, or 'smoke' for the numbers smoke settings on these paths."""
  config = numbers.get_config(arg)
  config.generator = "runs/gan_gmi_celeba64/generator"          # GMI generator at 64x64 (jaxmia.gan_gmi export)
  config.discriminator = "runs/gan_gmi_celeba64/discriminator"  # its WGAN-GP critic (the prior loss)
  config.target = "runs/celeba64_vgg16/model"                   # configs/celeba64_vgg16.py's export
  config.targets = "100" if arg is None else config.targets     # official: identities 0-99
  config.attack.center_crop = 64       # the generator's whole 64x64 image
  config.attack.resize = 64            # the VGG-16 target's input side (its lowres head is built for 64)
  config.output.images_per_class = 1 if arg is None else config.output.images_per_class  # one grid per class
  config.output.image_size = 64
  return config
