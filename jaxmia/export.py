"""Results back to PyTorch, without PyTorch: `python -m jaxmia.export attack|classifier ...`.

    python -m jaxmia.export attack --run_dir=runs/attack_digits [--out_dir=runs/attack_digits/export]
    python -m jaxmia.export classifier --weights=runs/digits/model --output=digits_resnet18.pth [--layout=ppa]

`export_attack` writes a finished attack run as PPA writes its results (`.pt` files through
`convert.torch_writer`), and every selected image as a PNG file:

  init_w_<run>.pt                float32 [N, 1 or num_ws, w_dim]: stage 1's starting latents, in attack order
  optimized_w_<run>.pt           float32 [N, ...]: the optimised latents, in attack order (each target class
                                 repeated num_candidates times, PPA's `targets`)
  optimized_w_selected_<run>.pt  float32 [M, ...]: the kept latents in PPA's layout, equal class blocks in
                                 `evaluate.ppa_class_order`, each best first: what PPA's evaluation
                                 (`datasets/attack_latents.py`) and `jaxmia.evaluate --ppa_results` read
  targets_selected_<run>.pt      int64 [M]: the class of each selected latent (PPA infers it from the blocks)
  images/<class>/<rank>.png      every selected image: synthesis, clamp to [-1, 1], the attack's centre crop,
                                 resized to `image_size` when > 0; class folders are zero-padded class indices,
                                 so `torchvision.datasets.ImageFolder` reads them (its labels are folder ranks)

`export_classifier` writes a jaxmia classifier (trained or converted) as a PyTorch state dict: layout
`torchvision` (`torchvision.models.<arch>(num_classes=N).load_state_dict(torch.load(path))`) or `ppa` (the same
keys under `model.`, which PPA's `Classifier(num_classes, architecture=arch)` loads from an attack config's
`target_model.weights`). Its inputs are jaxmia's and PPA's: RGB scaled to [-1, 1], not ImageNet-normalised.
"""
import pathlib

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from jaxmia import cli, files, model_store, parallel
from jaxmia.attack import render
from jaxmia.attack import run as attack_run
from jaxmia.convert import classifiers, torch_writer
from jaxmia.evaluate.attack_run import AttackRun, load_attack_run, ppa_class_order

LAYOUTS = ("torchvision", "ppa")
PPA_PREFIX = "model."  # PPA's `Classifier` holds the torchvision network as `self.model`
EXPORT_DIR = "export"


def selected_in_ppa_order(run: AttackRun) -> np.ndarray:
  """Rows of `run.optimized_w` kept by the final selection, as PPA orders them: class blocks in
  `ppa_class_order`, each best first (jaxmia keeps each class's rows best first already)."""
  return np.concatenate([run.selected[run.selected_targets == c] for c in ppa_class_order(run.targets)])


def render_selected(run: AttackRun, rows: np.ndarray, *, image_size: int = 0, batch_size: int = 16,
                    generator: str = "") -> np.ndarray:
  """Images `[len(rows), S, S, C]` in [-1, 1] of latents `rows`: synthesis by the run's generator (or the
  weights folder `generator`), clamp, the attack's centre crop (S = its size), resize to `image_size` if > 0."""
  config = ml_collections.ConfigDict(run.config)
  if generator:
    config.generator = generator
  module, variables = attack_run.load_generator(config)
  crop = render.resolve_center_crop(int(run.config["attack"]["center_crop"]), module.img_resolution)
  size = int(image_size) or crop
  view = jax.jit(lambda v, w: render.target_view(render.synthesize(module, v, w).astype(np.float32), clamp=True,
                                                 center_crop=crop, resize=size))
  variables = jax.device_put(variables)
  return parallel.map_arrays(lambda w: view(variables, w), (run.optimized_w[rows],), batch_size)


