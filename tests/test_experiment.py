"""The end-to-end study (`jaxmia.experiment`): the numbers study in its quick form (report structure, finite
metrics in range, figures, a rerun that redoes nothing) and the report's statistics on constructed cells."""
import json
import math
import shutil

import numpy as np
from PIL import Image
import pytest

from conftest import REPO
from jaxmia import chain, experiment, model_store, provenance, report
from jaxmia.config import load_file

defense_study = load_file(REPO / "configs" / "defense_study.py")
digits_study = load_file(REPO / "configs" / "digits_study.py")
numbers_study = load_file(REPO / "configs" / "numbers_study.py")


def _quick_config():
  config = digits_study.get_config()
  config.quick = True
  return config


def test_cells_of_a_seed_differ_only_in_alpha(tmp_path):
  config = experiment.resolve(_quick_config())
  runs = experiment.cells(config, tmp_path)
  assert len(runs) == len(config.seeds) * len(config.alphas)
  for seed in config.seeds:
    targets = [experiment.target_config(config, c).to_dict() for c in runs if c.seed == seed]
    assert [t.pop("label_smoothing") for t in targets] == list(config.alphas)
    assert all(t == targets[0] and t["seed"] == seed for t in targets)


def test_eta_uses_the_mean_time_of_each_stage_kind():
  stage = lambda name: chain.Stage(name, None, None)
  done = {"evaluation model": 100.0, "target (seed 0, α = 0.1)": 30.0, "target (seed 0, α = 0)": 10.0,
          "attack (seed 0, α = 0.1)": 6.0}
  todo = [stage("target (seed 1, α = 0)"), stage("attack (seed 0, α = 0)"), stage("evaluation (seed 0, α = 0)")]
  # targets: mean 20; attacks: 6; evaluations not seen yet: the mean of all finished stages, 36.5.
  assert chain.remaining_seconds(todo, done) == 20.0 + 6.0 + 36.5


def test_unknown_baseline_is_refused():
  config = _quick_config()
  config.baseline_alpha = 0.2
  with pytest.raises(ValueError, match="baseline_alpha"):
    experiment.resolve(config)


def test_aggregate_means_and_sds_over_seeds(tmp_path):
  config = experiment.resolve(_quick_config())
  config.seeds = (0, 1, 2)
  rng = np.random.default_rng(0)
  values = {}
  for cell in experiment.cells(config, tmp_path):
    metrics = {key: float(rng.uniform()) for key in report.COLUMN_KEYS if key != "delta_face"}
    values[(cell.seed, cell.alpha)] = metrics
    out = cell.attack_dir / report.EVALUATION_DIR
    out.mkdir(parents=True)
    (out / report.REPORT_FILE).write_text(json.dumps({
        "name": "x", "metrics": {**metrics, "delta_face": None}, "unavailable": {"delta_face": "no FaceNet"}}))
  rows = experiment.aggregate(config, tmp_path)
  assert [row["alpha"] for row in rows] == list(config.alphas)
  for row in rows:
    per_seed = np.array([values[(s, row["alpha"])]["acc_top1"] for s in config.seeds])
    np.testing.assert_allclose(row["mean"]["acc_top1"], per_seed.mean())
    np.testing.assert_allclose(row["sd"]["acc_top1"], per_seed.std(ddof=1))
    assert row["mean"]["delta_face"] is None and row["unavailable"] == {"delta_face": "no FaceNet"}
  sd_rows = experiment.sd_table(rows).splitlines()[2:]
  assert [line.split(" | ")[0] for line in sd_rows] == ["| 0.1", "| 0", "| -0.05"]
  assert f"{100 * rows[0]['sd']['acc_top1']:.2f}" in sd_rows[0]
  means = [experiment._named(f"α = {row['alpha']:g}", row["mean"], row["unavailable"]) for row in rows]
  text = experiment.table(means, baseline=1)
  assert text.endswith("n/a:\n- δ_face: no FaceNet")  # one merged note for all rows


