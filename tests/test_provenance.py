"""jaxmia.provenance: the machine identity of records and reports, and the run folders' provenance.json."""
import json

from jaxmia import files, provenance

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma

processor\t: 1
vendor_id\t: GenuineIntel
"""


def test_cpu_kind_tells_machine_kinds_with_one_model_name_apart():
  assert provenance.cpu_kind(ZEN3) == "Zen 3 (family 25, model 1; avx2)"
  zen4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace("avx2 fma", "avx2 fma avx512f avx512_bf16")
  assert provenance.cpu_kind(zen4) == "Zen 4 (family 25, model 17; avx2, avx512f, avx512_bf16)"
  sapphire = ZEN3.replace("AuthenticAMD", "GenuineIntel").replace("25", "6").replace(": 1\n", ": 143\n", 1)
  assert provenance.cpu_kind(sapphire) == "Sapphire Rapids (family 6, model 143; avx2)"
  assert provenance.cpu_kind(ZEN3.replace(": 25", ": 99")) == "(family 99, model 1; avx2)"  # unknown: numbers only
  assert provenance.cpu_kind("processor: 0\nmodel name: Apple M2\n") == ""


def _as(monkeypatch, commit: str, cpu_kind: str, cores: int = 2):
  """This process as if it ran at `commit` on a `cpu_kind` machine (provenance caches the real one)."""
  entry = dict(provenance._process_entry(), commit=commit, dirty=False, cpu="AMD EPYC", cpu_kind=cpu_kind, cores=cores)
  monkeypatch.setattr(provenance, "_process_entry", lambda: entry)


def test_a_resume_on_another_machine_appends_to_provenance_and_keeps_the_run_record(tmp_path, monkeypatch):
  run, record = tmp_path / "run", {"config": {"lr": 0.1}}
  kw = dict(program="jaxmia.train", state=("checkpoints",), outputs=("checkpoints",), overwrite=False)
  _as(monkeypatch, "a" * 40, "Zen 3 (family 25, model 1; avx2)")
  assert not files.check_run_record(run, record, **kw)
  (run / "checkpoints").mkdir()
  resume_record = (run / files.RUN_RECORD).read_text()
  _as(monkeypatch, "b" * 40, "Sapphire Rapids (family 6, model 143; avx2)")
  assert files.check_run_record(run, record, **kw)  # resumes: another commit and host are not another run
  assert (run / files.RUN_RECORD).read_text() == resume_record
  entries = provenance.read(run)
  assert [(e["program"], e["commit"][0], e["cpu_kind"][:4]) for e in entries] == [
      ("jaxmia.train", "a", "Zen "), ("jaxmia.train", "b", "Sapp")]
  assert entries[0]["started"] <= entries[1]["started"]


def test_a_damaged_provenance_file_is_started_over(tmp_path):
  (tmp_path / provenance.PROVENANCE_FILE).write_text("{not json")
  assert provenance.read(tmp_path) == []
  files.record_provenance(tmp_path, "jaxmia.evaluate")
  assert [e["program"] for e in json.loads((tmp_path / provenance.PROVENANCE_FILE).read_text())] == ["jaxmia.evaluate"]


def test_summary_names_commits_and_hosts_in_order_and_counts_older_runs(tmp_path, monkeypatch):
  _as(monkeypatch, "1111111" + "0" * 33, "Zen 3 (family 25, model 1; avx2)")
  files.record_provenance(tmp_path / "study" / "target", "jaxmia.train")
  _as(monkeypatch, "2222222" + "0" * 33, "Zen 4 (family 25, model 17; avx2, avx512f)")
  files.record_provenance(tmp_path / "study" / "attack" / "evaluation", "jaxmia.evaluate")
  files.record_provenance(tmp_path / "study" / "target", "jaxmia.train")  # the same commit again: named once
  (tmp_path / "study" / "old").mkdir()
  (tmp_path / "study" / "old" / files.RUN_RECORD).write_text("{}")  # a run from before these records
  (tmp_path / "elsewhere").mkdir()
  files.record_provenance(tmp_path / "elsewhere", "jaxmia.gan")  # not one of the folders asked about
  line = provenance.summary_line([tmp_path / "study", tmp_path / "missing"])
  assert line.startswith("Computed at jaxmia commit: 1111111, 2222222; on: AMD EPYC Zen 3 (family 25, model 1; "
                         "avx2) with 2 cores; AMD EPYC Zen 4 (family 25, model 17; avx2, avx512f) with 2 cores "
                         "(`provenance.json` of 2 folders; older run folders without one: 1).")
  assert line.endswith("Report written at commit 2222222 on AMD EPYC Zen 4 (family 25, model 17; avx2, avx512f) "
                       "with 2 cores.")
  assert provenance.summary_line([tmp_path / "missing"]).startswith("No folder here has a `provenance.json`")


def test_this_process_is_described_by_its_checkout():
  entry = provenance.entry("jaxmia.attack")
  assert entry["program"] == "jaxmia.attack" and entry["cores"] >= 1 and entry["jax"]
  assert len(entry["commit"]) == 40 or entry["commit"] == "unknown"  # a checkout's HEAD, or an installed copy
