"""jaxmia.benchmarks, what scripts/bench_*.py share: interleaved rounds and their medians, the worker protocol,
finding the reference environment, and the table + JSON (no PyTorch column and no ratio without a reference)."""
import io
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from jaxmia import benchmarks

REFERENCE_VARIABLES = ("JAXMIA_REFERENCE", "JAXMIA_TORCH_PYTHON") + tuple(
    f"JAXMIA_{repo}_{key}" for repo in ("PPA", "SG2", "GMI", "KEDMI", "RLB", "BREP") for key in ("DIR", "COMMIT"))
COLUMNS = [benchmarks.Column("target", "arch", str), benchmarks.Column("jaxmia img/s", "jaxmia_rate"),
           benchmarks.Column("PPA img/s", "torch_rate", torch=True),
           *benchmarks.RATIO_COLUMNS]


@pytest.fixture
def no_reference_variables(monkeypatch):
  for name in REFERENCE_VARIABLES:
    monkeypatch.delenv(name, raising=False)


class FakeWorker:
  """Records the calls in a shared log; `round` answers the next of its `seconds`."""

  def __init__(self, name, seconds, log):
    self.name, self.seconds, self.log = name, list(seconds), log

  def call(self, op, case):
    self.log.append((op, self.name, case["id"]))
    if op == "prepare":
      return dict(setup_s=1.0)
    return dict(seconds=self.seconds.pop(0), cpu_seconds=0.5, other_cores=0.1, peak_rss_gb=2.0)


def test_interleaved_order_reverses_every_other_round():
  assert benchmarks.interleaved_order(["jaxmia", "torch"], 4) == [
      ["jaxmia", "torch"], ["torch", "jaxmia"], ["jaxmia", "torch"], ["torch", "jaxmia"]]
  assert benchmarks.interleaved_order(["a", "b", "c"], 2) == [["a", "b", "c"], ["c", "b", "a"]]
  assert benchmarks.interleaved_order(["a"], 0) == []


def test_compare_prepares_all_sides_then_alternates_and_takes_medians():
  log = []
  workers = dict(jaxmia=FakeWorker("jaxmia", [3.0, 1.0, 2.0], log), torch=FakeWorker("torch", [8.0, 4.0, 100.0], log))
  summaries = benchmarks.compare(workers, dict(jaxmia=dict(id="j"), torch=dict(id="t")), rounds=3)
  assert log == [("prepare", "jaxmia", "j"), ("prepare", "torch", "t"),
                 ("round", "jaxmia", "j"), ("round", "torch", "t"),
                 ("round", "torch", "t"), ("round", "jaxmia", "j"),
                 ("round", "jaxmia", "j"), ("round", "torch", "t")]
  assert summaries["jaxmia"]["seconds"] == 2.0 and summaries["torch"]["seconds"] == 8.0  # medians, not means
  assert summaries["jaxmia"]["round_seconds"] == [3.0, 1.0, 2.0]
  assert summaries["torch"]["seconds_min"] == 4.0 and summaries["torch"]["seconds_max"] == 100.0
  assert summaries["jaxmia"]["setup_s"] == 1.0 and summaries["jaxmia"]["peak_rss_gb"] == 2.0
  row = benchmarks.side_by_side_row(summaries, 4, arch="resnet18")
  assert row["jaxmia_rate"] == 2.0 and row["torch_rate"] == 0.5 and row["ratio"] == 4.0 and row["side_by_side"]
  assert row["round_ratios"] == [8.0 / 3.0, 4.0, 50.0]  # round by round, not a ratio of the two ranges


def test_row_without_torch_side_has_no_ratio():
  summary = benchmarks.summarize([dict(seconds=2.0, other_cores=0.0)])
  row = benchmarks.side_by_side_row(dict(jaxmia=summary), 4, arch="resnet18")
  assert row["jaxmia_rate"] == 2.0 and row["ratio"] is None and row["round_ratios"] is None and not row["side_by_side"]
  assert "torch_rate" not in row


def test_median_of_even_count():
  assert benchmarks.summarize([dict(seconds=s) for s in (4.0, 1.0, 3.0, 2.0)])["seconds"] == 2.5


