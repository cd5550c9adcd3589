"""Hardening (issue 17): resume fingerprints, interrupted exports, unreadable checkpoints and cached stage files,
config validation before any state is written, and the one-line `error:` path of the command-line programs.

Training runs use `configs/digits.py:smoke` (5 steps per epoch, 2 epochs); attacks a tiny StyleGAN2 and
ResNet-18 saved as weights folders; the command-line cases run the programs in a child process.
"""
import json
import logging
import os
import subprocess

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_program, start_program, with_overrides
from jaxmia import classifier, cli, files, gan, models, provenance, train
from jaxmia.attack import optimize
from jaxmia.attack import run as attack_run
from jaxmia.config import load_file
from jaxmia import model_store
from jaxmia.data import builders
from jaxmia.models.stylegan2 import Generator


def config_of(module, variant="smoke", **overrides):
  return with_overrides(load_file(REPO / "configs" / f"{module}.py").get_config(variant), **overrides)


def warnings_of(caplog) -> str:
  return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# ------------------------------------------------------------------------------------------------------------
# Training: the resume fingerprint, an interrupted export, an unreadable newest checkpoint.

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  state, _ = train.train_and_evaluate(config_of("digits"), workdir)
  return workdir, jax.device_get(state.params)


def test_training_resume_checks_the_fingerprint(uninterrupted, tmp_path):
  _, params = uninterrupted
  train.train_and_evaluate(config_of("digits", max_steps=3), tmp_path)
  config_json = (tmp_path / "config.json").read_bytes()
  for change, field in (({"label_smoothing": 0.1}, "label_smoothing: 0.0 -> 0.1"), ({"seed": 1}, "seed: 42 -> 1")):
    with pytest.raises(ValueError, match=f"different settings \\({field}\\).*--config.overwrite=True"):
      train.train_and_evaluate(config_of("digits", **change), tmp_path)
    assert (tmp_path / "config.json").read_bytes() == config_json  # nothing was rewritten
  state, _ = train.train_and_evaluate(config_of("digits"), tmp_path)  # same settings: resumed to the end
  chex.assert_trees_all_equal(jax.device_get(state.params), params)
  # A finished workdir is no different: another α or seed is refused, nothing is rewritten.
  config_json = (tmp_path / "config.json").read_bytes()
  with pytest.raises(ValueError, match="label_smoothing: 0.0 -> -0.05"):
    train.train_and_evaluate(config_of("digits", label_smoothing=-0.05), tmp_path)
  assert (tmp_path / "config.json").read_bytes() == config_json
  # ... unless told to start fresh: the old run's outputs go, anything else in the folder stays.
  (tmp_path / "notes.txt").write_text("mine")
  state, _ = train.train_and_evaluate(config_of("digits", label_smoothing=-0.05, max_steps=1, overwrite=True),
                                      tmp_path)
  assert int(state.step) == 1 and not (tmp_path / "model").exists()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
  assert json.loads((tmp_path / "run.json").read_text())["config"]["label_smoothing"] == -0.05
  assert (tmp_path / "notes.txt").read_text() == "mine"


def test_fingerprint_leaves_out_presentation_fields_and_covers_weights_and_data():
  config = config_of("digits")
  changed = config_of("digits", max_steps=3, checkpoint_every_steps=2, overwrite=True,
                      **{"dataset.data_dir": "/elsewhere"})
  assert train.config_without(config, train.NOT_IN_FINGERPRINT) == train.config_without(
      changed, train.NOT_IN_FINGERPRINT)
  assert "init_weights" not in train.config_without(config, train.NOT_IN_FINGERPRINT)  # its digest stands for it
  a = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  b = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) + np.float32(1e-7)}}
  assert files.tree_digest(a) == files.tree_digest({"params": {"w": a["params"]["w"].copy()}})
  assert files.tree_digest(a) != files.tree_digest(b)
  assert files.tree_digest(a) != files.tree_digest({"params": {"w": a["params"]["w"].reshape(3, 2)}})


