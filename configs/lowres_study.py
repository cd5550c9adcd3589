"""The paper's low-resolution attacks (its Table 8: GMI, KED-MI, RLB-MI, BREP-MI) on the numbers study's targets:

    python -m jaxmia.experiment --config=configs/numbers_study.py --workdir=runs/numbers_study  # targets (if not yet)
    python -m jaxmia.lowres_study --config=configs/lowres_study.py --workdir=runs/numbers_study
    python -m jaxmia.lowres_study --config=configs/lowres_study.py --workdir=runs/quick_lowres --config.quick=True

The study takes longer than a machine lives here, so its finished stages are committed: before a session,
`python -m jaxmia.study_archive --mode=unpack --workdir=runs/numbers_study --archive=studies/numbers_study`, after
it `--mode=pack` (the same flags) and commit `studies/numbers_study` (`jaxmia.study_archive`).

configs/numbers_study.py unchanged (its 3 seeds x α ∈ {0.1, 0, -0.05} slim ResNet-18 targets and its DenseNet-121
evaluation model), attacked by the four attacks of `lowres.attacks` with the embedded settings of their own configs
(configs/attack_*_numbers.py, the GANs of configs/gan_gmi_numbers.py and gan_kedmi_numbers.py). GMI, RLB-MI and
BREP-MI search GMI's public DCGAN (z [100], 32x32), as their official code does; KED-MI trains its GAN against
each target. The whole protocol was fixed before any of these attacks ran on a study target (none was tuned on
results; every α gets the same settings):

* classes: 50 of the 100 (a fixed seeded subset, the same for every attack, α and seed; RLB-MI's paper attacks
  100 of 1,000 identities for time). At ~16 min of GMI per target for 50 classes (5 restarts x 1,500 iterations)
  on the 2-core host, the 36 attacks and 10 GANs take ~8-10 h there, so the study runs across sessions (resumable).
* GMI and KED-MI: their official attack settings (configs/attack_gmi_numbers.py, attack_kedmi_numbers.py).
* RLB-MI: the official agent and reward, 4,000 episodes per class (official 40,000: an accelerator's budget).
* BREP-MI: the official search settings with its z clamp [-1.5, 1.5], 100 iterations per class (33 queries each;
  the official search runs up to 1,000 accepted moves per radius), 20,000 random starting draws at most.
"""
from ml_collections import ConfigDict

from jaxmia.config import sibling

numbers_study = sibling(__file__, "numbers_study")
gan_gmi_numbers = sibling(__file__, "gan_gmi_numbers")
gan_kedmi_numbers = sibling(__file__, "gan_kedmi_numbers")
attack_gmi_numbers = sibling(__file__, "attack_gmi_numbers")
attack_kedmi_numbers = sibling(__file__, "attack_kedmi_numbers")
attack_rlb_numbers = sibling(__file__, "attack_rlb_numbers")
attack_brep_numbers = sibling(__file__, "attack_brep_numbers")


def dcgan_latents(attack: ConfigDict) -> ConfigDict:
  """An RLB-MI or BREP-MI numbers config moved from the StyleGAN2 digit prior to GMI's DCGAN (z, no mapping)."""
  if attack.kind == "brep":
    attack.attack.point_clamp = (-1.5, 1.5)  # official: z draws and moved points clamped to [-1.5, 1.5]
  return attack


def get_config(arg=None):
  """`arg`: None (the two-digit numbers; set `--config.quick=True` for the small run)."""
  if arg is not None:
    raise ValueError(f"Unknown low-resolution study variant {arg!r}; use configs/lowres_study.py (two digits).")
  config = numbers_study.get_config()
  lowres = config.lowres = ConfigDict()
  lowres.attacks = ("gmi", "kedmi", "rlb", "brep")  # run in this order per cell
  lowres.targets = numbers_study.attacked_classes(2, max_classes=50, seed=0)  # 50 fixed classes
  lowres.gmi_gan = gan_gmi_numbers.get_config()
  lowres.kedmi_gan = gan_kedmi_numbers.get_config()  # seed and target: set per cell
  # Per attack: its numbers config; seed, target, targets, generator (and discriminator) are set per cell.
  lowres.gmi = attack_gmi_numbers.get_config()
  lowres.kedmi = attack_kedmi_numbers.get_config()
  lowres.rlb = dcgan_latents(attack_rlb_numbers.get_config())
  lowres.brep = dcgan_latents(attack_brep_numbers.get_config())
  lowres.kedmi.attack.batch_size = 25  # classes per batch (2 batches of the 50; a batch is KED-MI's resume unit)
  lowres.rlb.attack.batch_size = 25    # agents per batch: 2 batches of the 50 (20 would pad a third batch to 60)
  for kind in lowres.attacks:
    lowres[kind].output.images_per_class = 1  # images/class_XXXX.png: lowres_samples.png shows them
    lowres[kind].attack.xla_cpu_options = "default"  # XLA's own choices: every committed cell ran so

  quick = config.quick_settings  # numbers_study's quick run (seconds-long targets), plus smoke attacks and GANs
  quick.lowres = ConfigDict(dict(
      targets="3", gmi_gan=gan_gmi_numbers.get_config("smoke"), kedmi_gan=gan_kedmi_numbers.get_config("smoke"),
      gmi=attack_gmi_numbers.get_config("smoke"), kedmi=attack_kedmi_numbers.get_config("smoke"),
      rlb=dcgan_latents(attack_rlb_numbers.get_config("smoke")),
      brep=dcgan_latents(attack_brep_numbers.get_config("smoke"))))
  for kind in lowres.attacks:
    quick.lowres[kind].attack.xla_cpu_options = "default"
  return config
