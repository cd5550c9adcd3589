"""Defenses and membership inference beside label smoothing on the many-class numbers task (issue 21):

    python -m jaxmia.experiment --config=configs/defense_study.py --workdir=runs/numbers_study
    python -m jaxmia.experiment --config=configs/defense_study.py --workdir=runs/quick_defenses --config.quick=True

configs/numbers_study.py unchanged (its targets, prior, evaluation model and the attack protocol fixed by its α = 0
pilot), plus for every seed a MID, a BiDO-HSIC and a CALoR target trained at α = 0 with the settings of
`target.defense` (configs/faces.py: the official defaults), and a membership stage in every cell (jaxmia.membership
on all 3,000 members and 1,000 non-members: the loss and confidence threshold attacks, offline LiRA with 4 shadows
trained once like the α = 0 target without a defense on 3,000 public numbers and shared by every cell). DtC is off:
it is no column of the report and costs about one target training per cell (`--config.membership.dtc.max_examples=200`
turns it on). The α cells are the numbers study's (same configs, same paths), so run in the numbers study's workdir
this adds only the defense cells and the membership stages. `arg`: the number of digits, as in numbers_study.

A file of its own rather than a variant of numbers_study: numbers_study's argument is the digit count k (which
scripts/class_sweep.py passes), and a second axis in the same argument would multiply its variants; building on it
by path keeps the α protocol in one place, and `python -m jaxmia.config show configs/defense_study.py` lists what
this study changes.
"""
from ml_collections import ConfigDict

from jaxmia.config import sibling

membership_numbers = sibling(__file__, "membership_numbers")
numbers_study = sibling(__file__, "numbers_study")


def get_config(arg=None):
  """`arg`: the number of digits, '1', '2' (default) or '3' (set `--config.quick=True` for the small run)."""
  config = numbers_study.get_config(arg)
  config.defenses = ("mid", "bido", "calor")  # one target of each per seed, at baseline_alpha
  config.run_membership = True
  config.membership = membership_numbers.get_config()  # target_workdir and shadow_workdir: set per cell
  config.membership.dtc.max_examples = 0  # no DtC (not a column; about one target training per cell)

  quick = config.quick_settings  # numbers_study's quick run, plus the membership smoke settings
  quick.membership = ConfigDict(dict(max_examples=48, batch_size=16, lira=dict(num_shadows=1)))
  return config
