"""Membership inference against a digits target (`jaxmia.train --config=configs/digits.py --workdir=runs/digits`):

    python -m jaxmia.membership --config=configs/membership_digits.py --workdir=runs/membership_digits

Members: the target's 2,000 training digits; non-members: its 500 test digits. The loss / confidence threshold
attacks, offline LiRA with shadows trained like the target on 2,000 of the 2,500 public digits (kept in
`<workdir>/shadows`, reused by reruns), and DtC on 200 members and 200 non-members. Any trained jaxmia target
works: point `target_workdir` at its `jaxmia.train` workdir (`config.json` and `model/`), e.g.
`--config.target_workdir=runs/numbers`. `:smoke` is a seconds-long variant for tests (give it a smoke target).
"""
from ml_collections import ConfigDict


def get_config(arg=None):
  """`arg`: None for the full evaluation, 'smoke' for the tiny test variant."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown membership variant {arg!r}; use configs/membership_digits.py[:smoke].")
  config = ConfigDict()
  config.target_workdir = "runs/digits"  # the target's jaxmia.train workdir (config.json, model/)
  config.seed = 0  # subsampling of the examples and of each shadow's public subset
  config.max_examples = 0  # members and non-members evaluated per group (0: all)
  config.batch_size = 100  # inference batch
  config.fprs = (0.001, 0.01)  # false positive rates at which the TPR is reported
  config.lira = ConfigDict()
  config.lira.num_shadows = 4  # OUT shadow models (0: no LiRA)
  config.lira.shadow_train_size = 0  # public examples per shadow (0: as many as the target's training set)
  config.lira.global_variance = True  # one pooled sigma for all examples (Carlini et al. with few shadows)
  config.lira.shadow_workdir = ""  # where the shadows are trained and kept ('': <workdir>/shadows)
  config.dtc = ConfigDict()
  config.dtc.max_examples = 200  # DtC on this many members and as many non-members (0: no DtC)
  config.dtc.threshold = 0.5  # 'confident': another class reaches this probability (0.5: it is the unique top)
  config.dtc.norm = "l2"  # 'l2' | 'linf', in the model's [-1, 1] input space
  config.dtc.max_radius = 16.0  # largest radius searched; farther examples count as not found (inf)
  config.dtc.num_bisections = 10  # radius resolution max_radius / 2**num_bisections
  config.dtc.num_steps = 20  # projected gradient steps per radius
  config.dtc.step_size = 2.5  # each step moves step_size * radius / num_steps (Madry et al.'s 2.5)
  config.dtc.batch_size = 50  # examples searched together
  if arg == "smoke":
    config.target_workdir = "runs/digits_smoke"
    config.max_examples = 48
    config.batch_size = 16
    config.lira.num_shadows = 1
    config.dtc.max_examples = 8
    config.dtc.num_bisections = 4
    config.dtc.num_steps = 3
    config.dtc.batch_size = 8
  return config
