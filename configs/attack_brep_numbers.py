"""BREP-MI, the label-only attack, on the embedded 100-class numbers target (no download).

    python -m jaxmia.train --config=configs/numbers.py --workdir=runs/numbers
    python -m jaxmia.attack --config=configs/attack_brep_numbers.py --workdir=runs/brep_numbers
    python -m jaxmia.evaluate --config=configs/evaluate_digits.py --run_dir=runs/brep_numbers  # + numbers fields

The attacker sees only the target's predicted labels (`jaxmia.attack.brep`). The prior is the shipped
`converted_weights/numbers2_stylegan2` (two digits of the digit prior side by side); the search moves one w
`[1, 128]` of it per latent. The search settings are the official BREP-MI defaults (`config2.yaml` of
m-kahla/Label-Only-Model-Inversion-Attacks-via-Boundary-Repulsion), except the budget `max_iterations`: every
iteration renders and labels 33 images per latent, 5-30 ms each on the shared 2-core host (6.5 ms measured on a
lightly loaded host, ~30 ms beside the study), so 100 classes take ~20-100 s per iteration there, and the 100
iterations below ~0.6-2.8 h; the official search (up to 1,000 moves at each radius) would take days. Some
numbers are rarely drawn by the prior: a probe with the pilot target (runs/numbers_pilot, α = 0) found no
starting point for 2 of 4 classes in 3,000 draws, hence 20,000 here; classes without one are reported
(`summary.json`: classes_without_start) and count as failures in the evaluation.
`:smoke` is a seconds-long pipeline check (3 classes, 2 restarts, 4 iterations).
"""
import ml_collections
from ml_collections import config_dict


def get_config(arg=None) -> ml_collections.ConfigDict:
  """`arg`: None for the numbers attack, 'smoke' for a few-second pipeline check."""
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown BREP-MI config variant {arg!r}; use no variant or ':smoke'.")
  config = ml_collections.ConfigDict()
  config.kind = "brep"            # the attack: 'ppa' (Plug & Play, the default) or 'brep' (label-only BREP-MI)
  config.seed = 42                # seeds the starting points and every latent's sphere samples
  config.generator = "converted_weights/numbers2_stylegan2"  # "" = the seeded random_generator below
  config.random_generator = ml_collections.ConfigDict(dict(  # NVlabs Generator kwargs of the seeded random prior
      z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
      synthesis_kwargs=dict(channel_base=2048, channel_max=64)))
  config.target = "runs/numbers/model"  # what configs/numbers.py exports (slim ResNet-18, 100 classes, 32x32)
  config.targets = "all"          # "all", "N" (the first N classes) or a list of classes, e.g. "[0, 7, 42]"
  # A workdir holding an attack with other settings (run.json): False stops with the differing fields; True
  # deletes that attack's outputs (its evaluation included) and starts fresh. Same settings: resumed either way.
  config.overwrite = False

  # Starting points: random latents of the prior, drawn (seeded) until each class has one the target labels so.
  config.candidates = ml_collections.ConfigDict()
  config.candidates.search_space_size = 20000  # at most this many random latents (one target query each)
  config.candidates.batch_size = 100    # global batch for labelling them (divisible by the device count)
  config.candidates.truncation_psi = 1.0  # StyleGAN2 truncation of the drawn w (1: none, as the digits attacks)
  config.candidates.truncation_cutoff = config_dict.placeholder(int)  # None: truncate all ws

  config.attack = ml_collections.ConfigDict()
  # How a point becomes the target's input (also read by jaxmia.evaluate): generator image -> clamp -> crop -> resize.
  config.attack.center_crop = 32        # numbers are centred: no crop
  config.attack.resize = 32             # the target's input size
  config.attack.clamp = True            # clamp images to [-1, 1] (a label-only attacker submits valid images)
  config.attack.dtype = "float32"       # compute dtype of generator and target: 'float32' or 'bfloat16'
  # XLA:CPU compilation of the attack's core: 'step' as the training and PPA steps (faster at the official 64x64
  # shapes on an Intel Xeon, docs/speed.md), 'default' XLA's own choices (configs/lowres_study.py's cells ran so)
  config.attack.xla_cpu_options = "step"
  config.attack.batch_size = 20         # latents searched together (one resume unit; divisible by the devices)
  config.attack.single_w = True         # search one w per image (broadcast to all layers); False = W+
  config.attack.restarts = 1            # latents per class, each from its own start (official: 1)
  config.attack.iterations_per_call = 10  # iterations per jitted call (a progress line at most every 30 s)
  # The search (jaxmia.attack.brep.BrepSettings); official values unless noted.
  config.attack.sphere_points = 32      # points on the sphere per iteration
  config.attack.initial_radius = 2.0    # starting sphere radius
  config.attack.radius_expansion = 1.3  # radius growth factor
  config.attack.expansion_fraction = 0.75  # grow when more than this fraction of the sphere is in the class
  config.attack.step_size_ratio = 1 / 3  # step size = min(radius * ratio, max_step_size)
  config.attack.max_step_size = 3.0
  config.attack.max_iterations_at_radius = 1000  # stop after this many accepted moves without a radius growth
  config.attack.max_iterations = 100    # budget (not official): sphere samplings per latent, 33 queries each
  config.attack.max_queries = 0         # budget: target queries per latent (0: none besides max_iterations)
  config.attack.max_radius = 0.0        # stop once the radius exceeds this (0: none, as the official code)
  config.attack.repulsion_only = True   # only sphere points outside the class move the point
  config.attack.point_clamp = ()        # (low, high) clamp of the moved point; the official +-1.5 is for z, not w
  config.attack.sphere_points_per_call = 0  # memory: sphere points per latent per target call (0: all; same result)

  config.output = ml_collections.ConfigDict()
  config.output.images_per_class = 0   # images in each class's grid (0: no grids; 100 classes)
  config.output.image_size = 32         # pixel size of each grid image

  if arg == "smoke":
    config.targets = "3"
    config.candidates.search_space_size = 64
    config.candidates.batch_size = 16
    config.attack.batch_size = 4
    config.attack.restarts = 2
    config.attack.max_iterations = 4
    config.attack.iterations_per_call = 2
    config.output.images_per_class = 2
  return config
