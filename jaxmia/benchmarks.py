"""What every `scripts/bench_*.py` shares: the PyTorch reference environment, side-by-side rounds, the table.

Each side of a comparison (jaxmia, and PPA's / NVlabs' PyTorch when the reference environment exists) runs in
a long-lived child process, a `Worker` answering JSON requests (`serve`): `prepare` builds and warms up a case
(compilation excluded), `round` times it once. `compare` prepares every side, then runs `rounds` rounds, each
side once per round in turn, the order reversed every other round (A B, B A, A B, ...; the idle side waits
on its stdin), and reports each side's median over rounds, so both see the same machine in the same minutes.
The PyTorch side is `scripts/bench_torch.py` in the reference interpreter, which `scripts/setup_reference.sh`
installs with `reference.env` (`JAXMIA_TORCH_PYTHON`, `JAXMIA_PPA_DIR`, `JAXMIA_SG2_DIR`, optionally
`JAXMIA_GMI_DIR`, `JAXMIA_KEDMI_DIR`, `JAXMIA_RLB_DIR` and `JAXMIA_BREP_DIR`); without it a
benchmark says so in one line and shows jaxmia's figures alone: no PyTorch column, no ratio.

`Report` prints the table and writes it to JSON with the machine (CPU model, cores), XLA's matmul rate before
and after the rows, the jax / jaxlib / torch versions, the commit (and whether the tree was dirty) and which
ratio columns were measured side by side.

Only the standard library is imported at module level: the PyTorch worker loads this file by path in the
reference interpreter, where neither jaxmia's dependencies nor absl exist.
"""
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCH_WORKER = ROOT / "scripts" / "bench_torch.py"
REFERENCE_ENV = "reference.env"
REPLY_MARK = "@jaxmia.benchmarks "
SETUP_HINT = "scripts/setup_reference.sh creates one"
PROCEDURE = ("each side in its own process, warmed up first; rounds interleaved (every side once per round, the "
             "order reversed every other round, jaxmia first in round 1); each side's median over rounds")

# ------------------------------------------------------------------------------------------------ flags


def define_flags(default_rounds: int = 3) -> None:
  """The flags every benchmark takes (call once at the top of a script)."""
  from absl import flags  # noqa: PLC0415 (absl is absent in the reference interpreter that loads this file)

  flags.DEFINE_string("reference", None, f"Folder of the PyTorch reference environment's {REFERENCE_ENV} "
                      "(default: $JAXMIA_REFERENCE, else ../reference beside the checkout); 'none': jaxmia alone.")
  flags.DEFINE_integer("rounds", default_rounds, "Interleaved rounds per row (each side's median is reported).")
  flags.DEFINE_integer("matmul_size", 4096, "Side of the float32 XLA matmul timed before and after (0: skip).")
  flags.DEFINE_float("max_wait", 30.0, "Seconds to wait, before each timed run, for other processes to go quiet.")
  flags.DEFINE_float("threshold", 0.2, "Cores used by other processes below which the machine counts as quiet.")
  flags.DEFINE_string("json", None, "Where to write the results (default: runs/bench/<script>-<time>.json).")
  flags.DEFINE_bool("serve", False, "Internal: run as this script's jaxmia-side worker (requests on stdin).")


def settings(flag_values, names) -> dict:
  """{flag: value} of `names` for the JSON record."""
  return {name: flag_values[name].value for name in names}


# ------------------------------------------------------------------------------------- reference environment