WORKER = """
import sys
from jaxmia import benchmarks
print("noise on stdout")
def handle(request):
  print("more noise")
  if request["op"] == "fail":
    raise ValueError("bad case")
  return dict(echo=request["case"], timing=benchmarks.timed(lambda: None, 2))
benchmarks.serve(handle)
"""


def test_worker_protocol_keeps_stdout_noise_off_the_replies():
  with benchmarks.Worker("test", [sys.executable, "-c", WORKER]) as worker:
    reply = worker.call("round", case={"x": 1})
    assert reply["echo"] == {"x": 1} and reply["peak_rss_gb"] > 0
    assert set(reply["timing"]) == {"seconds", "cpu_seconds", "other_cores"}
    with pytest.raises(benchmarks.WorkerError, match="bad case"):
      worker.call("fail", case={})
    assert worker.call("round", case=2)["echo"] == 2  # the loop goes on after an error
    assert "noise on stdout" in worker.log_tail(5)


def test_dead_worker_is_an_error():
  with benchmarks.Worker("test", [sys.executable, "-c", "import sys; sys.exit('gone')"]) as worker:
    with pytest.raises(benchmarks.WorkerError, match="gone"):
      worker.call("prepare", case={})


def test_missing_reference_gives_the_reason(tmp_path, no_reference_variables):
  reference, why = benchmarks.find_reference(tmp_path)
  assert reference is None and "setup_reference.sh" in why
  assert benchmarks.find_reference("none") == (None, "--reference=none")


def test_reference_from_env_file_and_variables(tmp_path, monkeypatch, no_reference_variables):
  fake_python = tmp_path / "python"  # stands in for the reference interpreter's `bench_torch.py --check`
  reply = json.dumps(dict(torch="9.9", torchvision="1.0", args="%s"))
  fake_python.write_text(f"#!/bin/sh\nprintf '{reply}' \"$*\"\n")
  fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
  (tmp_path / "ppa dir").mkdir()
  (tmp_path / "reference.env").write_text(
      f"# comment\nJAXMIA_TORCH_PYTHON={fake_python}\nJAXMIA_PPA_DIR='{tmp_path / 'ppa dir'}'\n"
      "JAXMIA_PPA_COMMIT=abc\n")
  reference, why = benchmarks.find_reference(tmp_path, needs=("ppa",))
  assert why == "" and reference.python == str(fake_python) and reference.ppa_dir == str(tmp_path / "ppa dir")
  assert reference.versions["torch"] == "9.9" and reference.versions["args"].endswith("--check ppa")
  assert reference.commits == {"ppa": "abc"} and reference.env()["JAXMIA_PPA_DIR"] == str(tmp_path / "ppa dir")
  reference, why = benchmarks.find_reference(tmp_path, needs=("ppa", "sg2"))
  assert reference is None and "JAXMIA_SG2_DIR" in why
  monkeypatch.setenv("JAXMIA_TORCH_PYTHON", str(tmp_path / "missing"))  # the environment overrides the file
  reference, why = benchmarks.find_reference(tmp_path)
  assert reference is None and "missing" in why


def run_report(tmp_path, reference, why=""):
  out = io.StringIO()
  report = benchmarks.Report("bench_test", COLUMNS, reference=reference, why=why, matmul_size=0,
                             json_path=tmp_path / "result.json", settings=dict(rounds=2), out=out)
  summaries = dict(jaxmia=benchmarks.summarize([dict(seconds=0.5, other_cores=0.0)]))
  if reference:
    summaries["torch"] = benchmarks.summarize([dict(seconds=1.0, other_cores=0.0)])
  report.add(benchmarks.side_by_side_row(summaries, 4, arch="resnet18"))
  record = report.finish()
  assert json.loads((tmp_path / "result.json").read_text()) == json.loads(json.dumps(record, default=str))
  return out.getvalue(), record


