"""Where a result was computed: the machine, the software and the commit, recorded beside each run.

Every program that writes a run folder (training, GAN training, attacks, evaluation) appends an `entry` to the
folder's `provenance.json` when it starts or resumes (`jaxmia.files.record_provenance`), so a study that ran
across machines and commits says which ones, and its reports state it without hand edits (`summary_line`). The
entries are kept apart from `run.json`, the resume record: a run may resume on another machine or commit with the
same settings.

Only the standard library is imported: `jaxmia.benchmarks` records the same machine identity in its tables.
"""
import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess

PROVENANCE_FILE = "provenance.json"
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def cpu_model() -> str:
  """The first CPU's model name from `/proc/cpuinfo` (elsewhere what `platform` knows)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# x86 microarchitectures by (vendor, family, model range): the machine kinds whose speeds differ (a Zen 3 host has
# no AVX-512, a Zen 4 one has it; XLA:CPU's and oneDNN's kernels differ with it), told apart in every record.
MICROARCHITECTURES = (
    ("AuthenticAMD", 25, range(0x00, 0x10), "Zen 3"), ("AuthenticAMD", 25, range(0x10, 0x20), "Zen 4"),
    ("AuthenticAMD", 25, range(0xA0, 0xB0), "Zen 4c"), ("AuthenticAMD", 26, range(0x00, 0x100), "Zen 5"),
    ("AuthenticAMD", 23, range(0x30, 0x40), "Zen 2"), ("GenuineIntel", 6, range(85, 86), "Skylake/Cascade Lake"),
    ("GenuineIntel", 6, range(106, 107), "Ice Lake"), ("GenuineIntel", 6, range(143, 144), "Sapphire Rapids"),
    ("GenuineIntel", 6, range(207, 208), "Emerald Rapids"), ("GenuineIntel", 6, range(173, 174), "Granite Rapids"))
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx_vnni", "amx_tile")  # what the kernels branch on


def cpu_kind(cpuinfo: str | None = None) -> str:
  """`'Zen 3 (family 25, model 1; avx2)'`: the microarchitecture (when known), family, model and vector ISA of
  the first CPU in `/proc/cpuinfo` (or the text `cpuinfo`); '' where there is none to read (not Linux/x86)."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      return ""
  fields = {}
  for line in cpuinfo.splitlines():
    if not line.strip():
      break  # the first CPU's block ends at the first empty line
    key, _, value = line.partition(":")
    fields[key.strip()] = value.strip()
  try:
    vendor, family, model = fields["vendor_id"], int(fields["cpu family"]), int(fields["model"])
  except (KeyError, ValueError):
    return ""
  name = next((n for v, f, models, n in MICROARCHITECTURES if v == vendor and f == family and model in models), "")
  present = set(fields.get("flags", "").split())
  isa = ", ".join(flag for flag in ISA_FLAGS if flag in present) or "no AVX2"
  return f"{name + ' ' if name else ''}(family {family}, model {model}; {isa})"


def package_version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git(*args) -> str:
  """git's output in jaxmia's checkout ('' for an installed copy, which has none, or when git fails)."""
  if not (_ROOT / ".git").exists():
    return ""
  result = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, check=False)
  return result.stdout.strip() if result.returncode == 0 else ""


def machine_info() -> dict:
  """CPU model and kind, cores, versions, the commit and whether tracked files differ from it, the load now."""
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # Linux only
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # not on Windows
  return dict(cpu=cpu_model(), cpu_kind=cpu_kind(), cores=os.cpu_count(), usable_cores=usable,
              machine=platform.machine(), python=platform.python_version(), jax=package_version("jax"),
              jaxlib=package_version("jaxlib"), commit=_git("rev-parse", "HEAD") or "unknown",
              dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
              load_average=load, date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))


# ------------------------------------------------------------------------------------------ run folders

_ENTRY_FIELDS = ("commit", "dirty", "cpu", "cpu_kind", "cores", "usable_cores", "python", "jax", "jaxlib")


@functools.cache
def _process_entry() -> dict:
  """This process's machine and software (computed once: git and /proc are read at the first `entry`)."""
  info = machine_info()
  return {**{k: info[k] for k in _ENTRY_FIELDS}, "jaxmia": package_version("jaxmia")}


def read(folder) -> list[dict]:
  """The entries of `folder/provenance.json`, oldest first ([] if there is none or it is damaged)."""
  try:
    entries = json.loads((pathlib.Path(folder) / PROVENANCE_FILE).read_text())
  except (OSError, ValueError):
    return []
  return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def entry(program: str) -> dict:
  """This process's provenance entry for `program`: its start time, commit, machine and versions."""
  return {"program": program, "started": datetime.datetime.now().astimezone().isoformat(timespec="microseconds"),
          **_process_entry()}


def _commit_label(entry: dict) -> str:
  commit = entry.get("commit") or "unknown"
  return (commit[:7] if commit != "unknown" else "an unknown commit") + (" (dirty tree)" if entry.get("dirty") else "")


def cpu_label(info: dict) -> str:
  """`'AMD EPYC Zen 3 (family 25, model 1; avx2)'`: the CPU model and kind of a `machine_info` or `entry`."""
  return " ".join(filter(None, (info.get("cpu"), info.get("cpu_kind")))) or "an unknown CPU"


def _host_label(entry: dict) -> str:
  return f"{cpu_label(entry)} with {entry['cores']} cores" if entry.get("cores") else cpu_label(entry)


def _in_order(labels) -> list[str]:
  return list(dict.fromkeys(labels))


def summary_line(folders) -> str:
  """One sentence for a report: the commits and machines that computed the run folders in and under `folders`
  (their `provenance.json`), how many run folders (`run.json`) predate these records, and what writes the report."""
  roots = [pathlib.Path(folder) for folder in folders]
  found = lambda name: {p.parent for root in roots if root.exists() for p in root.rglob(name)}
  recorded = sorted(found(PROVENANCE_FILE))
  entries = sorted((e for folder in recorded for e in read(folder)), key=lambda e: e.get("started", ""))
  unrecorded = len(found("run.json") - set(recorded))
  now = _process_entry()
  if entries:
    text = (f"Computed at jaxmia commit: {', '.join(_in_order(map(_commit_label, entries)))}; on: "
            f"{'; '.join(_in_order(map(_host_label, entries)))} (`{PROVENANCE_FILE}` of {len(recorded)} folders")
    text += f"; older run folders without one: {unrecorded})" if unrecorded else ")"
  else:
    text = f"No folder here has a `{PROVENANCE_FILE}`" + (f" (older run folders: {unrecorded})" if unrecorded else "")
  return f"{text}. Report written at commit {_commit_label(now)} on {_host_label(now)}."
