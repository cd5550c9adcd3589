"""GMI's WGAN-GP prior at 64x64 on CelebA's public split (identities outside the 1,000 private ones).

    python -m jaxmia.gan_gmi --config=configs/gan_gmi_celeba64.py --workdir=runs/gan_gmi_celeba64 \
        --config.dataset.manual_dir=/data/celeba
    python -m jaxmia.attack --config=configs/attack_gmi_celeba64.py --workdir=runs/gmi_celeba64

The official `Celeba/train_gan.py` / `celeba.json` of AI-secure/GMI-Attack: GMI's 64x64 generator and critic
(`jaxmia.models.dcgan`, z [100], width 64), batch 64, Adam lr 2e-4 betas (0.5, 0.999) for both networks, a
generator step every 5th iteration, gradient-penalty weight 10, 280 epochs. The data: the CelebA builder's
'public' split (every image of the identities outside configs/celeba64_vgg16.py's 1,000, stored at 64x64 like
the target's), of which `dataset.public_subset` keeps 30,000 seeded images: GMI's code reads a list it does
not ship and KED-MI's `data/ganset.txt` holds 30,000 such images (which ones cannot be derived, so these are
others), so 280 epochs are the official 131,040 iterations. Not official: jaxmia's CelebA images are the
centred 178x178 square resized to 64 (the target's storage), where the official loaders take a centred 108x108
crop, so faces are smaller here. The export (`generator/`, `discriminator/` in the workdir) is what
configs/attack_gmi_celeba64.py, attack_rlb_celeba64.py and attack_brep_celeba64.py read by default.
`:smoke` is a seconds-long pipeline check (narrow networks, 6 iterations of 48 public images).
"""
from jaxmia.config import sibling

celeba64_vgg16 = sibling(__file__, "celeba64_vgg16")
numbers = sibling(__file__, "gan_gmi_numbers")


def get_config(arg=None):
  """`arg`: None for the official CelebA GAN, 'smoke' for a few-second check."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown GMI CelebA GAN config variant {arg!r}; use no variant or ':smoke'.")
  config = numbers.get_config(arg)
  config.dataset = celeba64_vgg16.public_dataset(arg)  # set dataset.manual_dir on the first run
  config.split = "public"               # identities disjoint from the target's
  config.image_size = 64                # official
  config.generator.dim = 64             # official (the numbers GAN is narrower)
  config.discriminator.dim = 64         # official
  config.num_epochs = 280.0             # official (468 iterations each of 30,000 images at batch 64)
  if arg == "smoke":
    config.num_epochs = 1.0             # 6 iterations of batch 8
    config.generator.dim = config.discriminator.dim = 4
  return config
