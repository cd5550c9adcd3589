"""The train → attack → evaluate chain of one target, as resumable stages (used by the study and the sweep).

A `Stage` is done when its output file exists, so a plan of stages is rerun by skipping what is done; the
stages resume mid-way themselves (training from its checkpoint, the attack per batch). `run_stages` runs a
plan with progress and an ETA from the mean time of each finished stage kind.

    stages = target_chain("α = 0.1", train_config, root / "target", attack_config, root / "attack", eval_config)
    timings = run_stages(stages)
"""
import copy
import dataclasses
import pathlib
import time
from typing import Callable

from absl import logging
import numpy as np

from jaxmia import evaluate, model_store, progress, report, train
from jaxmia.attack import run as attack_run


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str                      # "<kind> (<label>)"
  outputs: pathlib.Path          # exists when the stage is done
  run: Callable[[], object]

  @property
  def kind(self) -> str:
    return self.name.split(" (")[0]


def exported_model_info(folder: pathlib.Path) -> pathlib.Path:
  """The file that exists once a weights folder has been written completely."""
  return folder / model_store.INFO_FILE


def evaluation_report(attack_dir: pathlib.Path) -> pathlib.Path:
  return attack_dir / report.EVALUATION_DIR / report.REPORT_FILE


def target_stage(label: str, train_config, train_dir: pathlib.Path) -> Stage:
  """Trains a target in `train_dir` (done once `train_dir/model` is exported)."""
  train_dir = pathlib.Path(train_dir)
  return Stage(f"target ({label})", exported_model_info(train_dir / "model"),
               lambda: train.train_and_evaluate(train_config, train_dir))


def attack_stage(label: str, attack_config, attack_dir: pathlib.Path, kind: str = "attack") -> Stage:
  """Runs `jaxmia.attack` in `attack_dir` (done once its summary.json is written)."""
  attack_dir = pathlib.Path(attack_dir)
  return Stage(f"{kind} ({label})", attack_dir / "summary.json",
               lambda: attack_run.run_attack(attack_config, attack_dir))


def evaluation_stage(label: str, evaluate_config, attack_dir: pathlib.Path, kind: str = "evaluation") -> Stage:
  """Evaluates the attack in `attack_dir` (done once its evaluation/report.json is written)."""
  attack_dir = pathlib.Path(attack_dir)
  return Stage(f"{kind} ({label})", evaluation_report(attack_dir),
               lambda: evaluate.evaluate_attack(evaluate_config, attack_dir))


def target_chain(label: str, train_config, train_dir: pathlib.Path, attack_config, attack_dir: pathlib.Path,
                 evaluate_config) -> list[Stage]:
  """Stages that train a target in `train_dir`, attack its exported model and evaluate the attack.

  The attack's `target` is set to `train_dir/model`; the configs are copied, the callers' are not changed.
  """
  attack_config = copy.deepcopy(attack_config)
  attack_config.target = str(pathlib.Path(train_dir) / "model")
  return [target_stage(label, train_config, train_dir), attack_stage(label, attack_config, attack_dir),
          evaluation_stage(label, evaluate_config, attack_dir)]


def remaining_seconds(todo: list[Stage], durations: dict[str, float]) -> float:
  """ETA of `todo`: each stage costs the mean duration of finished stages of its kind (else of all stages)."""
  by_kind: dict[str, list[float]] = {}
  for name, seconds in durations.items():
    by_kind.setdefault(name.split(" (")[0], []).append(seconds)
  overall = float(np.mean(list(durations.values()))) if durations else 0.0
  return sum(float(np.mean(by_kind[s.kind])) if s.kind in by_kind else overall for s in todo)


def run_stages(plan: list[Stage], what: str = "Study") -> dict[str, float]:
  """Runs the stages of `plan` whose outputs are missing, in order; returns `{stage name: seconds}`."""
  todo = [stage for stage in plan if not stage.outputs.exists()]
  for stage in plan:
    if stage.outputs.exists():
      logging.info("%s: %s already done (%s).", what, stage.name, stage.outputs)
  report_progress = progress.Progress(len(plan), unit="stages", what=what, every_secs=0)
  report_progress(len(plan) - len(todo))
  timings, started = {}, time.monotonic()
  for i, stage in enumerate(todo):
    logging.info("%s: stage %d/%d: %s.", what, len(plan) - len(todo) + i + 1, len(plan), stage.name)
    t0 = time.monotonic()
    stage.run()
    timings[stage.name] = time.monotonic() - t0
    logging.info("%s: %s done in %.0f s (%.0f s so far, about %.0f s to go).", what, stage.name,
                 timings[stage.name], time.monotonic() - started, remaining_seconds(todo[i + 1:], timings))
    report_progress(len(plan) - len(todo) + i + 1)
  return timings
