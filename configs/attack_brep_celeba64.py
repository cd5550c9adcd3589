"""BREP-MI, the label-only attack, against a 64x64 CelebA VGG-16 target in the z space of GMI's CelebA GAN.

    python -m jaxmia.train --config=configs/celeba64_vgg16.py --workdir=runs/celeba64_vgg16 \
        --config.dataset.manual_dir=/data/celeba
    python -m jaxmia.gan_gmi --config=configs/gan_gmi_celeba64.py --workdir=runs/gan_gmi_celeba64
    python -m jaxmia.attack --config=configs/attack_brep_celeba64.py --workdir=runs/brep_celeba64

As the official attack (m-kahla/Label-Only-Model-Inversion-Attacks-via-Boundary-Repulsion: `main.py`,
`brep_mi.py`, `config2.yaml`), the search moves z `[1, 100]` of GMI's public CelebA DCGAN (`generator`, what
configs/gan_gmi_celeba64.py exports; a generator without a mapping network is searched in z,
`jaxmia.attack.brep`), its starting draws and moved points clamped to [-1.5, 1.5], with the official sphere
(32 points, radius 2, x1.3 when > 75 % are inside, step min(r / 3, 3), 1,000 accepted moves at one radius).
Differences: `targets` "300" attacks identities 0-299 (the official `num_targets: 300` of the untargeted
attack takes the first 300 labels its random draws hit, which depends on the target; its targeted variant
takes an identity range); starting points are drawn for them in batches of 256 (the official
`batch_dim_for_initial_points`) up to `candidates.search_space_size` (the official code draws without limit);
`max_iterations` 100,000 sphere samplings is a safety cap the official search does not have. `target` is
configs/celeba64_vgg16.py's export; the 64x64 image goes to it unchanged. `:smoke` is
configs/attack_brep_numbers.py's pipeline check on these paths.
"""
import ml_collections

from jaxmia.config import sibling

numbers = sibling(__file__, "attack_brep_numbers")


def get_config(arg=None) -> ml_collections.ConfigDict:
  """`arg`: None, or 'smoke' for the numbers smoke settings on these paths."""
  config = numbers.get_config(arg)
  config.generator = "runs/gan_gmi_celeba64/generator"  # GMI's DCGAN at 64x64 (z [100], no mapping: searched in z)
  config.random_generator.img_resolution = 64
  config.target = "runs/celeba64_vgg16/model"           # configs/celeba64_vgg16.py's export (1,000 identities)
  config.attack.center_crop = 64        # GMI's 64x64 faces are the target's input as they are
  config.attack.resize = 64
  config.attack.point_clamp = (-1.5, 1.5)  # official: z draws and moved points clamped to [-1.5, 1.5]
  config.output.image_size = 64
  if arg is None:
    config.targets = "300"              # identities 0-299 (see above)
    config.candidates.search_space_size = 100_000  # random z at most (one target query each)
    config.candidates.batch_size = 256  # official batch of the initial draws
    config.attack.batch_size = 60       # latents searched together (one resume unit)
    config.attack.sphere_points_per_call = 8  # 480 images of 64x64 per VGG16-BN call (all 32 points: ~4x the memory)
    config.attack.max_iterations = 100_000  # safety cap; the official search ends at max_iterations_at_radius
    config.output.images_per_class = 1  # one grid image per class
  return config