def test_report_without_reference_prints_no_ratio(tmp_path, no_reference_variables):
  reference, why = benchmarks.find_reference(tmp_path)
  text, record = run_report(tmp_path, reference, why)
  assert [line for line in text.splitlines() if line.startswith("No PyTorch reference environment")] != []
  table = [line for line in text.splitlines() if line.startswith("|")]
  assert table == ["| target | jaxmia img/s |", "|---|---|", "| resnet18 | 8 |"]
  assert record["reference"] is None and "setup_reference.sh" in record["no_reference_reason"]
  assert record["side_by_side"] is False and record["tables"][0]["side_by_side"] == []
  assert [c["header"] for c in record["tables"][0]["columns"]] == ["target", "jaxmia img/s"]
  machine = record["machine"]
  for field in ("cpu", "cores", "jax", "jaxlib", "commit", "dirty", "python", "date"):
    assert field in machine
  assert machine["cores"] == os.cpu_count() and machine["commit"] != ""
  assert set(record["matmul"]) == {"size", "gflops_before", "gflops_after"}
  assert record["settings"] == {"rounds": 2} and "interleaved" in record["procedure"]


def test_report_with_reference_prints_the_measured_ratio(tmp_path):
  reference = benchmarks.Reference("python", "ppa", "sg2", "test", {}, dict(torch="9.9", torchvision="1.0"))
  text, record = run_report(tmp_path, reference)
  assert "| resnet18 | 8 | 4 | **2.00x** | 2.00–2.00 |" in text and "torch 9.9" in text
  assert record["side_by_side"] is True and record["tables"][0]["side_by_side"] == ["ratio"]
  assert record["reference"]["torch"] == "9.9" and record["tables"][0]["rows"][0]["ratio"] == 2.0


def test_matmul_rate_is_measured():
  assert benchmarks.xla_matmul_gflops(0) is None
  assert benchmarks.xla_matmul_gflops(64, repeats=2) > 0


def test_env_file_parsing(tmp_path):
  path = tmp_path / "reference.env"
  path.write_text("# c\nA=/x/y\nB='/with space'\nC=\n\nnot a line\nD=a=b\n")
  assert benchmarks.read_env_file(path) == {"A": "/x/y", "B": "/with space", "C": "", "D": "a=b"}


def test_setup_script_refuses_a_folder_inside_the_project(tmp_path):
  script = benchmarks.ROOT / "scripts" / "setup_reference.sh"
  result = subprocess.run([str(script), "--ppa", str(tmp_path), "--sg2", str(tmp_path),
                           str(benchmarks.ROOT / "runs" / "reference")], capture_output=True, text=True, check=False)
  assert result.returncode == 2 and "inside the project" in result.stderr
  result = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True, check=False)
  assert result.returncode == 2 and "--ppa" in result.stderr


@pytest.mark.slow
def test_bench_conv_without_reference_prints_jaxmia_alone(tmp_path, no_reference_variables):
  result = subprocess.run(
      [sys.executable, str(benchmarks.ROOT / "scripts" / "bench_conv.py"), "--tables=torch", "--shapes=stage 3",
       f"--reference={tmp_path}", "--rounds=1", "--calls=1", "--matmul_size=0", "--max_wait=0",
       f"--json={tmp_path / 'conv.json'}"], capture_output=True, text=True, check=True)
  assert "No PyTorch reference environment" in result.stdout
  table = [line for line in result.stdout.splitlines() if line.startswith("|")]
  assert table[0] == "| shape | pass | compiled | B | jaxmia | other cores |"
  assert [row.split(" | ")[1:3] for row in table[2:]] == [
      [op, compiled] for op in ("forward", "input_grad", "weight_grad") for compiled in ("jaxmia", "XLA default")]
  record = json.loads((tmp_path / "conv.json").read_text())
  assert record["reference"] is None and record["side_by_side"] is False
  assert all(row["ratio"] is None and "torch_rate" not in row for row in record["tables"][0]["rows"])


def test_case_handler_prepares_once_and_times_the_prepared_call():
  made, runs = [], []

  def prepare(case):
    made.append(case["n"])
    return lambda: runs.append(case["n"]), case["calls"]

  handle = benchmarks.case_handler(prepare)
  case = {"n": 3, "calls": 2}
  assert set(handle({"op": "prepare", "case": case})) == {"setup_s"}
  reply = handle({"op": "round", "case": dict(reversed(list(case.items())))})  # same case, other key order
  assert made == [3] and runs == [3]
  assert {"seconds", "cpu_seconds"} <= set(reply) and reply["seconds"] >= 0


