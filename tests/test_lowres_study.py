"""The low-resolution study (`jaxmia.lowres_study`): its plan of stages over the α study's cells (which GAN and
seed each attack gets) and its report on constructed evaluations (paired differences, queries, the paper's
columns, the findings' directions). The attacks and GANs themselves are tested in their own files, through
their command lines."""
import json

import numpy as np
from PIL import Image
import pytest

from conftest import REPO
from jaxmia import experiment, lowres_study, report
from jaxmia.attack import layout
from jaxmia.config import load_file

lowres_config = load_file(REPO / "configs" / "lowres_study.py")


def _config(quick=True):
  config = lowres_config.get_config()
  config.quick = quick
  return lowres_study.resolve(config)


def test_plan_reuses_the_alpha_cells_and_gives_each_attack_its_gan(tmp_path):
  config = _config()
  plan = lowres_study.stages(config, tmp_path)
  names = [s.name for s in plan]
  cells = experiment.cells(config, tmp_path)
  n = len(cells)
  assert names[0] == "evaluation model" and all(name.startswith("target (") for name in names[1:1 + n])
  assert names[1 + n] == "GMI GAN"
  # Then attack by attack, every cell: KED-MI's own GAN per cell, attack + evaluation for each kind.
  kinds = [name.split(" ")[0] for name in names[2 + n:]]
  assert kinds == [k for k in ("GMI", "KED-MI", "RLB-MI", "BREP-MI") for _ in range(n * (3 if k == "KED-MI" else 2))]
  for cell in cells:
    assert cell.target_dir.parent == tmp_path / f"seed_{cell.seed}" / experiment.alpha_name(cell.alpha)
    for kind in lowres_study.KINDS:
      attack = lowres_study.attack_config(config, cell, kind, tmp_path)
      gan = (cell.root / "gan_kedmi") if kind == "kedmi" else (tmp_path / "gan_gmi")
      assert attack.kind == kind and attack.seed == cell.seed
      assert attack.target == str(cell.target_dir / "model") and attack.generator == str(gan / "generator")
      assert attack.targets == config.lowres.targets
      if kind in ("gmi", "kedmi"):
        assert attack.discriminator == str(gan / "discriminator")
    gan = lowres_study.kedmi_gan_config(config, cell)
    assert (gan.seed, gan.target) == (cell.seed, str(cell.target_dir / "model"))
  outputs = {s.name: s.outputs for s in plan}
  cell = cells[0]
  label = f"seed {cell.seed}, {cell.variant.label}"
  assert outputs[f"BREP-MI attack ({label})"] == cell.root / "attack_brep" / "summary.json"
  assert outputs[f"KED-MI evaluation ({label})"] == cell.root / "attack_kedmi" / report.EVALUATION_DIR / "report.json"
  # The study's settings: the α study's targets, one fixed class subset, BREP's official z clamp.
  full = _config(quick=False)
  assert full.target.to_dict() == load_file(REPO / "configs" / "numbers_study.py").get_config().target.to_dict()
  classes = json.loads(full.lowres.targets)
  assert len(classes) == len(set(classes)) == 50 and max(classes) < 100
  assert tuple(full.lowres.brep.attack.point_clamp) == (-1.5, 1.5)


def test_plan_without_the_gmi_gan_and_bad_attacks(tmp_path):
  config = _config()
  config.lowres.attacks = ("kedmi",)
  assert "GMI GAN" not in [s.name for s in lowres_study.stages(config, tmp_path)]
  for bad in (("gmi", "ppa"), ()):
    config = lowres_config.get_config()
    config.lowres.attacks = bad
    with pytest.raises(ValueError, match="lowres.attacks"):
      lowres_study.resolve(config)
  config = lowres_config.get_config()
  config.defenses = ("mid",)
  with pytest.raises(ValueError, match="defenses"):
    lowres_study.resolve(config)


def _write_attack(attack_dir, per_class: dict, queries: dict | None):
  out = attack_dir / report.EVALUATION_DIR
  out.mkdir(parents=True)
  acc = float(np.mean(list(per_class.values())))
  (out / report.REPORT_FILE).write_text(json.dumps({"name": "x", "metrics": {"acc_top1": acc}, "unavailable": {}}))
  (out / "per_class.csv").write_text("class,acc_top1\n" + "".join(f"{c},{v!r}\n" for c, v in per_class.items()))
  (attack_dir / "summary.json").write_text(json.dumps({"kind": "x", **({"queries": queries} if queries else {})}))