def test_paired_differences_pair_seed_and_class(tmp_path):
  """Per-class Acc@1 written as the evaluation does; Δ is the mean of same-seed, same-class differences."""
  config = experiment.resolve(_quick_config())
  config.seeds = (0, 1, 2)
  config.bootstrap = dict(num_resamples=500, seed=0, confidence=0.95)
  rng = np.random.default_rng(0)
  shift = {0.1: 0.2, 0.0: 0.0, -0.05: -0.3}
  base = rng.uniform(0.3, 0.7, size=(3, 8))
  for cell in experiment.cells(config, tmp_path):
    out = cell.attack_dir / report.EVALUATION_DIR
    out.mkdir(parents=True)
    values = base[cell.seed] + shift[cell.alpha]
    classes = range(8) if cell.alpha != 0.1 else range(1, 8)  # class 0 missing in the α = 0.1 runs
    lines = ["class,acc_top1,acc_top1_initial"] + [f"{c},{values[c]:.6g},0.5" for c in classes]
    (out / "per_class.csv").write_text("\n".join(lines) + "\n")
  matrices = experiment.per_class_matrices(config, tmp_path)
  paired = experiment.paired_differences(config, matrices)
  p010, m005 = experiment.Variant(0.1), experiment.Variant(-0.05)
  assert set(paired) == {p010, m005}
  assert paired[p010]["classes"] == list(range(1, 8)) and paired[m005]["num_classes"] == 8
  for variant, diff in paired.items():
    np.testing.assert_allclose(diff["mean"], shift[variant.alpha], atol=1e-5)
    np.testing.assert_allclose(diff["per_class"], shift[variant.alpha], atol=1e-5)
    assert diff["low"] == pytest.approx(shift[variant.alpha], abs=1e-5)
    assert diff["high"] == pytest.approx(shift[variant.alpha], abs=1e-5)
  lines, rows = experiment.per_class_section(paired, config, matrices)
  assert len(rows) == 8 and np.isnan(rows[0]["delta_alpha0.1"])
  assert rows[1]["delta_alpha-0.05"] == pytest.approx(-0.3, abs=1e-5)
  assert "α = -0.05: higher in 0, equal in 0, lower in 8 of 8 classes" in lines[2]


def _quick_defense_config():
  config = defense_study.get_config()
  config.quick = True
  return config


def test_defense_cells_train_their_defense_at_the_baseline_alpha(tmp_path):
  config = experiment.resolve(_quick_defense_config())
  alpha_study = experiment.resolve(_quick_numbers_config())
  assert tuple(config.defenses) == ("mid", "bido", "calor") and config.run_membership
  assert config.attack.to_dict() == alpha_study.attack.to_dict()  # the α study's protocol, unchanged
  runs = experiment.cells(config, tmp_path)
  assert [c.root.relative_to(tmp_path).as_posix() for c in runs] == [
      "seed_0/alpha_+0.100", "seed_0/alpha_+0.000", "seed_0/alpha_-0.050",
      "seed_0/defense_mid", "seed_0/defense_bido", "seed_0/defense_calor"]
  # The α cells are the α study's, config for config and path for path (a defense study reuses them) ...
  assert [c.root for c in experiment.cells(alpha_study, tmp_path)] == [c.root for c in runs[:3]]
  for cell in runs[:3]:
    assert experiment.target_config(config, cell).to_dict() == experiment.target_config(alpha_study, cell).to_dict()
  # ... and a defense's target is the baseline's with its defense switched on, its settings from target.defense.
  baseline = experiment.target_config(config, runs[1]).to_dict()
  for cell, name in zip(runs[3:], config.defenses):
    target = experiment.target_config(config, cell).to_dict()
    assert target["defense"]["name"] == name and target["label_smoothing"] == config.baseline_alpha == 0.0
    assert target["defense"][name] == config.target.defense[name].to_dict()
    target["defense"]["name"] = "none"
    assert target == baseline
  # One membership stage per cell, each on its own target, all with the same shadows: the baseline recipe.
  names = [stage.name for stage in experiment.stages(config, tmp_path)]
  assert [n for n in names if n.startswith("membership")] == [
      f"membership (seed 0, {label})" for label in ("α = 0.1", "α = 0", "α = -0.05", "MID", "BiDO", "CALoR")]
  for cell in runs:
    membership = experiment.membership_config(config, cell, tmp_path)
    assert membership.target_workdir == str(cell.target_dir)
    assert membership.lira.shadow_workdir == str(tmp_path / "shadows")
  shadow = experiment.shadow_config(config, tmp_path).to_dict()
  assert shadow["defense"]["name"] == "none" and shadow["label_smoothing"] == 0.0
  assert shadow["seed"] == config.membership.seed
  config.defenses = ("mid", "dp")
  with pytest.raises(ValueError, match="config.defenses"):
    experiment.resolve(config)