@dataclasses.dataclass(frozen=True)
class Reference:
  """A usable PyTorch reference environment (from `reference.env` and/or the environment variables)."""
  python: str
  ppa_dir: str | None
  sg2_dir: str | None
  source: str
  commits: dict
  versions: dict  # torch, torchvision, as the worker reports them
  gmi_dir: str | None = None    # AI-secure/GMI-Attack
  kedmi_dir: str | None = None  # SCccc21/Knowledge-Enriched-DMI
  rlb_dir: str | None = None    # HanGyojin/RLB-MI
  brep_dir: str | None = None   # m-kahla/Label-Only-Model-Inversion-Attacks-via-Boundary-Repulsion

  def env(self) -> dict:
    """Environment of a `scripts/bench_torch.py` child."""
    extra = {"JAXMIA_PPA_DIR": self.ppa_dir, "JAXMIA_SG2_DIR": self.sg2_dir, "JAXMIA_GMI_DIR": self.gmi_dir,
             "JAXMIA_KEDMI_DIR": self.kedmi_dir, "JAXMIA_RLB_DIR": self.rlb_dir, "JAXMIA_BREP_DIR": self.brep_dir}
    return dict(os.environ, **{k: v for k, v in extra.items() if v})

  def record(self) -> dict:
    """The JSON record's view: paths relative to the checkout, so a committed record names no machine's folders."""
    paths = dict(python=self.python, ppa_dir=self.ppa_dir, sg2_dir=self.sg2_dir, gmi_dir=self.gmi_dir,
                 kedmi_dir=self.kedmi_dir, rlb_dir=self.rlb_dir, brep_dir=self.brep_dir, source=self.source)
    relative = {k: os.path.relpath(v, ROOT) if v and os.path.isabs(v) else v for k, v in paths.items()}
    return dict(relative, commits=self.commits, **self.versions)


def default_reference_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("JAXMIA_REFERENCE") or ROOT.parent / "reference")


def read_env_file(path) -> dict:
  """`KEY=VALUE` lines (shell-quoted values, `#` comments) of a file such as `reference.env`."""
  values = {}
  for line in pathlib.Path(path).read_text().splitlines():
    line = line.strip()
    if line and not line.startswith("#") and "=" in line:
      key, value = line.split("=", 1)
      words = shlex.split(value)
      values[key.strip()] = words[0] if words else ""
  return values


def find_reference(directory=None, needs=()) -> tuple[Reference | None, str]:
  """(reference, "") or (None, why there is none). `directory` holds `reference.env` ('none': no reference);
  variables set in the environment take precedence over the file's. `needs`: 'ppa', 'sg2', 'gmi', 'kedmi',
  'rlb', 'brep' checkouts.
  The interpreter is asked for its versions (`scripts/bench_torch.py --check`), so a broken one counts as none."""
  if directory is not None and str(directory).lower() == "none":
    return None, "--reference=none"
  folder = pathlib.Path(directory) if directory else default_reference_dir()
  env_file = folder / REFERENCE_ENV
  values = read_env_file(env_file) if env_file.is_file() else {}
  repos = ("ppa", "sg2", "gmi", "kedmi", "rlb", "brep")
  keys = ("JAXMIA_TORCH_PYTHON",) + tuple(f"JAXMIA_{r.upper()}_{k}" for r in repos for k in ("DIR", "COMMIT"))
  values.update({k: os.environ[k] for k in keys if os.environ.get(k)})
  source = str(env_file) if env_file.is_file() else "environment variables"
  python = values.get("JAXMIA_TORCH_PYTHON")
  if not python:
    return None, f"no {env_file} and no JAXMIA_TORCH_PYTHON; {SETUP_HINT}"
  if not os.access(python, os.X_OK):
    return None, f"JAXMIA_TORCH_PYTHON={python} (from {source}) is not an executable"
  dirs = {r: values.get(f"JAXMIA_{r.upper()}_DIR") for r in repos}
  for need in needs:
    if not dirs[need] or not os.path.isdir(dirs[need]):
      return None, f"JAXMIA_{need.upper()}_DIR={dirs[need]} (from {source}) is not a folder"
  env = dict(os.environ, **{f"JAXMIA_{k.upper()}_DIR": v for k, v in dirs.items() if v})
  check = subprocess.run([python, str(TORCH_WORKER), "--check", ",".join(needs)], capture_output=True, text=True,
                         env=env, check=False)
  lines = check.stdout.strip().splitlines()
  if check.returncode or not lines:
    tail = " | ".join((check.stderr or "").strip().splitlines()[-2:])
    return None, f"{python} (from {source}) failed its check: {tail}"
  commits = {k: values[f"JAXMIA_{k.upper()}_COMMIT"] for k in dirs if values.get(f"JAXMIA_{k.upper()}_COMMIT")}
  return Reference(python, dirs["ppa"], dirs["sg2"], source, commits, json.loads(lines[-1]), gmi_dir=dirs["gmi"],
                   kedmi_dir=dirs["kedmi"], rlb_dir=dirs["rlb"], brep_dir=dirs["brep"]), ""


