"""Evaluation reports: one run's `report.md`, and several runs side by side with differences to a baseline.

    python -m jaxmia.report runs/attack_a runs/attack_b runs/attack_c --baseline=runs/attack_a --out=table.md

Each argument is an attack run directory (its `evaluation/report.json` is read), an evaluation directory
or a `report.json` file, as written by `python -m jaxmia.evaluate`. The table has the columns of the
label-smoothing paper's Table 1; a run that could not compute a metric shows `n/a` (the reasons are listed
under the table). Accuracies, ECE and ξ are shown in percent, differences to the baseline in the same units
(percentage points). Without --out the table is printed. A missing or broken report is one `error:` line and
exit code 2.
"""
import dataclasses
import json
import math
import pathlib
import sys

from absl import flags

from jaxmia import cli
from jaxmia.files import atomic_write_text

REPORT_FILE = "report.json"
EVALUATION_DIR = "evaluation"


@dataclasses.dataclass(frozen=True)
class Column:
  key: str            # name in report.json's "metrics"
  header: str         # table header
  percent: bool       # stored as a fraction in [0, 1], shown in percent
  digits: int         # decimals shown


COLUMNS = (
    Column("test_accuracy", "Test Acc", True, 2),
    Column("ece", "ECE", True, 2),
    Column("acc_top1", "Acc@1", True, 2),
    Column("acc_top5", "Acc@5", True, 2),
    Column("delta_face", "δ_face", False, 4),
    Column("delta_eval", "δ_eval", False, 2),
    Column("fid", "FID", False, 2),
    Column("xi_train", "ξ_train", True, 2),
    Column("xi_test", "ξ_test", True, 2),
    Column("precision", "Precision", False, 4),
    Column("recall", "Recall", False, 4),
    Column("density", "Density", False, 4),
    Column("coverage", "Coverage", False, 4),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)


def find_report(path) -> pathlib.Path:
  """The `report.json` for a run directory, an evaluation directory or the file itself."""
  path = pathlib.Path(path)
  for candidate in (path, path / REPORT_FILE, path / EVALUATION_DIR / REPORT_FILE):
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(f"No {REPORT_FILE} at {path} (nor in {path / EVALUATION_DIR}); evaluate the run first "
                          f"with `python -m jaxmia.evaluate --config=... --run_dir={path}`.")


def load_report(path) -> dict:
  """A report dict (`name`, `metrics`, `unavailable`, ...) read from `find_report(path)`."""
  file = find_report(path)
  try:
    report = json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{file} is not valid JSON ({e}); rerun `python -m jaxmia.evaluate` for that run.") from e
  if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
    raise ValueError(f"{file} has no 'metrics' mapping; it was not written by jaxmia.evaluate.")
  report.setdefault("unavailable", {})
  report.setdefault("name", file.parent.parent.name if file.parent.name == EVALUATION_DIR else file.parent.name)
  return report


def _value(report: dict, column: Column):
  value = report["metrics"].get(column.key)
  if value is None or not math.isfinite(value):
    return None
  return 100.0 * value if column.percent else value


def format_value(report: dict, column: Column) -> str:
  value = _value(report, column)
  return "n/a" if value is None else f"{value:.{column.digits}f}"


def format_difference(report: dict, baseline: dict, column: Column) -> str:
  value, reference = _value(report, column), _value(baseline, column)
  if value is None or reference is None:
    return ""
  return f" ({value - reference:+.{column.digits}f})"


def _row(cells) -> str:
  return "| " + " | ".join(cells) + " |"


def comparison_table(reports: list[dict], baseline: int | None = None) -> str:
  """Markdown table of `reports` (one row each); with `baseline` (an index), every other row shows its
  difference to that row in parentheses. Reasons for `n/a` cells follow the table."""
  header = ["Run"] + [c.header for c in COLUMNS]
  lines = [_row(header), _row(["---"] + ["---:"] * len(COLUMNS))]
  for i, report in enumerate(reports):
    name = report["name"] + (" (baseline)" if i == baseline else "")
    cells = [format_value(report, c) + (format_difference(report, reports[baseline], c)
                                        if baseline is not None and i != baseline else "") for c in COLUMNS]
    lines.append(_row([name] + cells))
  notes = [f"- {report['name']}, {c.header}: {report['unavailable'].get(c.key, 'not computed')}"
           for report in reports for c in COLUMNS if _value(report, c) is None]
  if notes:
    lines += ["", "n/a:"] + notes
  return "\n".join(lines) + "\n"


def run_markdown(report: dict) -> str:
  """A single run's `report.md`: the metric table, n/a reasons, further numbers, settings and files."""
  lines = [f"# Attack evaluation: {report['name']}", ""]
  if report.get("run_dir"):
    lines += [f"Attack run: `{report['run_dir']}`", ""]
  lines += [comparison_table([report]).rstrip(), ""]
  details = report.get("details", {})
  if details:
    lines += ["## Further numbers", "", "Accuracies and confidences as fractions.", "", "| | |", "| --- | ---: |"]
    lines += [f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
              for key, value in details.items()]
    lines.append("")
  settings = report.get("settings", {})
  if settings:
    lines += ["## Settings", ""] + [f"- {key}: `{value}`" for key, value in settings.items()] + [""]
  files = report.get("files", {})
  if files.get("grid"):
    lines += ["## Selected samples and their nearest training images", "",
              report.get("grid_caption", ""), "", f"![nearest training images]({files['grid']})", ""]
  if files.get("per_class"):
    lines += [f"Per-class numbers: [{files['per_class']}]({files['per_class']})", ""]
  return "\n".join(lines)


def compare(runs, baseline=None) -> str:
  """`comparison_table` of the reports of `runs` (`load_report`'s paths); with `baseline` (a path, one of `runs`
  or another run, which then comes first), every other row shows its difference to it."""
  reports = [load_report(run) for run in runs]
  index = None
  if baseline:
    paths = [find_report(run).resolve() for run in runs]
    baseline_path = find_report(baseline).resolve()
    if baseline_path in paths:
      index = paths.index(baseline_path)
    else:
      reports.insert(0, load_report(baseline))
      index = 0
  return comparison_table(reports, index)


def _define_flags():
  flags.DEFINE_string("baseline", None, "The run (one of the RUN arguments, or another) whose numbers the others "
                                        "are compared with; default: no differences.")
  flags.DEFINE_string("out", None, "Write the markdown table to this file (default: print it).")


def main(argv):
  """`python -m jaxmia.report RUN [RUN ...] [--baseline=RUN] [--out=FILE]`: each RUN an attack run directory,
  an evaluation directory or a report.json file."""
  if len(argv) < 2:
    raise flags.ValidationError("no run given; usage: python -m jaxmia.report RUN [RUN ...] [--baseline=RUN] "
                                "[--out=FILE]")
  table = compare(argv[1:], flags.FLAGS.baseline)
  if flags.FLAGS.out:
    atomic_write_text(flags.FLAGS.out, table)
  else:
    sys.stdout.write(table)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
