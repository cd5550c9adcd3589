"""The embedded end-to-end study: does label smoothing change how much a model inversion attack reveals?

    python -m jaxmia.experiment --config=configs/digits_study.py --workdir=runs/digits_study
    python -m jaxmia.experiment --config=configs/digits_study.py --workdir=runs/quick --config.quick=True

On the embedded MNIST digits (no download): for every seed, three ResNet-18 targets that differ only in the
label-smoothing factor α (same seed, same data order) are trained on the private split, attacked with PPA
through the shipped StyleGAN2 prior of the public split, and evaluated with an evaluation model of another
architecture (DenseNet-121). `report.md` compares each α with α = 0 (mean ± sd over seeds). The sections
below are the base configs of each stage; the study sets the seed, α and the paths between stages.
`quick=True` applies `quick_settings` on top (a few-minute check of the whole pipeline).
"""
from ml_collections import ConfigDict

from jaxmia.config import sibling

attack_digits = sibling(__file__, "attack_digits")
digits = sibling(__file__, "digits")
evaluate_digits = sibling(__file__, "evaluate_digits")
gan_digits = sibling(__file__, "gan_digits")
membership_digits = sibling(__file__, "membership_digits")


def _student_settings(evaluate: ConfigDict) -> None:
  """Knowledge extraction student for the study: a slim ResNet-18 on the attack samples."""
  ke = evaluate.knowledge_extraction
  ke.builder_kwargs.base_channels = 8
  ke.num_epochs = 10
  ke.flip = False


def get_config(arg=None):
  """`arg`: unused (set `--config.quick=True` for the small run)."""
  del arg
  config = ConfigDict()
  config.seeds = (0, 1, 2)              # one full repetition (targets, attacks, evaluations) per seed
  config.alphas = (0.1, 0.0, -0.05)     # label-smoothing factors of the targets
  config.baseline_alpha = 0.0           # differences in report.md are taken to this α
  # Defense cells per seed, trained at baseline_alpha with the settings of target.defense: 'mid', 'bido', 'calor'.
  config.defenses = ()
  config.run_membership = False         # a membership-inference stage per cell (the `membership` section)
  # Intervals of the paired per-class differences to the baseline (jaxmia.analysis.statistics).
  config.bootstrap = ConfigDict(dict(num_resamples=10000, seed=0, confidence=0.95))
  config.quick = False                  # apply quick_settings: a few-minute run of the whole pipeline
  # The StyleGAN2 prior: the shipped weights, or (retrain_prior=True) one trained with `gan` into workdir/prior.
  config.prior = "converted_weights/mnist32_stylegan2"
  config.retrain_prior = False
  config.gan = gan_digits.get_config()

  config.target = digits.get_config("slim")  # targets: seed and label_smoothing are set per run

  config.evaluation_model = digits.get_config()  # another architecture than the targets, trained once
  config.evaluation_model.model.arch = "densenet121"
  config.evaluation_model.model.builder_kwargs.growth_rate = 8  # slim DenseNet-121
  config.evaluation_model.model.builder_kwargs.num_init_features = 16
  config.evaluation_model.num_epochs = 10
  config.evaluation_model.optimizer.lr_decay_epochs = (8,)
  config.evaluation_model.seed = 1234

  config.attack = attack_digits.get_config()  # seed, generator and target are set per run

  config.evaluate = evaluate_digits.get_config()  # evaluation_model, FID network and caches are set by the study
  _student_settings(config.evaluate)

  # jaxmia.membership (run_membership=True): target_workdir and lira.shadow_workdir are set by the study, whose
  # shadows are trained once, like the baseline-α target without a defense, and shared by every cell.
  config.membership = membership_digits.get_config()

  config.figure = ConfigDict()
  config.figure.samples_per_class = 5   # attack samples (and real images) per class in samples.png

  # Overrides applied when quick=True (same structure as the fields above).
  config.quick_settings = ConfigDict()
  quick = config.quick_settings
  quick.seeds = (0,)  # one seed: the sd columns read "no standard deviation"
  quick.target = digits.get_config("smoke")  # slim ResNet-18, 16 images per class, 2 epochs
  quick.evaluation_model = ConfigDict(dict(num_epochs=1, dataset=dict(samples_per_class=16), batch_size=32))
  quick.attack = ConfigDict(dict(
      targets="3",
      candidates=dict(search_space_size=40, num_candidates=4, batch_size=20),
      attack=dict(batch_size=12, num_steps=3),
      final_selection=dict(samples_per_target=2, iterations=2, batch_size=12),
      output=dict(images_per_class=2, image_size=32)))
  quick.evaluate = ConfigDict(dict(batch_size=16, knowledge_extraction=dict(num_epochs=1, batch_size=16)))
  quick.figure = ConfigDict(dict(samples_per_class=2))
  return config