def references_per_row(directory, repos: dict) -> dict:
  """{row: (reference, why)} for rows that each need one checkout (`repos`: {row: 'gmi', ...}), so a missing
  checkout costs only its own rows their PyTorch side; each checkout is checked once."""
  found = {repo: find_reference(directory, needs=(repo,)) for repo in dict.fromkeys(repos.values())}
  return {row: found[repo] for row, repo in repos.items()}


def no_reference_line(why: str) -> str:
  return f"No PyTorch reference environment ({why}): jaxmia's figures alone, no ratios."


# ----------------------------------------------------------------------------------------- worker processes


class WorkerError(RuntimeError):
  pass


class Worker:
  """A child process answering each JSON request line on its stdin with one JSON line (see `serve`)."""

  def __init__(self, name: str, argv, env=None):
    self.name = name
    self._log = tempfile.TemporaryFile()  # noqa: SIM115 (the child's stderr, as long as it lives; see close())
    self._stdout = []  # unmarked lines, printed before `serve`
    self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                  text=True, env=env)

  def call(self, op: str, **fields) -> dict:
    try:
      self._proc.stdin.write(json.dumps(dict(fields, op=op)) + "\n")
      self._proc.stdin.flush()
      line = self._proc.stdout.readline()
      while line and not line.startswith(REPLY_MARK):  # printed before `serve` took stdout over
        self._stdout.append(line)
        line = self._proc.stdout.readline()
    except BrokenPipeError:
      line = ""
    if not line:
      raise WorkerError(f"the {self.name} worker exited (code {self._proc.wait()}): {self.log_tail()}")
    reply = json.loads(line[len(REPLY_MARK):])
    if "error" in reply:
      raise WorkerError(f"the {self.name} worker failed: {reply['error']}")
    return reply

  def log_tail(self, lines: int = 3) -> str:
    """The last `lines` lines of what the worker printed (stderr, and stdout before `serve`)."""
    fd = self._log.fileno()  # pread: the child shares the file offset
    text = "".join(self._stdout) + os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
    return " | ".join(text.strip().splitlines()[-lines:])

  def close(self):
    if self._proc.poll() is None:
      self._proc.stdin.close()
      try:
        self._proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
    self._proc.stdout.close()
    self._log.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def case_handler(prepare):
  """A worker's `handle` over `prepare(case) -> (run, units)` or `(run, units, info)`: `prepare` builds and keeps
  a case's `run` (reply: its setup seconds and the `info` dict's fields, e.g. FLOPs per unit), `round` times one
  `run()` (reply: `timed`'s seconds per unit). The jaxmia side keeps freed host memory for reuse, as jaxmia's
  programs do (`jaxmia.host_allocator`; set before the first case builds anything)."""
  calls = {}

  def handle(request):
    case = request["case"]
    key = str(sorted(case.items()))
    if request["op"] == "prepare":
      from jaxmia import host_allocator  # noqa: PLC0415 (the PyTorch worker loads this file by path)
      host_allocator.keep_freed_memory()
      start = time.perf_counter()
      run, units, *info = prepare(case)
      calls[key] = run, units
      return dict(*info, setup_s=time.perf_counter() - start)
    return timed(*calls[key])

  return handle


