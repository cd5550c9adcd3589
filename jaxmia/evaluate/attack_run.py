"""The parts of a finished attack run that the evaluation reads: a `jaxmia.attack` run (`latents.npz`,
`summary.json`), or PPA's own result file `optimized_w_selected_<run id>.pt` (`load_ppa_results`)."""
import dataclasses
import json
import pathlib

import numpy as np

from jaxmia import model_store
from jaxmia.attack.run import resolve_targets
from jaxmia.convert import torch_reader


@dataclasses.dataclass(frozen=True)
class AttackRun:
  """The parts of a finished attack run the evaluation reads."""
  run_dir: pathlib.Path
  config: dict               # the attack config (summary.json)
  targets: np.ndarray        # int [N]: target class of each optimised latent
  optimized_w: np.ndarray    # [N, 1 or num_ws, w_dim]
  selected: np.ndarray       # int [M]: rows of optimized_w kept by the final selection
  initial_w: np.ndarray | None = None  # [N, ...]: stage 1's starting latents (None in runs that lack them)

  @property
  def selected_w(self) -> np.ndarray:
    return self.optimized_w[self.selected]

  @property
  def selected_targets(self) -> np.ndarray:
    return self.targets[self.selected]


def load_attack_run(run_dir) -> AttackRun:
  """Reads `latents.npz` and `summary.json` of a finished `jaxmia.attack` run."""
  run_dir = pathlib.Path(run_dir)
  latents_path, summary_path = run_dir / "latents.npz", run_dir / "summary.json"
  for path in (latents_path, summary_path):
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished attack run. Run (or resume) "
                              f"`python -m jaxmia.attack --workdir={run_dir}` to the end first.")
  with np.load(latents_path) as f:
    missing = {"targets", "optimized_w", "selected_indices"} - set(f.files)
    if missing:
      raise ValueError(f"{latents_path} lacks {sorted(missing)}; it was not written by jaxmia.attack.")
    targets, optimized_w, selected = (np.asarray(f["targets"], np.int32), np.asarray(f["optimized_w"], np.float32),
                                      np.asarray(f["selected_indices"], np.int64))
    initial_w = np.asarray(f["initial_w"], np.float32) if "initial_w" in f.files else None
  if initial_w is not None and initial_w.shape != optimized_w.shape:
    initial_w = None  # e.g. W+ starting latents broadcast differently: leave stage 1 unscored
  if optimized_w.ndim != 3 or len(optimized_w) != len(targets) or not len(selected) or (
      selected.min() < 0 or selected.max() >= len(targets)):
    raise ValueError(f"{latents_path} is inconsistent: optimized_w {optimized_w.shape}, targets {targets.shape}, "
                     f"{len(selected)} selected indices; rerun the attack's final stage.")
  config = json.loads(summary_path.read_text()).get("config")
  if not isinstance(config, dict) or "attack" not in config:
    raise ValueError(f"{summary_path} holds no attack config; it was not written by jaxmia.attack.")
  return AttackRun(run_dir, config, targets, optimized_w, selected, initial_w)


def ppa_class_order(targets) -> list[int]:
  """The order of the class blocks in PPA's selected latents: its final selection walks `set(targets)` (the
  attack's target of each latent), i.e. CPython's set order — ascending for 'all' and for sorted class lists
  below the set's table size, but not always (a set of {2, 9} iterates 9, 2)."""
  return list(set(np.asarray(targets).tolist()))


def load_ppa_results(path, *, targets="all", generator: str, target: str, center_crop: int = 0,
                     resize: int = 224) -> AttackRun:
  """An `AttackRun` of PPA's `optimized_w_selected_<run id>.pt` (read without PyTorch), to evaluate as a run.

  The file holds only the latents, float32 `[M, 1 or num_ws, w_dim]`: class blocks of equal size in
  `ppa_class_order`, each best first. What PPA kept in its config is given here: `targets` (PPA's
  `attack.targets`: 'all', N for the first N classes, or a list such as '[0, 7, 42]'), the `generator` and
  `target` weights folders (the same networks, converted), the attack's `center_crop` (PPA's
  `attack_center_crop`; 0 = 800/1024 of the generator's resolution, PPA's FFHQ setting) and `resize` (PPA's
  `attack_resize`, the target's input size). Every latent counts as selected. `run_dir` is the file's path
  without `.pt`, the folder its evaluation is written to (so `jaxmia.report` finds it like a run's).
  """
  path = pathlib.Path(path)
  if not generator or not target:
    raise ValueError(f"{path}: a PPA result file names no networks; set the evaluation config's generator and "
                     "target (--config.generator=WEIGHTS --config.target=WEIGHTS, converted with jaxmia.convert).")
  w = torch_reader.load_torch_file(path)
  if not (isinstance(w, np.ndarray) and w.ndim == 3 and w.dtype.kind == "f" and len(w)):
    raise ValueError(f"{path} is not PPA's optimized_w_selected_*.pt: it holds "
                     f"{torch_reader.describe_value(w if not isinstance(w, np.ndarray) else (w.dtype, w.shape))}, "
                     "not one float tensor [M, 1 or num_ws, w_dim].")
  num_classes = model_store.read_info(target)["module_kwargs"].get("num_classes")
  if num_classes is None:
    raise ValueError(f"{target} is not a classifier with a head (num_classes); set --config.target to the "
                     "attacked model.")
  classes = ppa_class_order(resolve_targets(targets, int(num_classes)))
  per_class, left = divmod(len(w), len(classes))
  if left or not per_class:
    raise ValueError(f"{path} holds {len(w)} latents, not the same number for each of the {len(classes)} target "
                     f"classes of targets={targets!r}; give PPA's attack.targets of that run.")
  config = {"generator": generator, "target": target, "targets": targets,
            "attack": {"center_crop": int(center_crop), "resize": int(resize)}, "ppa_results": str(path)}
  return AttackRun(run_dir=path.with_suffix(""), config=config, targets=np.repeat(classes, per_class).astype(np.int32),
                   optimized_w=np.asarray(w, np.float32), selected=np.arange(len(w)))
