"""scripts/speed_summary.py: the README's per-machine-kind speed tables from the benchmark scripts' JSON records."""
import io
import json
import subprocess
import sys

from jaxmia import benchmarks

COLUMNS = [benchmarks.Column("target", "arch", str), benchmarks.Column("B", "B", "d"),
           benchmarks.Column("jaxmia s/step", "jaxmia_s"), benchmarks.Column("PPA", "torch_rate", torch=True),
           *benchmarks.RATIO_COLUMNS]
REFERENCE = benchmarks.Reference(python="python", ppa_dir=None, sg2_dir=None, source="test", commits={},
                                 versions={"torch": "9.9"})


def _write_run(path, *, cpu_kind, commit, date, rows, reference=REFERENCE):
  """A `benchmarks.Report` record of `rows` ((arch, B, jaxmia round seconds, torch round seconds)) as if taken on
  a `cpu_kind` host at `commit` on `date`."""
  report = benchmarks.Report("bench_train", COLUMNS, reference=reference, why="no reference", matmul_size=8,
                             json_path=str(path), out=io.StringIO())
  for arch, batch, ours, theirs in rows:
    if ours is None:
      report.add(dict(arch=arch, B=batch, error="worker died"))
      continue
    summaries = {"jaxmia": benchmarks.summarize([dict(seconds=s) for s in ours])}
    if theirs:
      summaries["torch"] = benchmarks.summarize([dict(seconds=s) for s in theirs])
    report.add(benchmarks.side_by_side_row(summaries, batch, arch=arch, B=batch))
  record = report.finish()
  record["machine"].update(cpu="Test CPU", cpu_kind=cpu_kind, commit=commit, dirty=False, date=date)
  path.write_text(json.dumps(record))


def _summary(tmp_path, *flags):
  result = subprocess.run([sys.executable, str(benchmarks.ROOT / "scripts" / "speed_summary.py"),
                           f"--files={tmp_path}/*.json", *flags], capture_output=True, text=True, check=False)
  return result


def _table_rows(text, kind):
  """The data lines of `kind`'s table."""
  block = text.split(f"**Test CPU {kind}")[1].split("**Test CPU")[0]
  return [line for line in block.splitlines() if line.startswith("| train")]


def test_one_table_per_kind_latest_commit_repeats_kept_and_ratios_within_a_run(tmp_path):
  _write_run(tmp_path / "a_old.json", cpu_kind="(kind A)", commit="a" * 40, date="2026-01-01T00:00:00",
             rows=[("resnet18", 16, [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]), ("resnet152", 16, [4.0], [4.0])])
  _write_run(tmp_path / "a_new.json", cpu_kind="(kind A)", commit="b" * 40, date="2026-01-02T00:00:00",
             rows=[("resnet18", 16, [1.0, 1.2, 0.8], [1.5, 1.5, 1.5]), ("resnet18", 32, None, None)])
  _write_run(tmp_path / "a_repeat.json", cpu_kind="(kind A)", commit="b" * 40, date="2026-01-03T00:00:00",
             rows=[("resnet18", 16, [3.0, 3.0, 3.0], [1.5, 1.5, 1.5])])
  _write_run(tmp_path / "b.json", cpu_kind="(kind B)", commit="c" * 40, date="2026-01-04T00:00:00",
             rows=[("resnet18", 16, [1.0, 1.0, 1.0], [2.0, 2.0, 2.0])])
  _write_run(tmp_path / "b_alone.json", cpu_kind="(kind B)", commit="d" * 40, date="2026-01-05T00:00:00",
             rows=[("resnet18", 16, [0.5], None)], reference=None)

  result = _summary(tmp_path)
  assert result.returncode == 0, result.stderr
  kind_a, kind_b = _table_rows(result.stdout, "(kind A)"), _table_rows(result.stdout, "(kind B)")
  # Kind A: resnet18 B=16 from commit b only, both runs at b (1.5 / 1.0 and 1.5 / 3.0); resnet152 only ran at a,
  # so a is its latest; the failed B=32 row is left out.
  assert [line.split(" | ")[1] for line in kind_a] == ["resnet18 B=16", "resnet18 B=16", "resnet152 B=16"]
  assert "**1.50×** | 1.25–1.88 |" in kind_a[0] and "| bbbbbbb |" in kind_a[0]
  assert "**0.50×** | 0.50–0.50 |" in kind_a[1] and "| 2026-01-03 |" in kind_a[1]
  assert "**1.00×**" in kind_a[2] and "| aaaaaaa |" in kind_a[2]
  # Kind B: a later run without PyTorch gives no ratio and does not displace the side-by-side one.
  assert len(kind_b) == 1 and "**2.00×**" in kind_b[0] and "| ccccccc |" in kind_b[0]
  assert "b_alone.json" not in result.stdout and "a_old.json" in result.stdout and "torch 9.9" in result.stdout

  every = _table_rows(_summary(tmp_path, "--all").stdout, "(kind A)")
  assert [line.split(" | ")[1] for line in every] == ["resnet18 B=16"] * 3 + ["resnet152 B=16"]
  assert "**0.50×**" in every[0] and "| aaaaaaa |" in every[0]


def test_no_matching_file_is_a_one_line_error(tmp_path):
  result = _summary(tmp_path)
  assert result.returncode != 0 and "No benchmark JSON matches" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