def test_interrupted_export_is_redone_on_rerun(uninterrupted):
  """A kill while `model/` was written in place (jaxmia < this change) left orbax's temporary folder and no
  jaxmia.json: every rerun used to stop with "not a jaxmia weights folder". Now the rerun exports again."""
  workdir, params = uninterrupted
  model = workdir / "model"
  for path in sorted(model.rglob("*"), reverse=True):
    if path.is_file():
      path.unlink()
    else:
      path.rmdir()
  (model / "variables.orbax-checkpoint-tmp-1712").mkdir()
  (model / "variables.orbax-checkpoint-tmp-1712" / "half_written").write_bytes(b"\0" * 100)
  (workdir / "model.jaxmia-partial").mkdir()  # and a partial sibling of the new way of saving
  train.train_and_evaluate(config_of("digits"), workdir)
  _, variables = model_store.load_model(model)
  chex.assert_trees_all_equal(variables["params"], params)
  assert sorted(p.name for p in model.iterdir()) == ["jaxmia.json", "variables"]
  assert not (workdir / "model.jaxmia-partial").exists()


def test_unreadable_newest_checkpoint_is_skipped(uninterrupted, tmp_path, caplog):
  _, params = uninterrupted
  train.train_and_evaluate(config_of("digits", max_steps=7), tmp_path)  # checkpoints at 5 (epoch) and 7 (stop)
  checkpoints = tmp_path / "checkpoints"
  assert sorted(p.name for p in checkpoints.iterdir()) == ["5", "7"]  # the newest two are kept
  for path in (checkpoints / "7").rglob("*"):
    if path.is_file() and path.stat().st_size > 64:
      os.truncate(path, path.stat().st_size // 2)
  with caplog.at_level(logging.WARNING):
    state, _ = train.train_and_evaluate(config_of("digits"), tmp_path)
  assert f"Checkpoint {checkpoints / '7'} is unreadable" in warnings_of(caplog)
  chex.assert_trees_all_equal(jax.device_get(state.params), params)  # resumed from step 5
  assert (checkpoints / "7.unreadable").is_dir()  # kept for inspection, ignored by orbax


def test_model_is_exported_after_best_model(tmp_path, monkeypatch):
  """A complete `model/` marks a finished training (`chain` skips it in a study), so it is exported last: a run
  killed between the two exports is rerun, not taken as finished without its best_model."""
  exported, save_model = [], model_store.save_model
  monkeypatch.setattr(model_store, "save_model",
                      lambda path, *args, **kwargs: exported.append(path.name) or save_model(path, *args, **kwargs))
  train.train_and_evaluate(config_of("digits", **{"dataset.validation_fraction": 0.2}), tmp_path)
  assert exported == ["best_model", "model"]


def test_training_config_is_validated_before_anything_is_written(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"config.label_smoothing=1.5 must be a finite number <= 1"):
    train.train_and_evaluate(config_of("digits", label_smoothing=1.5), workdir)
  bad = config_of("digits", num_epochs=0, **{"optimizer.b2": 1.0, "augment.crop_scale": (0.9, 0.5)})
  with pytest.raises(ValueError) as error:
    train.validate_config(bad)
  message = str(error.value)
  assert "\n" not in message
  for field in ("config.num_epochs=0", "config.optimizer.b2=1.0", "config.augment.crop_scale=(0.9, 0.5)"):
    assert field in message
  assert not workdir.exists()
  for alpha in (1.5, float("nan"), float("inf")):  # the library refuses them too, also for jitted use
    with pytest.raises(ValueError, match="<= 1"):
      classifier.smoothing_schedule(alpha, 10, "ppa")
  for alpha in (1.0, 0.1, 0.0, -0.05, -2.0):  # the rule: any finite α <= 1
    train.validate_config(config_of("digits", label_smoothing=alpha))
    classifier.smoothing_schedule(alpha, 10, "ppa")
  (tmp_path / "file").write_text("")
  with pytest.raises(NotADirectoryError, match="is a file"):
    train.train_and_evaluate(config_of("digits"), tmp_path / "file")


def test_gan_config_is_validated():
  gan.validate_config(config_of("gan_digits"))
  with pytest.raises(ValueError) as error:
    gan.validate_config(config_of("gan_digits", resolution=48, style_mixing_prob=1.5, r1_interval=0))
  for field in ("config.resolution=48", "config.style_mixing_prob=1.5", "config.r1_interval=0"):
    assert field in str(error.value)


def test_run_record_rules(tmp_path, caplog):
  """`files.check_run_record`: a run without state never blocks; a workdir of an older jaxmia (no record, or
  run.json in the old format) is compared on what it recorded and adopted; overwrite deletes only outputs."""
  check = lambda record, **kw: files.check_run_record(
      tmp_path, {"config": record}, program="p", state=("state.npz",), outputs=("state.npz", "out"), **kw)
  assert check({"seed": 1}, overwrite=False) is False
  assert check({"seed": 2}, overwrite=False) is False  # nothing started: the record is simply replaced
  assert json.loads((tmp_path / "run.json").read_text())["config"] == {"seed": 2}
  (tmp_path / "state.npz").write_bytes(b"")
  assert check({"seed": 2}, overwrite=False) is True
  with pytest.raises(ValueError, match=r"holds a p run with different settings \(seed: 2 -> 3\)"):
    check({"seed": 3}, overwrite=False)
  # Older jaxmia: run.json held the settings themselves; compared on the fields it has, then upgraded.
  (tmp_path / "run.json").write_text(json.dumps({"seed": 2, "attack": {"steps": 5}, "target": "a/model"}))
  with pytest.raises(ValueError, match=r"attack.steps: 5 -> 6"):
    check({"seed": 2, "attack": {"steps": 6}}, overwrite=False)
  with caplog.at_level(logging.WARNING):
    assert check({"seed": 2, "attack": {"steps": 5}, "new_field": 1}, overwrite=False) is True
  assert "without a resume record" in warnings_of(caplog)
  assert json.loads((tmp_path / "run.json").read_text())["version"] == files.RUN_RECORD_VERSION
  # ... or none at all, with the config it wrote beside its state.
  (tmp_path / "run.json").unlink()
  with pytest.raises(ValueError, match="seed: 1 -> 2"):
    check({"seed": 2}, overwrite=False, legacy={"seed": 1, "max_steps": 3})
  assert check({"seed": 1}, overwrite=False, legacy={"seed": 1, "max_steps": 3}) is True  # adopted
  (tmp_path / "out").mkdir()
  (tmp_path / "keep.txt").write_text("")
  assert check({"seed": 4}, overwrite=True) is False  # a run with other settings: deleted, started fresh
  assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "provenance.json", "run.json"]
  assert len(provenance.read(tmp_path)) == 1  # the deleted run's history went with it; this start is recorded