def serve(handle) -> None:
  """A worker's loop: `handle(request) -> dict` for each JSON line on stdin, its reply (with the process's
  `peak_rss_gb` so far) as one line `REPLY_MARK + JSON` on the original stdout; whatever else the process
  prints from now on goes to stderr (and `Worker` skips unmarked lines printed before). An exception is
  replied as {'error': ...} and the loop goes on."""
  replies = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  for line in sys.stdin:
    try:
      reply = dict(handle(json.loads(line)))
    except Exception as e:  # the driver reports it and stops the row
      message = str(e).strip().splitlines()  # not the traceback's last line: JAX appends a note after it
      reply = {"error": f"{type(e).__name__}: {message[0] if message else ''}", "traceback": traceback.format_exc()}
    reply["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    replies.write(REPLY_MARK + json.dumps(reply) + "\n")


def _busy_seconds() -> float:
  """CPU seconds the whole machine has spent busy (all but idle and iowait), from /proc/stat."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except OSError:
    return float("nan")
  return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def seconds_of(fn) -> float:
  """Wall seconds of one `fn()` call (which blocks until its work is done)."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def timed(fn, units: float = 1.0) -> dict:
  """Runs `fn()` once: wall and process CPU seconds per unit, and the cores other processes used meanwhile.

  A `fn` whose call includes work outside what is compared times itself and returns the seconds of the
  compared work (a number; its CPU seconds are taken in the same proportion); otherwise the call's wall time
  counts."""
  busy, cpu, start = _busy_seconds(), time.process_time(), time.perf_counter()
  measured = fn()
  wall, own = time.perf_counter() - start, time.process_time() - cpu
  seconds = measured if isinstance(measured, (int, float)) else wall
  return dict(seconds=seconds / units, cpu_seconds=own * seconds / max(wall, 1e-9) / units,  # the compared share
              other_cores=max(_busy_seconds() - busy - own, 0.0) / max(wall, 1e-9))


def wait_quiet(max_wait: float, threshold: float, window: float = 1.0) -> float:
  """Waits (at most `max_wait` s) until other processes use fewer than `threshold` cores; returns the last
  reading (this process sleeps, so all the busy time is others')."""
  deadline, other = time.monotonic() + max_wait, float("nan")
  while time.monotonic() < deadline:
    busy = _busy_seconds()
    time.sleep(window)
    other = (_busy_seconds() - busy) / window
    if other < threshold:
      break
  return other


# ----------------------------------------------------------------------------------------- rounds, medians


def interleaved_order(names, rounds: int) -> list[list[str]]:
  """Which side runs when: every side once per round, the order reversed every other round."""
  names = list(names)
  return [names if r % 2 == 0 else names[::-1] for r in range(rounds)]


def summarize(rounds: list[dict], prepared: dict | None = None) -> dict:
  """A side's figures: the median (and range) over rounds of seconds per unit, the most other processes used."""
  seconds = [r["seconds"] for r in rounds]
  summary = dict(prepared or {})
  summary.update(seconds=statistics.median(seconds), seconds_min=min(seconds), seconds_max=max(seconds),
                 rounds=len(rounds), round_seconds=seconds, other_cores=max(r.get("other_cores", 0.0) for r in rounds))
  if all("cpu_seconds" in r for r in rounds):
    summary["cpu_seconds"] = statistics.median(r["cpu_seconds"] for r in rounds)
  summary["peak_rss_gb"] = max([r.get("peak_rss_gb", 0.0) for r in rounds] + [summary.get("peak_rss_gb", 0.0)])
  summary.pop("op", None)
  return summary


def compare(workers: dict, cases: dict, rounds: int, *, max_wait: float = 0.0, threshold: float = 0.2) -> dict:
  """{side: summary}: `cases[side]` prepared (warm) on `workers[side]` first, then timed in interleaved rounds."""
  prepared = {name: worker.call("prepare", case=cases[name]) for name, worker in workers.items()}
  results = {name: [] for name in workers}
  for order in interleaved_order(workers, rounds):
    for name in order:
      wait_quiet(max_wait, threshold)
      results[name].append(workers[name].call("round", case=cases[name]))
  return {name: summarize(results[name], prepared[name]) for name in workers}


@contextlib.contextmanager
def sides(script, reference: Reference | None):
  """{'jaxmia': `script --serve` in this interpreter, 'torch': scripts/bench_torch.py in the reference one
  (with a reference)}, closed on exit: a row's fresh processes."""
  workers = {"jaxmia": Worker("jaxmia", [sys.executable, str(script), "--serve"])}
  try:
    if reference:
      workers["torch"] = Worker("PyTorch", [reference.python, str(TORCH_WORKER)], env=reference.env())
    yield workers
  finally:
    for worker in workers.values():
      worker.close()


def side_by_side_row(summaries: dict, per_unit: float = 1.0, **fields) -> dict:
  """A table row: `fields`, each side's seconds per unit (`<side>_s`) and rate (`<side>_rate`: `per_unit`
  over it, e.g. images per step), the ratio of jaxmia's rate to PyTorch's when both ran, the most cores
  other processes used while either was timed, and each side's summary (`sides`)."""
  row = dict(fields)
  for name, summary in summaries.items():
    row[f"{name}_s"] = summary["seconds"]
    row[f"{name}_rate"] = per_unit / summary["seconds"]
    row[f"{name}_rss_gb"] = summary["peak_rss_gb"]
  row["ratio"] = ratio(row.get("jaxmia_rate"), row.get("torch_rate"))
  row["round_ratios"] = round_ratios(summaries)
  row["side_by_side"] = row["ratio"] is not None
  row["other_cores"] = max(summary["other_cores"] for summary in summaries.values())
  row["sides"] = summaries
  return row


def ratio(ours_per_second, theirs_per_second):
  """jaxmia's speed over PyTorch's (> 1: jaxmia faster); None without both."""
  if ours_per_second is None or not theirs_per_second:
    return None
  return ours_per_second / theirs_per_second


def round_ratios(summaries: dict) -> list[float] | None:
  """jaxmia's speed over PyTorch's in each round (a round's two runs are adjacent in time, so a host whose
  speed drifts between rounds moves both); their range shows how far the median ratio can be trusted. None
  without both sides."""
  ours, theirs = (summaries.get(name, {}).get("round_seconds") for name in ("jaxmia", "torch"))
  if not ours or not theirs or len(ours) != len(theirs):
    return None
  return [t / o for o, t in zip(ours, theirs, strict=True)]


# ------------------------------------------------------------------------------------------ machine, report


def xla_matmul_gflops(size: int, repeats: int = 5) -> float | None:
  """XLA's float32 GFLOP/s on a `size`² matrix product, median of `repeats` (how fast the machine is now)."""
  if size <= 0:
    return None
  import jax  # noqa: PLC0415 (the reference interpreter loads this module and has no jax)
  import jax.numpy as jnp  # noqa: PLC0415 (as above)

  a = jnp.ones((size, size), jnp.float32)
  product = jax.jit(lambda a: a @ a)
  jax.block_until_ready(product(a))
  times = [seconds_of(lambda: jax.block_until_ready(product(a))) for _ in range(repeats)]
  return 2 * size**3 / statistics.median(times) / 1e9


def compiled_flops(fn, *args) -> float:
  """XLA's count of floating-point operations in the compiled `jax.jit(fn)(*args)` (its cost analysis)."""
  import jax  # noqa: PLC0415 (the reference interpreter loads this module and has no jax)

  return lowered_flops(jax.jit(fn).lower(*args))


def lowered_flops(lowered) -> float:
  """XLA's count of floating-point operations in a lowered computation (`jax.stages.Lowered`), once compiled."""
  analysis = lowered.compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # one entry per computation in older jax versions
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0))