def export_attack(run_dir, out_dir=None, *, image_size: int = 0, batch_size: int = 16, generator: str = "") -> dict:
  """Writes the attack run in `run_dir` in PPA's layout and as PNG files (module docstring) to `out_dir`
  (default `<run_dir>/export`); returns `{what: path}` of the files written."""
  run = load_attack_run(run_dir)
  out_dir = pathlib.Path(out_dir) if out_dir else run.run_dir / EXPORT_DIR
  name = run.run_dir.resolve().name
  rows = selected_in_ppa_order(run)
  images = render_selected(run, rows, image_size=image_size, batch_size=batch_size, generator=generator)
  if jax.process_index() != 0:
    return {}
  out_dir.mkdir(parents=True, exist_ok=True)
  written = {}
  tensors = {"optimized_w": run.optimized_w, "optimized_w_selected": run.optimized_w[rows],
             "targets_selected": run.targets[rows].astype(np.int64)}
  if run.initial_w is not None:
    tensors["init_w"] = run.initial_w
  for what, array in tensors.items():
    written[what] = out_dir / f"{what}_{name}.pt"
    torch_writer.save_torch_file(written[what], array)
  ranks = {}
  for image, cls in zip(images, run.targets[rows].tolist()):
    rank = ranks[cls] = ranks.get(cls, -1) + 1
    folder = out_dir / "images" / f"{cls:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    files.save_png(files.to_uint8(image), folder / f"{rank:03d}.png")
  written["images"] = out_dir / "images"
  logging.info("Exported %d selected latents and images of %d classes from %s to %s.", len(rows), len(ranks),
               run.run_dir, out_dir)
  return written


def export_classifier(weights, output, *, layout: str = "torchvision") -> dict[str, np.ndarray]:
  """Writes the classifier in the weights folder `weights` as a PyTorch state dict to `output` (`.pth`) in
  `layout` ('torchvision' or 'ppa', module docstring); returns the state dict written."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}; choose one of {', '.join(LAYOUTS)}.")
  info = model_store.read_info(weights)
  if info["kind"] != "classifier":
    raise ValueError(f"{weights} holds a {info['kind']!r}, not a classifier (kind 'classifier'); only "
                     "classifiers export to a torchvision state dict.")
  state = classifiers.classifier_to_torch(info["module_kwargs"]["arch"], model_store.load_variables(weights))
  if layout == "ppa":
    state = {PPA_PREFIX + key: value for key, value in state.items()}
  torch_writer.save_torch_file(output, state)
  logging.info("Exported %s (%s, %d tensors) to %s.", weights, layout, len(state), output)
  return state


# ----------------------------------------------------------------------------------------------- command line

_COMMANDS = {"attack": ("run_dir",), "classifier": ("weights", "output")}  # command -> its required flags


def _define_flags():
  flags.DEFINE_string("run_dir", None, "attack: the finished jaxmia.attack run to export.")
  flags.DEFINE_string("out_dir", None, f"attack: where to write; default <run_dir>/{EXPORT_DIR}.")
  flags.DEFINE_integer("image_size", 0, "attack: PNG size in pixels; 0 = the attack's centre crop, unresized.")
  flags.DEFINE_integer("batch_size", 16, "attack: latents rendered per jitted call.")
  flags.DEFINE_string("generator", "", "attack: weights folder of the generator; '' = the one the attack used.")
  flags.DEFINE_string("weights", None, "classifier: the jaxmia weights folder to export.")
  flags.DEFINE_string("output", None, "classifier: the .pth file to write.")
  flags.DEFINE_enum("layout", "torchvision", LAYOUTS, "classifier: state dict keys as torchvision's or PPA's.")


def main(argv):
  if len(argv) < 2 or argv[1] not in _COMMANDS:
    given = f"unknown command {argv[1]!r}" if len(argv) > 1 else "no command"
    raise flags.ValidationError(f"{given}; usage: python -m jaxmia.export {'|'.join(_COMMANDS)} --flags "
                                "(see --help)")
  command = argv[1]
  cli.start([argv[0], *argv[2:]])
  missing = [f"--{name}" for name in _COMMANDS[command] if not flags.FLAGS[name].value]
  if missing:
    raise flags.ValidationError(f"python -m jaxmia.export {command} needs {' and '.join(missing)}.")
  if command == "attack":
    written = export_attack(flags.FLAGS.run_dir, flags.FLAGS.out_dir, image_size=flags.FLAGS.image_size,
                            batch_size=flags.FLAGS.batch_size, generator=flags.FLAGS.generator)
    for what, path in written.items():
      print(f"{what}: {path}")
  else:
    export_classifier(flags.FLAGS.weights, flags.FLAGS.output, layout=flags.FLAGS.layout)
    print(f"classifier: {flags.FLAGS.output}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