# ------------------------------------------------------------------------------------------------------------
# The attack: validation before run.json, weights digests, unreadable cached stage files.

GENERATOR = dict(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 1},
                 synthesis_kwargs={"channel_base": 32, "channel_max": 4})
TARGET = dict(arch="resnet18", num_classes=3, base_channels=4)


def save_target(folder, seed):
  target = models.create_classifier(**TARGET)
  variables = target.init(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))
  return model_store.save_model(folder, variables, kind="classifier", module_kwargs=TARGET, overwrite=True)


@pytest.fixture(scope="module")
def attack_weights(tmp_path_factory):
  folder = tmp_path_factory.mktemp("attack_weights")
  generator = Generator(**GENERATOR)
  model_store.save_model(folder / "generator", generator.init(jax.random.key(0), jnp.zeros((1, 4)), None),
                         kind="stylegan2_generator", module_kwargs=GENERATOR)
  save_target(folder / "target", seed=1)
  return folder


def attack_config(weights):
  config = config_of("attack_facescrub_ffhq", seed=3, targets="[1, 2]", generator=str(weights / "generator"),
                     target=str(weights / "target"))
  config.candidates.update(search_space_size=8, num_candidates=4, batch_size=4)
  config.attack.update(batch_size=4, num_steps=2, resize=16)  # resize: shared by all stages
  config.final_selection.update(iterations=2, batch_size=4, samples_per_target=2)
  config.output.images_per_class = 0
  return config


