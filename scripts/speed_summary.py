"""The README's speed summary: one markdown table per machine kind from the benchmark scripts' JSON records.

    python scripts/speed_summary.py                                   # docs/bench/*.json, each case's latest commit
    python scripts/speed_summary.py --benchmarks=bench_train,bench_attack,bench_lowres,bench_conv
    python scripts/speed_summary.py --files=runs/bench/bench_train-*.json --all
    python scripts/speed_summary.py --update=README.md                # rewrite the README's generated block

Every JSON written by `scripts/bench_*.py` (`jaxmia.benchmarks.Report`) records its machine, commit and rows.
Runs are grouped by the CPU model and kind (`jaxmia.provenance.cpu_label`: a Zen 3 and a Zen 5 host are different
kinds). Within a kind each case (a benchmark and the row's own fields: target, batch, dtype, ...) is listed from
the latest commit that measured it, every run at that commit (repeats are shown, not chosen among), with its
ratio, its per-round range (from the rounds' seconds where an older record has no range), commit and date; the
runs' files follow the table. Ratios are only ever taken within one run (the scripts measure both sides
interleaved); this script never divides figures of different runs. Rows without a PyTorch side (no reference
environment) or that failed are left out.
"""
import glob
import json
import pathlib

from absl import app, flags

from jaxmia import benchmarks, provenance

flags.DEFINE_list("files", ["docs/bench/*.json"], "JSON records of the benchmark scripts (globs).")
flags.DEFINE_list("benchmarks", ["bench_train", "bench_attack", "bench_lowres"],
                  "Which scripts' rows to list (bench_conv and bench_generator rows are per pass).")
flags.DEFINE_string("update", None, "A markdown file whose block between the BEGIN and END marker lines to "
                    "replace with the tables, instead of printing them.")
flags.DEFINE_bool("all", False, "List every run's row of a case, not only those of its latest commit.")
FLAGS = flags.FLAGS

# A row's measurements (the rest of its recorded columns name the case).
MEASURED = frozenset({"jaxmia_s", "jaxmia_rate", "torch_s", "torch_rate", "ratio", "round_ratios", "jaxmia_rss_gb",
                      "torch_rss_gb", "setup_s", "other_cores", "s_per_step", "gflops", "matmul_share", "unit",
                      "steps", "sides", "side_by_side", "error"})
BEGIN = "<!-- scripts/speed_summary.py: begin -->"
END = "<!-- scripts/speed_summary.py: end -->"
BENCHMARK_ORDER = ("bench_train", "bench_attack", "bench_lowres", "bench_generator", "bench_conv")


def load_runs(patterns) -> list[dict]:
  """The JSON records matching `patterns` (globs), each with its path as matched under `file`, oldest first."""
  paths = sorted({p for pattern in patterns for p in glob.glob(pattern)})
  if not paths:
    raise SystemExit(f"No benchmark JSON matches {', '.join(patterns)}; run a scripts/bench_*.py first or pass "
                     "--files.")
  runs = [dict(json.loads(pathlib.Path(p).read_text()), file=p) for p in paths]
  return sorted(runs, key=lambda run: run["machine"].get("date", ""))


def case_label(row: dict, columns: list[dict]) -> str:
  """`'resnet18 B=16 float32'`: the row's non-measured fields in its table's column order."""
  parts = []
  for column in columns:
    key = column["key"]
    if key in MEASURED or row.get(key) is None:
      continue
    parts.append(f"{key}={row[key]}" if key in ("B",) else str(row[key]))
  return " ".join(parts)


def unit_of(columns: list[dict]) -> str:
  """What the row's seconds are per (`s/step`, `s/iter`), from the header of its table's jaxmia seconds column."""
  for column in columns:
    if column["key"] in ("jaxmia_s", "s_per_step") and "s/" in column["header"]:
      return column["header"][column["header"].index("s/"):]
  return "s/call"