def test_a_call_that_times_itself_reports_its_own_seconds():
  assert benchmarks.timed(lambda: 0.25, units=2)["seconds"] == 0.125  # e.g. the steps without a fixed closing pass
  assert 0.02 <= benchmarks.timed(lambda: time.sleep(0.02), units=1)["seconds"] < 1.0  # else the call's wall time
  assert 0.02 <= benchmarks.seconds_of(lambda: time.sleep(0.02)) < 1.0


def test_flop_counts_of_a_product_match_the_closed_form():
  import jax
  import jax.numpy as jnp

  a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
  assert benchmarks.compiled_flops(jnp.matmul, a, b) == 2 * 8 * 16 * 4
  lowered = jax.jit(lambda a, b: jnp.tanh(a @ b) @ b.T).lower(a, b)
  assert benchmarks.lowered_flops(lowered) >= 2 * (2 * 8 * 16 * 4)  # both products (and the tanh)


def test_case_handler_passes_prepare_info_and_flop_rate_divides_by_the_median():
  handle = benchmarks.case_handler(lambda case: (lambda: None, 2, {"flops_per_unit": 3e9}))
  reply = handle({"op": "prepare", "case": {"n": 1}})
  assert reply["flops_per_unit"] == 3e9 and reply["setup_s"] >= 0
  summary = benchmarks.summarize([{"seconds": s} for s in (0.5, 1.5, 1.0)], reply)
  assert summary["flops_per_unit"] == 3e9  # the prepare reply's fields reach the side's summary
  rate = benchmarks.flop_rate(summary, matmul_gflops=12.0)
  assert rate == pytest.approx({"gflops": 3.0, "matmul_share": 0.25})  # 3e9 FLOPs in the median 1.0 s
  assert benchmarks.flop_rate({"seconds": 1.0}, 12.0) == {}  # no count reported: no columns
  assert benchmarks.flop_rate(summary, None)["matmul_share"] is None  # matmul not measured (--matmul_size=0)
  assert benchmarks.percent_cell(0.254) == "25 %"


def test_reference_needs_the_lowres_checkouts(tmp_path, no_reference_variables):
  fake_python = tmp_path / "python"
  fake_python.write_text("#!/bin/sh\necho '{\"torch\": \"9.9\"}'\n")
  fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
  env = f"JAXMIA_TORCH_PYTHON={fake_python}\nJAXMIA_PPA_DIR={tmp_path}\n"
  (tmp_path / "reference.env").write_text(env)
  reference, why = benchmarks.find_reference(tmp_path, needs=("gmi", "kedmi"))
  assert reference is None and "JAXMIA_GMI_DIR" in why  # bench_lowres.py: jaxmia alone, no ratio
  (tmp_path / "gmi").mkdir()
  (tmp_path / "kedmi").mkdir()
  dirs = f"JAXMIA_GMI_DIR={tmp_path / 'gmi'}\nJAXMIA_KEDMI_DIR={tmp_path / 'kedmi'}\nJAXMIA_KEDMI_COMMIT=abc\n"
  (tmp_path / "reference.env").write_text(env + dirs)
  reference, why = benchmarks.find_reference(tmp_path, needs=("gmi", "kedmi"))
  assert why == "" and reference.gmi_dir == str(tmp_path / "gmi") and reference.commits == {"kedmi": "abc"}
  assert reference.env()["JAXMIA_KEDMI_DIR"] == str(tmp_path / "kedmi")
  assert reference.record()["gmi_dir"] == os.path.relpath(tmp_path / "gmi", benchmarks.ROOT)  # no machine's path


