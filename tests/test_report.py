"""`python -m jaxmia.report`: runs side by side with differences to a baseline, from hand-made report.json files."""
import json

import pytest

from conftest import run_program
from jaxmia import report


def _write(folder, name, metrics, unavailable=None):
  """A report.json as jaxmia.evaluate writes it, in `<folder>/evaluation/`."""
  path = folder / name / "evaluation"
  path.mkdir(parents=True)
  full = {key: None for key in report.COLUMN_KEYS}
  full.update(metrics)
  (path / "report.json").write_text(json.dumps({"name": name, "metrics": full, "unavailable": unavailable or {}}))
  return folder / name


BASELINE = {"test_accuracy": 0.9421, "ece": 0.0312, "acc_top1": 0.8213, "acc_top5": 0.9400, "delta_face": 0.7123,
            "delta_eval": 120.5, "fid": 45.25, "xi_train": 0.55, "xi_test": 0.50, "precision": 0.8,
            "recall": 0.3, "density": 1.1, "coverage": 0.6}
SMOOTHED = {"test_accuracy": 0.9310, "ece": 0.1520, "acc_top1": 0.1504, "acc_top5": 0.3000, "delta_face": 1.1025,
            "delta_eval": 150.0, "fid": 60.75, "xi_train": 0.10, "xi_test": 0.05, "precision": 0.5,
            "recall": 0.1, "density": 0.4, "coverage": 0.2}


def _cells(table, run_name):
  line = next(row for row in table.splitlines() if row.startswith(f"| {run_name}"))
  return dict(zip([c.key for c in report.COLUMNS], [c.strip() for c in line.strip("|").split("|")[1:]]))


def test_side_by_side_differences_to_baseline(tmp_path):
  base = _write(tmp_path, "standard", BASELINE)
  smooth = _write(tmp_path, "ls_negative", SMOOTHED)
  digits = _write(tmp_path, "digits", {k: v for k, v in SMOOTHED.items() if k != "delta_face"},
                  {"delta_face": "no facenet network configured"})
  out = tmp_path / "table.md"
  code, stderr = run_program("jaxmia.report", str(base), str(smooth), str(digits), f"--baseline={base}",
                             f"--out={out}")
  assert code == 0, stderr[-2000:]
  table = out.read_text()
  assert table == report.compare([base, smooth, digits], baseline=base)
  header = table.splitlines()[0]
  assert [h.strip() for h in header.strip("|").split("|")] == ["Run"] + [c.header for c in report.COLUMNS]

  assert _cells(table, "standard (baseline)")["acc_top1"] == "82.13"
  cells = _cells(table, "ls_negative")
  # Percent columns differ in percentage points, the others in their own units.
  assert cells["test_accuracy"] == "93.10 (-1.11)"
  assert cells["ece"] == "15.20 (+12.08)"
  assert cells["acc_top1"] == "15.04 (-67.09)"
  assert cells["acc_top5"] == "30.00 (-64.00)"
  assert cells["delta_face"] == "1.1025 (+0.3902)"
  assert cells["delta_eval"] == "150.00 (+29.50)"
  assert cells["fid"] == "60.75 (+15.50)"
  assert cells["xi_test"] == "5.00 (-45.00)"
  assert cells["density"] == "0.4000 (-0.7000)"
  # A metric the run could not compute is n/a, without a difference, and the reason is listed.
  assert _cells(table, "digits")["delta_face"] == "n/a"
  assert "- digits, δ_face: no facenet network configured" in table


def test_baseline_outside_the_runs_comes_first_and_no_baseline_means_no_differences(tmp_path):
  base = _write(tmp_path, "standard", BASELINE)
  smooth = _write(tmp_path, "ls_negative", SMOOTHED)
  table = report.compare([smooth / "evaluation" / "report.json"], baseline=base / "evaluation")
  rows = [line for line in table.splitlines() if line.startswith("| ")][2:]
  assert rows[0].startswith("| standard (baseline)") and rows[1].startswith("| ls_negative")
  out = report.compare([base, smooth])
  assert "82.13 |" in out and "(+" not in out and "(-" not in out


def test_missing_or_broken_reports_give_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="evaluate the run first"):
    report.compare([tmp_path / "nowhere"])
  broken = tmp_path / "broken" / "evaluation"
  broken.mkdir(parents=True)
  (broken / "report.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    report.load_report(tmp_path / "broken")
  # On the command line: one error line, exit code 2 (also for no run at all).
  for args, message in [([str(tmp_path / "broken")], "not valid JSON"), ([], "bad command line: no run given")]:
    code, stderr = run_program("jaxmia.report", *args)
    last = stderr.splitlines()[-1]
    assert code == 2 and "Traceback" not in stderr and last.startswith("error: ") and message in last, stderr