def _write_cell(cell, per_class: dict, metrics: dict, membership: dict | None = None):
  """A cell's evaluation (report.json, per_class.csv) and membership report as the programs write them."""
  out = cell.attack_dir / report.EVALUATION_DIR
  out.mkdir(parents=True)
  (out / report.REPORT_FILE).write_text(json.dumps({"name": "x", "metrics": metrics, "unavailable": {}}))
  lines = ["class,acc_top1"] + [f"{c},{v!r}" for c, v in per_class.items()]
  (out / "per_class.csv").write_text("\n".join(lines) + "\n")
  if membership is not None:
    cell.membership_dir.mkdir(parents=True)
    (cell.membership_dir / "report.json").write_text(json.dumps(membership))


def test_defense_delta_and_membership_columns_from_the_cells(tmp_path):
  """Δ of a defense is the mean of its same-seed, same-class differences to α = 0 (hand computation on random
  per-class values); the membership columns are the cells' membership reports, with a t interval over seeds."""
  config = experiment.resolve(_quick_defense_config())
  config.seeds = (0, 1, 2)
  config.bootstrap = dict(num_resamples=200, seed=0, confidence=0.95)
  rng = np.random.default_rng(3)
  acc = {}  # (seed, variant) -> [8] per-class Acc@1; class 5 never attacked in the CALoR runs
  lira = {}
  for cell in experiment.cells(config, tmp_path):
    acc[cell.seed, cell.variant] = rng.uniform(0, 1, 8)
    lira[cell.seed, cell.variant] = (float(rng.uniform(0.5, 0.7)), float(rng.uniform(0, 0.1)))
    classes = [c for c in range(8) if not (cell.variant.defense == "calor" and c == 5)]
    metrics = {key: float(rng.uniform()) for key in report.COLUMN_KEYS}
    membership = {"lira_offline": {"auc": lira[cell.seed, cell.variant][0],
                                   "tpr_at_0.01_fpr": lira[cell.seed, cell.variant][1]},
                  "loss_attack": {"auc": 0.55}}
    _write_cell(cell, {c: float(acc[cell.seed, cell.variant][c]) for c in classes}, metrics, membership)
  matrices = experiment.per_class_matrices(config, tmp_path)
  paired = experiment.paired_differences(config, matrices)
  base = experiment.Variant(0.0)
  assert set(paired) == {v for v in experiment.variants(config) if v != base}
  for name in config.defenses:
    variant = experiment.Variant(0.0, name)
    kept = [c for c in range(8) if not (name == "calor" and c == 5)]
    by_hand = [acc[s, variant][c] - acc[s, base][c] for s in config.seeds for c in kept]
    assert paired[variant]["mean"] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-12)
    assert paired[variant]["num_classes"] == len(kept) and paired[variant]["classes"] == kept
    assert paired[variant]["low"] <= paired[variant]["mean"] <= paired[variant]["high"]
  lines, rows = experiment.per_class_section(paired, config, matrices)
  assert np.isnan(rows[5]["delta_calor"]) and np.isnan(rows[5]["acc_top1_calor"])
  assert rows[0]["delta_mid"] == pytest.approx(np.mean([acc[s, experiment.Variant(0.0, "mid")][0] -
                                                        acc[s, base][0] for s in config.seeds]))
  assert "CALoR: higher in" in lines[2] and lines[4].startswith("| class | Acc@1 α=0.1 (%) |")

  rows = experiment.aggregate(config, tmp_path)
  assert [row["variant"].short for row in rows] == ["0.1", "0", "-0.05", "MID", "BiDO", "CALoR"]
  for row in rows:
    per_seed = np.array([lira[s, row["variant"]][0] for s in config.seeds])
    auc = row["membership"]["lira_offline.auc"]
    assert auc["per_seed"] == per_seed.tolist() and auc["mean"] == pytest.approx(per_seed.mean())
    half = 4.302653 * per_seed.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert auc["high"] == pytest.approx(per_seed.mean() + half, rel=1e-5)
    assert row["membership"]["loss_attack.auc"]["mean"] == pytest.approx(0.55)
  assert experiment.tradeoff_x(rows) == "lira_offline.auc"
  section = experiment.tradeoff_section(config, rows, paired)
  mid_row = next(line for line in "\n".join(section).splitlines() if line.startswith("| MID |"))
  mid = rows[3]["membership"]["lira_offline.auc"]
  assert f"{mid['mean']:.3f} ± {mid['sd']:.3f} [{mid['low']:.3f}, {mid['high']:.3f}]" in mid_row
  assert f"{100 * paired[experiment.Variant(0.0, 'mid')]['mean']:+.1f} [" in mid_row
  experiment.tradeoff_figure(rows, tmp_path / "tradeoff.png")
  with Image.open(tmp_path / "tradeoff.png") as image:
    assert image.width > 400 and image.height > 300