def test_report_pairs_seeds_and_classes_and_states_directions(tmp_path):
  """GMI: α = 0.1 higher by 0.2 everywhere, α = -0.05 lower by 0.3 (the paper's direction for both); BREP-MI:
  α = 0.1 lower by 0.25 (the reverse of the paper's), α = -0.05 unchanged up to noise of both signs."""
  config = _config()
  config.seeds = (0, 1, 2)
  config.lowres.attacks = ("gmi", "brep")
  config.bootstrap = dict(num_resamples=500, seed=0, confidence=0.95)
  rng = np.random.default_rng(0)
  base = rng.uniform(0.3, 0.6, size=(3, 10))
  noise = rng.normal(0.0, 0.05, size=(3, 10))
  shift = {"gmi": {0.1: 0.2, 0.0: 0.0, -0.05: -0.3}, "brep": {0.1: -0.25, 0.0: 0.0, -0.05: None}}
  for cell in experiment.cells(config, tmp_path):
    for kind in config.lowres.attacks:
      delta = shift[kind][cell.alpha]
      values = base[cell.seed] + (noise[cell.seed] - noise[cell.seed].mean() if delta is None else delta)
      queries = {"per_class_mean": 330.0 + cell.seed} if kind == "brep" else None
      _write_attack(lowres_study.attack_dir(cell, kind), dict(enumerate(values.tolist())), queries)
  summary = lowres_study.write_report(config, tmp_path, {})
  gmi = {r["alpha"]: r for r in summary["gmi"]["rows"]}
  np.testing.assert_allclose(gmi[0.1]["paired"]["mean"], 0.2, atol=1e-6)
  np.testing.assert_allclose(gmi[-0.05]["paired"]["mean"], -0.3, atol=1e-6)
  np.testing.assert_allclose(gmi[0.0]["mean"], base.mean(), atol=1e-6)
  assert gmi[0.0]["paired"] is None and gmi[0.0]["queries"] is None
  brep = {r["alpha"]: r for r in summary["brep"]["rows"]}
  assert brep[0.0]["queries"] == [330.0, 331.0, 332.0]
  assert brep[-0.05]["paired"]["low"] < 0 < brep[-0.05]["paired"]["high"]
  text = (tmp_path / lowres_study.REPORT_FILE).read_text()
  assert "No folder here has a `provenance.json`. Report written at commit " in text  # the attacks were faked
  assert "| GMI (white-box) | 0.1 |" in text and "| 25.4 | +9.4 |" in text  # paper 25.4, 25.4 - 16.0
  assert "| BREP-MI (label-only) | 0 |" in text and "| 331 |" in text
  assert "- GMI, α = 0.1: higher than α = 0 (+20.0 [" in text and "the paper's direction." in text
  assert "- BREP-MI, α = 0.1: lower than α = 0" in text and "the reverse of the paper's direction." in text
  assert "- BREP-MI, α = -0.05: no difference to α = 0 resolved (" in text and "-0.3 pp), as the paper." in text
  study = json.loads((tmp_path / lowres_study.STUDY_FILE).read_text())
  assert study["attacks"]["gmi"]["rows"][0]["paired"]["num_classes"] == 10
  assert (tmp_path / lowres_study.FIGURE_FILE).stat().st_size > 10_000
  assert (tmp_path / lowres_study.SAMPLES_FILE).exists()  # no attack wrote images here: white cells


def test_samples_figure_takes_each_attacks_first_image(tmp_path, monkeypatch):
  """The grid handed to matplotlib: real images, then the attacks' images (their first tile) or white."""
  config = _config()
  config.lowres.attacks = ("gmi",)
  cell = experiment.cell_at(tmp_path, config.seeds[0], 0.0)
  images = lowres_study.attack_dir(cell, "gmi") / "images"
  images.mkdir(parents=True)
  tile = np.zeros((32, 64, 3), np.uint8)
  tile[:, :32, 0] = 200  # first tile red, second green
  tile[:, 32:, 1] = 200
  Image.fromarray(tile).save(images / "class_0001.png")
  shown = []
  monkeypatch.setattr(lowres_study.files, "image_grid", lambda x, *a, **k: shown.append(x) or x[0])
  lowres_study.samples_figure(config, tmp_path, tmp_path / "s.png")
  (stack,) = shown
  classes = len(layout.resolve_targets(config.lowres.targets, 100))
  assert stack.shape[0] == classes * (1 + len(config.alphas))
  row = 1 + list(config.alphas).index(0.0)
  np.testing.assert_array_equal(stack[row * classes + 1][..., 0], 200)  # class 1: the first tile
  assert stack[row * classes + 1][..., 1].max() == 0
  assert (stack[row * classes] == 255).all() and (stack[classes + 1] == 255).all()  # nothing written: white