def counting(monkeypatch):
  calls, real = [], optimize.optimize_latents

  def counted(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(optimize, "optimize_latents", counted)
  return calls


def test_attack_resume_checks_weights_and_recomputes_unreadable_stage_files(attack_weights, tmp_path, monkeypatch,
                                                                            caplog):
  workdir = tmp_path / "attack"
  # A failing run writes nothing, so the corrected rerun is not blocked by it.
  for bad, match in ((dict(target=str(tmp_path / "missing")), "Target model not found"),
                     (dict(targets="[1, 7]"), r"targets=\[1, 7\]")):
    config = attack_config(attack_weights)
    config.update(bad)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
      attack_run.run_attack(config, workdir)
    assert not workdir.exists()
  config = attack_config(attack_weights)
  attack_run.run_attack(config, workdir)
  with np.load(workdir / "latents.npz") as f:
    expected = {name: f[name] for name in f.files}
  record = json.loads((workdir / "run.json").read_text())
  assert record["weights"]["generator"] and record["weights"]["target"] and "target" not in record["config"]

  # Same settings and weights: resumed, nothing optimised again.
  calls = counting(monkeypatch)
  attack_run.run_attack(config, workdir)
  assert not calls

  # Truncated cached stage files are named and recomputed to the same result.
  batch = workdir / "stage2" / "batch_00001.npz"
  os.truncate(batch, batch.stat().st_size // 2)
  os.truncate(workdir / "initial.npz", 100)
  with caplog.at_level(logging.WARNING):
    attack_run.run_attack(config, workdir)
  warned = warnings_of(caplog)
  assert f"{batch} is unreadable" in warned and f"{workdir / 'initial.npz'} is unreadable" in warned
  assert len(calls) == 1  # only the damaged batch
  with np.load(workdir / "latents.npz") as f:
    for name, value in expected.items():
      np.testing.assert_array_equal(f[name], value, err_msg=name)

  # Retrained target weights at the same path: refused, though the path is unchanged.
  save_target(attack_weights / "target", seed=2)
  try:
    with pytest.raises(ValueError, match=r"different settings \(weights.target: .*--config.overwrite=True"):
      attack_run.run_attack(config, workdir)
    with pytest.raises(ValueError, match=r"different settings \(seed: 3 -> 4; weights.target"):
      attack_run.run_attack(_with(attack_config(attack_weights), seed=4), workdir)
    summary = attack_run.run_attack(_with(attack_config(attack_weights), overwrite=True), workdir)
    assert summary["num_latents"] == 8 and len(calls) == 3  # started fresh: both batches optimised again
  finally:
    save_target(attack_weights / "target", seed=1)


def _with(config, **changes):
  config.update(changes)
  return config


def test_attack_config_is_validated(attack_weights):
  attack_run.validate_config(attack_config(attack_weights))
  config = attack_config(attack_weights)
  config.attack.b1 = 1.0
  config.final_selection.crop_scale = (0.0, 0.5)
  config.candidates.num_candidates = 0
  with pytest.raises(ValueError) as error:
    attack_run.validate_config(config)
  for field in ("config.attack.b1=1.0", "config.final_selection.crop_scale=(0.0, 0.5)",
                "config.candidates.num_candidates=0"):
    assert field in str(error.value)
  config = attack_config(attack_weights)
  config.candidates.num_candidates = 9  # more starting latents per class than the search space holds
  with pytest.raises(ValueError, match="search_space_size"):
    attack_run.validate_config(config)


# ------------------------------------------------------------------------------------------------------------
# Weights folders: leftovers of interrupted saves.

def test_save_model_recovers_from_interrupted_saves(tmp_path):
  variables = {"params": {"w": np.ones((2, 2), np.float32)}}
  # jaxmia's own leftovers are replaced, with or without overwrite ...
  for leftover in ("variables", "variables.orbax-checkpoint-tmp-99", None):
    folder = tmp_path / f"w_{leftover}"
    folder.mkdir()
    if leftover:
      (folder / leftover).mkdir()
      (folder / leftover / "data").write_bytes(b"\0")
    model_store.save_model(folder, variables, kind="classifier", module_kwargs={})
    np.testing.assert_array_equal(model_store.load_variables(folder)["params"]["w"], variables["params"]["w"])
  (tmp_path / "x.jaxmia-partial").mkdir()
  (tmp_path / "x.jaxmia-replaced").mkdir()
  model_store.save_model(tmp_path / "x", variables, kind="classifier", module_kwargs={})
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("x")) == ["x"]
  # ... but a folder with anything else is never deleted.
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "variables").mkdir()
  (tmp_path / "notes" / "todo.txt").write_text("keep")
  with pytest.raises(FileExistsError, match="not a jaxmia weights folder"):
    model_store.save_model(tmp_path / "notes", variables, kind="classifier", module_kwargs={}, overwrite=True)
  assert (tmp_path / "notes" / "todo.txt").read_text() == "keep"


