"""The parts of a finished `jaxmia.attack` run that the evaluation reads (`latents.npz`, `summary.json`)."""
import dataclasses
import json
import pathlib

import numpy as np


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