def test_reference_needs_the_rlb_and_brep_checkouts(tmp_path, no_reference_variables):
  fake_python = tmp_path / "python"
  fake_python.write_text("#!/bin/sh\necho '{\"torch\": \"9.9\"}'\n")
  fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
  for name in ("gmi", "kedmi", "rlb"):
    (tmp_path / name).mkdir()
  env = (f"JAXMIA_TORCH_PYTHON={fake_python}\nJAXMIA_GMI_DIR={tmp_path / 'gmi'}\n"
         f"JAXMIA_KEDMI_DIR={tmp_path / 'kedmi'}\n")
  (tmp_path / "reference.env").write_text(env)
  for needs, missing in ((("rlb",), "JAXMIA_RLB_DIR"), (("gmi", "brep"), "JAXMIA_BREP_DIR")):
    reference, why = benchmarks.find_reference(tmp_path, needs=needs)
    assert reference is None and missing in why  # bench_lowres.py's RLB / BREP rows: jaxmia alone, no ratio
  (tmp_path / "reference.env").write_text(env + f"JAXMIA_RLB_DIR={tmp_path / 'rlb'}\nJAXMIA_RLB_COMMIT=abc\n"
                                          f"JAXMIA_BREP_DIR={tmp_path / 'missing'}\n")
  reference, why = benchmarks.find_reference(tmp_path, needs=("rlb", "brep"))
  assert reference is None and "missing" in why
  reference, why = benchmarks.find_reference(tmp_path, needs=("rlb",))
  assert why == "" and reference.rlb_dir == str(tmp_path / "rlb") and reference.commits == {"rlb": "abc"}
  assert reference.env()["JAXMIA_RLB_DIR"] == str(tmp_path / "rlb") and reference.record()["rlb_dir"]


def test_references_per_row_lose_only_the_rows_of_a_missing_checkout(tmp_path, no_reference_variables):
  log = tmp_path / "checks"
  fake_python = tmp_path / "python"  # answers the check and logs which checkouts it was asked for
  fake_python.write_text(f"#!/bin/sh\necho \"$3\" >> {log}\necho '{{\"torch\": \"9.9\"}}'\n")
  fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
  (tmp_path / "gmi").mkdir()
  (tmp_path / "reference.env").write_text(f"JAXMIA_TORCH_PYTHON={fake_python}\nJAXMIA_GMI_DIR={tmp_path / 'gmi'}\n")
  per_row = benchmarks.references_per_row(tmp_path, dict(gmi_gan="gmi", gmi_attack="gmi", rlb_episode="rlb"))
  assert per_row["gmi_gan"][0].gmi_dir == str(tmp_path / "gmi") and per_row["gmi_gan"][1] == ""
  assert per_row["gmi_attack"] == per_row["gmi_gan"]
  assert per_row["rlb_episode"][0] is None and "JAXMIA_RLB_DIR" in per_row["rlb_episode"][1]
  assert log.read_text().split() == ["gmi"]  # one check per checkout present; a missing folder needs none


def test_bench_lowres_rows_need_their_own_checkouts():
  listing = subprocess.run(  # in a child: the script defines absl flags at import
      [sys.executable, "-c", "import json, sys; sys.path.insert(0, 'scripts'); import bench_lowres as b; "
       "print(json.dumps([b.REPOS, b.ROWS, b.torch_case('rlb_episode', 3, 2), b.torch_case('brep_iteration', 3, 2)]))"],
      cwd=benchmarks.ROOT, capture_output=True, text=True, check=True)
  repos, rows, rlb, brep = json.loads(listing.stdout.strip().splitlines()[-1])
  assert set(repos) == set(rows) and repos["rlb_episode"] == "rlb" and repos["brep_iteration"] == "brep"
  assert rlb["B"] == 3 and rlb["steps"] == 2 and rlb["replay_batch"] == 256 and rlb["stored"] > 256
  assert brep["sphere_points"] == 32 and brep["point_clamp"] == [-1.5, 1.5]