# ------------------------------------------------------------------------------------------------------------
# Other corrupt inputs.

def test_truncated_stanford_dogs_annotation_is_named(tmp_path):
  annotation = tmp_path / "n02085620_7"
  annotation.write_text("<annotation><object><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax>"
                        "</bndbox></object></annotation>")
  assert builders.first_bounding_box(annotation) == (1, 2, 30, 40)
  annotation.write_text("<annotation><object><bndbox><xmin>1</xm")
  with pytest.raises(ValueError, match=f"Annotation {annotation} is not valid XML"):
    builders.first_bounding_box(annotation)
  annotation.write_text("<annotation><object><bndbox><xmin>1</xmin></bndbox></object></annotation>")
  with pytest.raises(ValueError, match=f"Annotation {annotation}: .* lacks"):
    builders.first_bounding_box(annotation)


# ------------------------------------------------------------------------------------------------------------
# The one error path of the command-line programs.

def test_user_errors_and_bugs_are_told_apart():
  def raised(function):
    try:
      function()
    except Exception as e:  # noqa: BLE001 (any exception, with its traceback)
      return e
    raise AssertionError("nothing raised")

  def fail(exc):
    raise exc

  setting = raised(lambda: train.validate_config(config_of("digits", batch_size=0)))  # raised by jaxmia
  assert cli.is_user_error(setting)
  assert cli.error_message(setting) == "error: config.batch_size=0 must be a positive integer."
  assert cli.is_user_error(raised(lambda: fail(FileNotFoundError(2, "No such file or directory", "x.pth"))))
  assert cli.error_message(raised(lambda: fail(PermissionError(13, "Permission denied", "runs/x")))) == \
      "error: runs/x: Permission denied"
  assert not cli.is_user_error(raised(lambda: fail(ValueError("x"))))  # not raised by jaxmia: a bug
  assert not cli.is_user_error(raised(lambda: np.zeros(2).reshape(3)))
  assert not cli.is_user_error(raised(lambda: fail(ZeroDivisionError())))


@pytest.mark.parametrize("args, message", [
    (["inspect", "{dir}/missing.pth"],
     "error: {dir}/missing.pth: no such file (expected a PyTorch .pt/.pth/.pkl file)"),
    (["classifier", "--arch=resnet18", "--num_classes=10", "--input={dir}/notes.txt", "--output={dir}/out"],
     "error: {dir}/notes.txt: LIST at byte 2 without a MARK; a corrupt pickle"),
    (["stylegan2", "--input={dir}/notes.txt", "--output={dir}/out"],
     "error: {dir}/notes.txt: LIST at byte 2 without a MARK; a corrupt pickle"),
    (["classifier", "--arch=resnet18", "--input={dir}/notes.txt", "--network=D"],
     "error: bad command line: python -m jaxmia.convert classifier takes no --network; needs --num_classes, --output."),
    (["convert"], "error: bad command line: unknown command 'convert'; usage: python -m jaxmia.convert "
                  "classifier|stylegan2|inspect (see --help)"),
])
def test_convert_bad_inputs_are_one_error_line_with_exit_code_2(args, message, tmp_path):
  (tmp_path / "notes.txt").write_text("hello\n")  # not a torch file
  with start_program("-m", "jaxmia.convert", *[a.format(dir=tmp_path) for a in args], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE) as proc:
    out, err = proc.communicate(timeout=600)
  assert proc.returncode == 2 and out == "" and "Traceback" not in err, err[-2000:]
  hint = f" (--verbose or {cli.TRACEBACK_ENV}=1 shows the traceback)"
  assert err.splitlines()[-1] == message.format(dir=tmp_path) + hint
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--config.label_smoothng=0.1"],
     "error: --config.label_smoothng=0.1: the config has no field 'label_smoothng'; did you mean 'label_smoothing'?"),
    (["--config.label_smoothing=1.5"], "error: config.label_smoothing=1.5 must be a finite number <= 1"),
    (["--workdir={file}"], "is a file, not a folder"),
])
def test_cli_user_errors_are_one_line_with_exit_code_2(args, message, tmp_path):
  (tmp_path / "file").write_text("")
  args = [a.format(file=tmp_path / "file") for a in args]
  workdir = [] if any(a.startswith("--workdir") for a in args) else [f"--workdir={tmp_path / 'run'}"]
  code, stderr = run_program("jaxmia.train", "--config=configs/digits.py:smoke", *workdir, *args)
  last = stderr.strip().splitlines()[-1]
  assert code == 2, stderr[-2000:]
  assert last.startswith("error: ") and message in last and "Traceback" not in stderr
  assert not (tmp_path / "run").exists()