def _quick_numbers_config():
  config = numbers_study.get_config()
  config.quick = True
  return config


@pytest.fixture(scope="module")
def quick_numbers_study(tmp_path_factory):
  """The quick α study's workdir and result, run once: the defense study's test continues from a copy of it
  (its α cells are the same cells)."""
  workdir = tmp_path_factory.mktemp("quick_numbers_study")
  return workdir, experiment.run_study(_quick_numbers_config(), workdir)


@pytest.mark.slow
def test_quick_study_writes_a_complete_report(quick_numbers_study):
  tmp_path, study = quick_numbers_study
  config = experiment.resolve(_quick_numbers_config())
  # retrained digit prior and the number prior written from it, evaluation model, then 3 stages per cell
  assert config.retrain_prior and config.prior_num_digits == 2
  assert len(study["timings"]) == 2 + 1 + 3 * len(config.seeds) * len(config.alphas)
  assert model_store.read_info(tmp_path / "prior" / "numbers")["kind"] == "number_generator"

  text = (tmp_path / "report.md").read_text()
  header = "| Run | " + " | ".join(c.header for c in report.COLUMNS) + " |"
  assert text.count(header) == 1 + len(config.seeds)  # the mean table and one per seed
  # Every run folder of the study (prior, evaluation model, targets, attacks) recorded this process's commit.
  computed = next(line for line in text.splitlines() if line.startswith("Computed at jaxmia commit: "))
  assert provenance.entry("")["commit"][:7] in computed and "older run folders" not in computed
  assert "| α = 0 (baseline) |" in text and "One seed: no standard deviation." in text
  for alpha in (0.1, -0.05):
    row = next(line for line in text.splitlines() if line.startswith(f"| α = {alpha:g} |"))
    assert "(+" in row or "(-" in row  # differences to the baseline

  for alpha in ("0.1", "0", "-0.05"):
    mean, sd = study["mean"][alpha], study["sd"][alpha]
    for key in ("test_accuracy", "ece", "acc_top1", "acc_top5", "xi_train", "xi_test"):
      assert 0.0 <= mean[key] <= 1.0, (alpha, key, mean[key])
    for key in ("delta_eval", "fid"):
      assert math.isfinite(mean[key]) and mean[key] >= 0.0, (alpha, key, mean[key])
    assert mean["delta_face"] is None  # no FaceNet for handwriting
    assert sd["acc_top1"] is None  # one seed in the quick run
    assert len(study["per_seed"][alpha]) == len(config.seeds)

  for name in ("samples.png", "metrics.png"):
    with Image.open(tmp_path / name) as image:
      assert image.width > 200 and image.height > 100

  # The paired section: Acc@1 at the three attack points and an interval for each α against the baseline.
  assert "## Attack success and paired differences (1 seed × 3 classes)" in text
  for alpha in ("0.1", "-0.05"):
    diff = study["paired_differences"][alpha]
    assert diff["low"] <= diff["mean"] <= diff["high"] and diff["num_classes"] == 3
    assert all(0.0 <= study["attack_points"][alpha][label][0] <= 1.0 for label, _ in experiment.ATTACK_POINTS)
  assert (tmp_path / "per_class.csv").read_text().startswith("class,acc_top1_alpha0.1,")

  again = experiment.run_study(_quick_numbers_config(), tmp_path)  # every stage is done: only the report is rebuilt
  assert again["timings"] == {} and again["mean"] == study["mean"]
  assert json.loads((tmp_path / "study.json").read_text())["mean"] == study["mean"]