@pytest.mark.slow
def test_bench_lowres_rlb_brep_without_checkouts_print_jaxmia_alone(tmp_path, no_reference_variables):
  fake_python = tmp_path / "python"  # a reference interpreter with GMI / KED-MI but no RLB-MI / BREP-MI checkout
  fake_python.write_text("#!/bin/sh\necho '{\"torch\": \"9.9\"}'\n")
  fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
  (tmp_path / "gmi").mkdir()
  (tmp_path / "kedmi").mkdir()
  (tmp_path / "reference.env").write_text(f"JAXMIA_TORCH_PYTHON={fake_python}\nJAXMIA_GMI_DIR={tmp_path / 'gmi'}\n"
                                          f"JAXMIA_KEDMI_DIR={tmp_path / 'kedmi'}\n")
  result = subprocess.run(
      [sys.executable, str(benchmarks.ROOT / "scripts" / "bench_lowres.py"), "--rows=rlb_episode,brep_iteration",
       "--batch=2", "--attack_steps=1", f"--reference={tmp_path}", "--rounds=1", "--matmul_size=0", "--max_wait=0",
       f"--json={tmp_path / 'l.json'}"], capture_output=True, text=True, check=True)
  assert "No PyTorch reference environment" in result.stdout and "JAXMIA_RLB_DIR" in result.stdout
  table = [line for line in result.stdout.splitlines() if line.startswith("|")]
  assert table[0] == "| row | B | unit | jaxmia s/iter | jaxmia rate | other cores |"
  assert table[2].startswith("| RLB-MI episode | 2 | episodes x agents/s |")
  assert table[3].startswith("| BREP-MI iteration | 2 | queries/s |")
  record = json.loads((tmp_path / "l.json").read_text())
  assert record["reference"] is None and record["side_by_side"] is False
  rows = record["tables"][0]["rows"]
  assert all(row["ratio"] is None and "torch_rate" not in row for row in rows)
  assert rows[1]["jaxmia_rate"] == pytest.approx(2 * 33 / rows[1]["jaxmia_s"])  # 33 target queries per latent


@pytest.mark.slow
def test_bench_lowres_without_reference_prints_jaxmia_alone(tmp_path, no_reference_variables):
  result = subprocess.run(
      [sys.executable, str(benchmarks.ROOT / "scripts" / "bench_lowres.py"), "--rows=gmi_gan", "--batch=2",
       f"--reference={tmp_path}", "--rounds=1", "--matmul_size=0", "--max_wait=0", f"--json={tmp_path / 'l.json'}"],
      capture_output=True, text=True, check=True)
  assert "No PyTorch reference environment" in result.stdout
  table = [line for line in result.stdout.splitlines() if line.startswith("|")]
  assert table[0] == "| row | B | jaxmia s/iter | jaxmia img/s | other cores |"
  assert table[2].startswith("| GMI GAN | 2 |")
  record = json.loads((tmp_path / "l.json").read_text())
  assert record["reference"] is None and record["side_by_side"] is False
  assert all(row["ratio"] is None and "torch_rate" not in row for row in record["tables"][0]["rows"])


@pytest.mark.slow
@pytest.mark.skipif(not all(os.environ.get(f"JAXMIA_{name}") for name in (
    "TORCH_PYTHON", "GMI_DIR", "KEDMI_DIR", "RLB_DIR", "BREP_DIR")), reason="needs the reference environment")
def test_torch_worker_runs_the_lowres_cases():
  listing = subprocess.run(
      [sys.executable, "-c", "import json, sys; sys.path.insert(0, 'scripts'); import bench_lowres as b; "
       "print(json.dumps([b.torch_case(k, 2, 1) for k in b.ROWS]))"],
      cwd=benchmarks.ROOT, capture_output=True, text=True, check=True)
  cases = json.loads(listing.stdout.strip().splitlines()[-1])
  assert [c["kind"] for c in cases] == ["gmi_gan", "kedmi_gan", "gmi_attack", "kedmi_attack", "rlb_episode",
                                        "brep_iteration"]
  with benchmarks.Worker("PyTorch", [os.environ["JAXMIA_TORCH_PYTHON"], str(benchmarks.TORCH_WORKER)]) as worker:
    for case in cases:
      assert worker.call("prepare", case=case)["setup_s"] > 0
      assert worker.call("round", case=case)["seconds"] > 0


def test_a_failing_request_reports_the_exception_not_a_trailing_note(tmp_path):
  """JAX appends a note after an exception's traceback; the row's error names the exception itself."""
  script = tmp_path / "worker.py"
  script.write_text(
      "from jaxmia import benchmarks\n"
      "def handle(request):\n"
      "  raise ValueError('compiler_options can only be passed to top-level jax.jit\\n----\\nFor simplicity')\n"
      "benchmarks.serve(handle)\n")
  worker = benchmarks.Worker("jaxmia", [sys.executable, str(script)])
  try:
    with pytest.raises(benchmarks.WorkerError) as failure:
      worker.call("prepare", case={})
  finally:
    worker.close()
  assert str(failure.value) == ("the jaxmia worker failed: ValueError: compiler_options can only be passed to "
                                "top-level jax.jit")