_DIGITS_CONFIGS = ["--attack_config=configs/attack_digits.py:smoke", "--eval_config=configs/evaluate_digits.py"]


@pytest.mark.parametrize("args, message", [
    (["-m", "jaxmia.export"], "no command; usage: python -m jaxmia.export attack|classifier --flags (see --help)"),
    (["-m", "jaxmia.export", "attack"], "python -m jaxmia.export attack needs --run_dir."),
    (["-m", "jaxmia.config", "shwo", "configs/digits.py"],
     "got 'shwo configs/digits.py'; usage: python -m jaxmia.config show CONFIG_FILE[:ARG]"),
    (["scripts/stage_ablation.py", *_DIGITS_CONFIGS, "--model={dir}/a", "--model={dir}/b", "--label=a"],
     "give one --label per --model (2 models, 1 labels)."),
    (["scripts/sweep.py", "--train_config=configs/digits.py:smoke", *_DIGITS_CONFIGS, "--alphas=0.1,-0.05"],
     "--alphas must include 0, the reference of the advantages."),
    (["scripts/gradient_stability.py", _DIGITS_CONFIGS[0], "--model={dir}/a", "{dir}/b"],
     "unexpected arguments '{dir}/b'; this program takes only --flags (see --help)."),
])
def test_programs_and_scripts_report_bad_command_lines_in_one_line(args, message, tmp_path):
  """The programs and scripts that check their command line after parsing it say what is wrong in the one
  `error: bad command line: ...` line (exit code 2, nothing written), as jaxmia.train and jaxmia.convert do, not
  with absl's full usage text."""
  with start_program(*[a.format(dir=tmp_path) for a in args], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE) as proc:
    out, err = proc.communicate(timeout=600)
  assert proc.returncode == 2 and out == "" and "Traceback" not in err, err[-2000:]
  hint = f" (--verbose or {cli.TRACEBACK_ENV}=1 shows the traceback)"
  assert err.splitlines()[-1] == "error: bad command line: " + message.format(dir=tmp_path) + hint
  assert "USAGE" not in err and list(tmp_path.iterdir()) == []


def test_cli_traceback_on_request_and_programs_still_on_app_run(tmp_path):
  # jaxmia.attack is started with absl's app.run: the handler cli installs gives it the same error path.
  args = ["--config=configs/attack_digits.py:smoke", f"--workdir={tmp_path / 'attack'}",
          f"--config.target={tmp_path / 'no_target'}"]
  code, stderr = run_program("jaxmia.attack", *args)
  assert code == 2 and "Traceback" not in stderr, stderr[-2000:]
  assert stderr.strip().splitlines()[-1].startswith("error: Target model not found")
  code, stderr = run_program("jaxmia.attack", *args, env={cli.TRACEBACK_ENV: "1"})
  assert code == 2 and "Traceback" in stderr and stderr.strip().splitlines()[-1].startswith("error: ")
  assert not (tmp_path / "attack").exists()