def flop_rate(summary: dict, matmul_gflops: float | None) -> dict:
  """{'gflops': XLA-counted GFLOP/s of a side's median time, 'matmul_share': that over `matmul_gflops`} when
  its `prepare` reported `flops_per_unit` (else {}): how much of the machine's dense-matmul rate a step reaches."""
  flops = summary.get("flops_per_unit")
  if not flops:
    return {}
  gflops = flops / summary["seconds"] / 1e9
  return dict(gflops=gflops, matmul_share=gflops / matmul_gflops if matmul_gflops else None)


@dataclasses.dataclass(frozen=True)
class Column:
  """A table column: `key` of a row, its format (a format spec or a function), and whether it is PyTorch's
  (shown only with a reference environment; a `ratio` column is listed as measured side by side)."""
  header: str
  key: str
  fmt: object = ".3g"
  torch: bool = False
  ratio: bool = False

  def cell(self, row: dict) -> str:
    value = row.get(self.key)
    if value is None:
      return "-"
    if callable(self.fmt):
      return self.fmt(value)
    return format(value, self.fmt) if isinstance(value, (int, float)) else str(value)


def times_cell(value) -> str:
  return f"**{value:.2f}x**"


def range_cell(values) -> str:
  return f"{min(values):.2f}–{max(values):.2f}"


