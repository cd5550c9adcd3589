"""RLB-MI as the paper ran it: CelebA, GMI's 64x64 setting, 100 target identities, the official defaults.

    python -m jaxmia.train --config=configs/celeba64_vgg16.py --workdir=runs/celeba64_vgg16 \
        --config.dataset.manual_dir=/data/celeba
    python -m jaxmia.attack --config=configs/attack_rlb_celeba64.py --workdir=runs/rlb_celeba64

The official attack (HanGyojin/RLB-MI) runs a SAC agent per identity in the z space of GMI's public CelebA
DCGAN (z [100] -> 64x64 image), against GMI's / KED-MI's 64x64 targets of the 1,000 private CelebA identities
(VGG16, IR-152, FaceNet64). Every field below is the official default: 40,000 one-step episodes per identity
(main.py's -max_episodes, -max_step, -alpha) and SAC.py's agent; the 100 identities are those the official
code draws (`random.sample(range(1000), 100)` after seeding Python's `random` with 42: main.py's defaults
-n_classes 1000 -n_target 100; the paper's tables attack all 1,000, a 10x longer run).

`generator` is GMI's generator (`jaxmia.models.dcgan.Generator`, a z -> image module; the same folder as
configs/attack_gmi_celeba64.py's, written by `jaxmia.gan_gmi` or converted from GMI's checkpoint); any
StyleGAN2 weights folder works as well (its z is the agent's latent). `target` is configs/celeba64_vgg16.py's
export. `latents.npz` holds each identity's z as `optimized_w [N, 1, 100]`, which the evaluation renders
through the generator's `synthesis`. `:smoke` is configs/attack_rlb_numbers.py's pipeline check on these paths.
"""
import ml_collections

from jaxmia.config import sibling

numbers = sibling(__file__, "attack_rlb_numbers")

# random.Random(42).sample(range(1000), 100): the official main.py's target identities, in its order.
OFFICIAL_TARGETS = [
    654, 114, 25, 759, 281, 250, 228, 142, 754, 104, 692, 758, 913, 558, 89, 604, 432, 32, 30, 95, 223, 238, 517,
    616, 27, 574, 203, 733, 665, 718, 986, 429, 225, 459, 603, 284, 828, 890, 6, 777, 825, 163, 714, 983, 348,
    964, 159, 220, 781, 344, 990, 94, 389, 99, 367, 867, 352, 618, 270, 826, 44, 747, 470, 549, 127, 387, 80, 565,
    300, 849, 643, 633, 906, 882, 370, 591, 196, 721, 71, 46, 677, 233, 791, 296, 81, 875, 978, 887, 103, 947,
    954, 464, 650, 854, 373, 166, 379, 363, 214, 686]


def get_config(arg=None) -> ml_collections.ConfigDict:
  """`arg`: None, or 'smoke' for the numbers smoke settings on these paths."""
  config = numbers.get_config(arg)
  config.generator = "runs/gan_gmi_celeba64/generator"  # GMI's DCGAN at 64x64 (see above)
  config.random_generator.img_resolution = 64
  config.target = "runs/celeba64_vgg16/model"           # configs/celeba64_vgg16.py's export (1,000 identities)
  config.attack.center_crop = 64        # GMI's 64x64 faces are the target's input as they are
  config.attack.resize = 64
  config.output.image_size = 64
  if arg is None:
    config.targets = str(OFFICIAL_TARGETS)  # the official 100 identities ("all" for the 1,000)
    config.attack.batch_size = 20       # agents run together (each holds 40,000 transitions of z [100])
    config.attack.episodes_per_call = 1000  # episodes per jitted call
    config.attack.max_episodes = 40_000  # official
  return config