def side_by_side_rows(runs, names) -> list[dict]:
  """Every measured side-by-side row of the chosen benchmarks, flattened with its run's machine and file."""
  rows = []
  for run in runs:
    if run.get("benchmark") not in names or not run.get("side_by_side"):
      continue
    machine = run["machine"]
    for table in run.get("tables", []):
      for row in table["rows"]:
        if "error" in row or row.get("ratio") is None or not row.get("side_by_side", True):
          continue
        per_round = row.get("round_ratios") or benchmarks.round_ratios(row.get("sides", {}))
        rows.append(dict(kind=provenance.cpu_label(machine), cores=machine.get("cores"), benchmark=run["benchmark"],
                         case=case_label(row, table["columns"]), unit=unit_of(table["columns"]),
                         jaxmia_s=row.get("jaxmia_s"), torch_s=row.get("torch_s"), ratio=row["ratio"],
                         round_ratios=per_round, other_cores=row.get("other_cores"),
                         commit=machine["commit"][:7], dirty=bool(machine.get("dirty")),
                         date=machine.get("date", "")[:10], file=run["file"], run=run))
  return rows


def select(rows, every_run: bool = False) -> dict[str, list[dict]]:
  """Rows grouped by machine kind (in order of first appearance), ordered by benchmark and case. Per kind and
  case, the rows of the latest commit that measured it (every run at that commit: repeats are all shown), or
  every row with `every_run`. `rows` are in run order (oldest first)."""
  latest_commit = {(r["kind"], r["benchmark"], r["case"]): r["commit"] for r in rows}
  kept = [r for r in rows if every_run or r["commit"] == latest_commit[(r["kind"], r["benchmark"], r["case"])]]
  order = {name: i for i, name in enumerate(BENCHMARK_ORDER)}
  cases = {}  # the cases in order of first measurement
  for r in rows:
    cases.setdefault((r["benchmark"], r["case"]), len(cases))
  kinds: dict[str, list[dict]] = {}
  for r in kept:
    kinds.setdefault(r["kind"], []).append(r)
  return {kind: sorted(group, key=lambda r: (order.get(r["benchmark"], len(order)), cases[(r["benchmark"], r["case"])]))
          for kind, group in kinds.items()}


def _seconds(value) -> str:
  return "-" if value is None else f"{value:.3g}"


def markdown(selected: dict[str, list[dict]]) -> str:
  """One table per machine kind, then the runs it drew on (commit, date, versions, XLA's matmul rate)."""
  out = []
  for kind, rows in selected.items():
    cores = rows[0]["cores"]
    out += [f"**{kind}, {cores} cores**", "",
            "| benchmark | case | unit | jaxmia | PyTorch | ratio | per round | other cores | commit | date |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
      per_round = benchmarks.range_cell(r["round_ratios"]) if r["round_ratios"] else "-"
      other = "-" if r["other_cores"] is None else f"{r['other_cores']:.2f}"
      commit = r["commit"] + ("+" if r["dirty"] else "")
      out.append(f"| {r['benchmark'].removeprefix('bench_')} | {r['case']} | {r['unit']} | {_seconds(r['jaxmia_s'])} | "
                 f"{_seconds(r['torch_s'])} | **{r['ratio']:.2f}×** | {per_round} | {other} | {commit} | {r['date']} |")
    out.append("")
    for run in {id(r["run"]): r["run"] for r in rows}.values():
      m, matmul = run["machine"], run.get("matmul", {})
      torch = (run.get("reference") or {}).get("torch", "?")
      rates = "/".join("-" if matmul.get(k) is None else f"{matmul[k]:.0f}" for k in ("gflops_before", "gflops_after"))
      out.append(f"- `{run['file']}`: commit {m['commit'][:7]}{' (tree dirty)' if m.get('dirty') else ''}, "
                 f"{m.get('date', '')[:16].replace('T', ' ')} UTC, jax {m.get('jax')}, torch {torch}, XLA 4096² "
                 f"matmul {rates} GFLOP/s before/after")
    out.append("")
  return "\n".join(out)


def replace_block(text: str, tables: str) -> str:
  """`text` with the lines between its `BEGIN` and `END` marker lines replaced by `tables`."""
  if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
    raise SystemExit(f"Expected one '{BEGIN}' line before one '{END}' line in the file to update.")
  head, rest = text.split(BEGIN, 1)
  return f"{head}{BEGIN}\n{tables.strip()}\n{END}{rest.split(END, 1)[1]}"


def main(argv):
  del argv
  rows = side_by_side_rows(load_runs(FLAGS.files), set(FLAGS.benchmarks))
  tables = markdown(select(rows, every_run=FLAGS.all))
  if FLAGS.update:
    path = pathlib.Path(FLAGS.update)
    path.write_text(replace_block(path.read_text(), tables))
    print(f"Updated the speed tables in {path}.")
  else:
    print(tables)


if __name__ == "__main__":
  app.run(main)