def percent_cell(value) -> str:
  return f"{100 * value:.0f} %"


# The side-by-side columns every script's table ends with: the ratio of the medians and its range over rounds.
RATIO_COLUMNS = (Column("ratio", "ratio", times_cell, torch=True, ratio=True),
                 Column("per round", "round_ratios", range_cell, torch=True))


class Report:
  """One benchmark run: prints the machine and the table header now, each row as it comes, the matmul rate
  after the rows at the end (`finish`), and writes everything to JSON."""

  def __init__(self, name: str, columns=None, *, reference: Reference | None, why: str = "",
               matmul_size: int = 4096, json_path: str | None = None, settings: dict | None = None, out=None):
    from jaxmia import provenance  # noqa: PLC0415 (the reference interpreter loads this file without jaxmia)

    self.out = out or sys.stdout
    self.reference, self.matmul_size = reference, matmul_size
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    self.json_path = pathlib.Path(json_path or pathlib.Path("runs", "bench", f"{name}-{stamp}.json"))
    self.record = dict(benchmark=name, machine=provenance.machine_info(), settings=settings or {}, procedure=PROCEDURE,
                       reference=reference.record() if reference else None, no_reference_reason=None if reference
                       else why, matmul=dict(size=matmul_size, gflops_before=xla_matmul_gflops(matmul_size)))
    m = self.record["machine"]
    versions = f"jax {m['jax']} (jaxlib {m['jaxlib']})"
    if reference:
      versions += f", torch {reference.versions.get('torch')} (torchvision {reference.versions.get('torchvision')})"
    cpu = provenance.cpu_label(m)
    self.print(f"{name}: {cpu}, {m['cores']} cores; {versions}; commit {m['commit'][:10]}"
               f"{' (dirty tree)' if m['dirty'] else ''}; load average {m['load_average']:.2f}")
    self.print(f"XLA {matmul_size}^2 float32 matmul before the rows: {_rate(self.record['matmul']['gflops_before'])}")
    if reference:
      self.print(f"PyTorch side: {reference.python} ({reference.source}); every ratio column is measured side by "
                 "side in this run")
    else:
      self.print(no_reference_line(why))
    self.tables = []
    if columns is not None:
      self.section(None, columns)

  def section(self, title: str | None, columns):
    """Starts a (further) table: its title, if any, and header; the rows added next belong to it."""
    columns = [c for c in columns if self.reference or not c.torch]
    self.tables.append(dict(title=title, columns=columns, rows=[]))
    self.print(f"\n{title}\n" if title else "")
    self.print("| " + " | ".join(c.header for c in columns) + " |")
    self.print("|" + "---|" * len(columns))

  def print(self, text: str):
    print(text, file=self.out, flush=True)

  def add(self, row: dict) -> dict:
    """Records a row of the current table (full detail in the JSON) and prints its line."""
    table = self.tables[-1]
    table["rows"].append(row)
    columns = table["columns"]
    if "error" in row:
      self.print(f"| {columns[0].cell(row)} | failed: {row['error']} |")
    else:
      self.print("| " + " | ".join(c.cell(row) for c in columns) + " |")
    return row

  def finish(self) -> dict:
    """Prints the matmul rate after the rows and writes the JSON record (returned)."""
    after = xla_matmul_gflops(self.matmul_size)
    self.record["matmul"]["gflops_after"] = after
    self.record["tables"] = [dict(title=t["title"], rows=t["rows"], side_by_side=[c.header for c in t["columns"]
                                                                                  if c.ratio],
                                  columns=[dict(header=c.header, key=c.key, torch=c.torch, ratio=c.ratio)
                                           for c in t["columns"]]) for t in self.tables]
    self.record["side_by_side"] = any(t["side_by_side"] for t in self.record["tables"])
    self.print(f"\nXLA {self.matmul_size}^2 float32 matmul after the rows: {_rate(after)}")
    self.json_path.parent.mkdir(parents=True, exist_ok=True)
    self.json_path.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
    self.print(f"Written to {self.json_path}")
    return self.record


def _rate(gflops) -> str:
  return "not measured" if gflops is None else f"{gflops:.0f} GFLOP/s"
