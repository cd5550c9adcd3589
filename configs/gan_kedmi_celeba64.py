"""KED-MI's inversion-specific GAN at 64x64 on CelebA's public split, against configs/celeba64_vgg16.py's target.

    python -m jaxmia.train --config=configs/celeba64_vgg16.py --workdir=runs/celeba64_vgg16 \
        --config.dataset.manual_dir=/data/celeba
    python -m jaxmia.gan_kedmi --config=configs/gan_kedmi_celeba64.py --workdir=runs/gan_kedmi_celeba64
    python -m jaxmia.attack --config=configs/attack_kedmi_celeba64.py --workdir=runs/kedmi_celeba64

The official `k+1_gan.py` / `config/celeba.json` of SCccc21/Knowledge-Enriched-DMI: GMI's 64x64 generator
against the `MinibatchDiscriminator` (width 64, 64 minibatch kernels of dimension 50) whose classes are the
target's 1,000 identities, batch 64, Adam lr 2e-4 betas (0.5, 0.999), a generator step every 5th iteration,
entropy weight 1e-4, 120 epochs; the target sees the public images at its 64x64 input. The data: the CelebA
builder's 'public' split (identities outside the target's 1,000, stored at 64x64 like the target's), of which
`dataset.public_subset` keeps 30,000 seeded images, the size of the official `data/ganset.txt` (its file names
cannot be derived, so these are other images of the same kind), so 120 epochs are the official 56,160
iterations. Not official: jaxmia's CelebA images are the centred 178x178 square resized to 64 (the target's
storage), where the official loader takes a centred 108x108 crop. The GAN is trained against one target: a
target trained with another α needs its own GAN (`--config.target=...`, another workdir). The export
(`generator/`, `discriminator/` in the workdir) is what configs/attack_kedmi_celeba64.py reads by default.
`:smoke` is a seconds-long pipeline check (narrow networks, 6 iterations of 48 public images).
"""
from jaxmia.config import sibling

celeba64_vgg16 = sibling(__file__, "celeba64_vgg16")
numbers = sibling(__file__, "gan_kedmi_numbers")


def get_config(arg=None):
  """`arg`: None for the official CelebA GAN, 'smoke' for a few-second check."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown KED-MI CelebA GAN config variant {arg!r}; use no variant or ':smoke'.")
  config = numbers.get_config(arg)
  config.dataset = celeba64_vgg16.public_dataset(arg)  # set dataset.manual_dir on the first run
  config.split = "public"               # identities disjoint from the target's
  config.target = "runs/celeba64_vgg16/model"  # configs/celeba64_vgg16.py's export; its soft labels teach D
  config.target_resize = 64             # the VGG-16 target's input side (its lowres head is built for 64)
  config.image_size = 64                # official
  config.generator.dim = 64             # official (the numbers GAN is narrower)
  config.discriminator.dim = 64         # official
  config.generator.start_size = config.discriminator.end_size = 0  # official 64x64 networks (4x4 ends)
  config.num_epochs = 120.0             # official (468 iterations each of 30,000 images at batch 64)
  if arg == "smoke":
    config.num_epochs = 1.0             # 6 iterations of batch 8
    config.generator.dim = config.discriminator.dim = 4
  return config