@pytest.mark.slow
def test_quick_defense_study_runs_end_to_end(quick_numbers_study, tmp_path):
  """The quick defense study, continued in a copy of the quick α study's workdir: its α cells are reused (only
  their membership stage runs), MID, BiDO and CALoR cells are added, a membership stage in each on one shared
  shadow, the defense and membership columns in report.md and study.json, tradeoff.png; a rerun redoes nothing."""
  shutil.copytree(quick_numbers_study[0], tmp_path, dirs_exist_ok=True)
  study = experiment.run_study(_quick_defense_config(), tmp_path)
  config = experiment.resolve(_quick_defense_config())
  # membership of the three α cells; target, attack, evaluation and membership of the three defense cells
  assert len(study["timings"]) == 3 + 4 * 3
  for alpha in ("0.1", "0", "-0.05"):  # the reused α cells: the α study's numbers
    assert study["mean"][alpha] == quick_numbers_study[1]["mean"][alpha]
  assert model_store.read_info(tmp_path / "seed_0" / "defense_calor" / "target" / "model")["kind"] == \
      "calor_classifier"
  assert model_store.read_info(tmp_path / "seed_0" / "defense_mid" / "target" / "model")["kind"] == "mid_classifier"
  assert sorted(p.name for p in (tmp_path / "shadows").iterdir()) == ["shadow_0"]  # trained once, shared

  keys = ["0.1", "0", "-0.05", "mid", "bido", "calor"]
  assert list(study["mean"]) == keys and study["defenses"] == ["mid", "bido", "calor"]
  assert set(study["paired_differences"]) == set(keys) - {"0"}
  for key in keys:
    assert 0.0 <= study["mean"][key]["acc_top1"] <= 1.0 and 0.0 <= study["mean"][key]["test_accuracy"] <= 1.0
    for column in ("lira_offline.auc", "lira_offline.tpr_at_0.01_fpr", "loss_attack.auc"):
      assert 0.0 <= study["membership"][key][column]["mean"] <= 1.0, (key, column)
  for cell in experiment.cells(config, tmp_path):
    cell_report = json.loads((cell.membership_dir / "report.json").read_text())
    assert cell_report["target_workdir"] == str(cell.target_dir)
    assert cell_report["lira_offline"]["shadow_defense"] == "none"
    assert cell_report["lira_offline"]["shadow_label_smoothing"] == 0.0
    assert study["membership"][cell.variant.key]["lira_offline.auc"]["per_seed"] == [cell_report["lira_offline"]["auc"]]

  text = (tmp_path / "report.md").read_text()
  assert "## Model inversion and membership inference" in text and "defenses at α = 0: MID (bottleneck" in text
  for label in ("MID", "BiDO", "CALoR"):  # a row in the paired, membership, mean and per-seed tables
    assert sum(line.startswith(f"| {label} |") for line in text.splitlines()) == 3 + len(config.seeds), label
  with Image.open(tmp_path / "tradeoff.png") as image:
    assert image.width > 400 and image.height > 300
  assert (tmp_path / "per_class.csv").read_text().splitlines()[0].endswith(",delta_mid,delta_bido,delta_calor")

  again = experiment.run_study(_quick_defense_config(), tmp_path)
  assert again["timings"] == {} and again["membership"] == study["membership"]
