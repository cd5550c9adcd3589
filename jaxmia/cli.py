"""What every `python -m jaxmia.<program>` does before its work: checks argv, keeps freed host memory for
reuse (`jaxmia.host_allocator`), joins the other processes (`jax.distributed` when launched multi-host) and
drops orbax's per-checkpoint INFO lines from the log (its warnings and errors still show). TensorFlow is not
imported (not a dependency; `jaxmia.data` keeps it off the accelerators when it is installed).

The one error path for user mistakes: `cli.run(main)` (in place of `absl.app.run(main)`) reports a bad flag,
an unknown config field, an invalid setting or a file problem as one line `error: <what is wrong and what to
do>` on stderr and exits with code 2; the traceback is shown only with `--verbose` or `JAXMIA_TRACEBACK=1`.
Programs still started with `app.run` get the same report through an absl exception handler installed on
import. What counts as a user mistake
(`is_user_error`): anything raised while parsing the command line (the config file included), an `OSError`
(missing or unreadable files, a workdir that is a file, a read-only folder, a full disk), and a `ValueError`,
`TypeError` or `LookupError` raised by jaxmia's own code or a config file (jaxmia reports invalid settings and
inputs that way). Other exceptions are bugs: traceback, exit code 1.
"""
import logging as std_logging
import math
import numbers
import os
import pathlib
import re
import sys
import traceback

import jax
from absl import app, flags, logging

from jaxmia import host_allocator, parallel

TRACEBACK_ENV = "JAXMIA_TRACEBACK"
USER_ERROR_EXIT_CODE = 2
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent

flags.DEFINE_bool("verbose", False, f"On an error, show its Python traceback (or set {TRACEBACK_ENV}=1).")


class _WithoutOrbaxInfo(std_logging.Filter):

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def start(argv) -> None:
  """Call first in an absl `main(argv)`. Arguments that are not flags are a `flags.ValidationError` (the one
  `error: bad command line: ...` line, exit code 2)."""
  if len(argv) > 1:
    raise flags.ValidationError(f"unexpected arguments {' '.join(argv[1:])!r}; this program takes only --flags "
                                "(see --help).")
  logging.get_absl_handler().addFilter(_WithoutOrbaxInfo())
  host_allocator.keep_freed_memory()  # before the backend starts its threads
  parallel.initialize_distributed()
  logging.info("JAX process %d/%d, %d local / %d global devices.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


# ----------------------------------------------------------------------------------------------- config checks


def check_config(config, rules, prefix: str = "config") -> None:
  """Raises one `ValueError` listing every field of `config` that breaks its rule; call before any work.

  `rules`: `(dotted field, rule text, predicate)` triples; a field absent from `config` is skipped, and a
  predicate that raises (a value of the wrong type) counts as broken.
  """
  problems = []
  for field, rule, ok in rules:
    node, present = config, True
    for part in field.split("."):
      if part not in node:
        present = False
        break
      node = node[part]
    if not present:
      continue
    try:
      good = bool(ok(node))
    except (TypeError, ValueError):
      good = False
    if not good:
      problems.append(f"{prefix}.{field}={node!r} must be {rule}")
  if problems:
    raise ValueError("; ".join(problems) + ".")


def number(low=None, high=None, *, low_open: bool = False, high_open: bool = False, integer: bool = False):
  """A predicate: a finite real (an integer if `integer`; bools are not numbers) in the given bounds."""

  def ok(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
      return False
    if integer and not isinstance(value, numbers.Integral):
      return False
    if low is not None and (value <= low if low_open else value < low):
      return False
    return high is None or (value < high if high_open else value <= high)

  return ok


def interval(low, high):
  """A predicate: a pair `(a, b)` of finite reals with `low < a <= b <= high` (`high` None: unbounded)."""
  inside = number(low, high, low_open=True)
  return lambda value: len(value) == 2 and inside(value[0]) and inside(value[1]) and value[0] <= value[1]


def one_of(*choices):
  return lambda value: value in choices


# ----------------------------------------------------------------------------------------------- errors


def traceback_wanted(argv=None) -> bool:
  """`--verbose` on the command line (parsed or not yet) or `JAXMIA_TRACEBACK` set to anything but 0/false."""
  if os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no"):
    return True
  if flags.FLAGS.is_parsed() and "verbose" in flags.FLAGS and flags.FLAGS.verbose:
    return True
  return any(arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1")
             for arg in (sys.argv if argv is None else argv))


def _frames(exc: BaseException) -> list[traceback.FrameSummary]:
  return traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []


def _ours(filename: str) -> bool:
  path = pathlib.Path(filename)
  return _PACKAGE_DIR in path.parents or path.parent.name == "configs"


def _during_flag_parsing(exc: BaseException) -> bool:
  return any(pathlib.Path(f.filename).match("*/absl/flags/_flagvalues.py") for f in _frames(exc))


def is_user_error(exc: BaseException) -> bool:
  """Whether `exc` reports a user mistake rather than a bug (rules in the module docstring)."""
  if isinstance(exc, flags.Error) or _during_flag_parsing(exc):
    return True
  if isinstance(exc, OSError):
    return True
  if not isinstance(exc, (ValueError, TypeError, LookupError)):
    return False
  if any("JAX has removed its internal frames" in note for note in getattr(exc, "__notes__", ())):
    return False  # raised inside a JAX transformation: a bug, even when the last frame left is jaxmia's
  frames = _frames(exc)
  return bool(frames) and _ours(frames[-1].filename)


def _missing_config_field(exc: BaseException, argv) -> str | None:
  """For an unknown `--config.a.b` override: the message naming the argument (and ml_collections' suggestion),
  else None."""
  if not isinstance(exc, (AttributeError, KeyError, flags.UnrecognizedFlagError)):
    return None
  text = str(exc)
  for arg in argv:
    match = re.match(r"--(\w+)\.([\w.]+)(=.*)?$", arg)
    if not match:
      continue
    flag, path = match.group(1), match.group(2)
    unknown = [part for part in path.split(".") if re.search(rf"['\"]{re.escape(part)}['\"]", text)]
    if unknown or re.search(rf"['\"]{re.escape(flag)}\.{re.escape(path)}['\"]", text):
      name = unknown[-1] if unknown else path
      suggestion = re.search(r'Did you mean "(\w+)"', text)
      hint = f"did you mean {suggestion.group(1)!r}? " if suggestion else ""
      return (f"{arg}: the {flag} has no field {name!r}; {hint}only the fields of the config file "
              f"(--{flag}=...) can be set.")
  return None


def error_message(exc: BaseException, argv=None) -> str:
  """The `error: ...` report of a user mistake (one line unless the message itself has several)."""
  argv = sys.argv if argv is None else argv
  text = _missing_config_field(exc, argv)
  if text is None:
    if isinstance(exc, OSError) and exc.strerror and exc.filename and len(exc.args) <= 2:
      text = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, KeyError) and len(exc.args) == 1:
      text = str(exc.args[0])
    else:
      text = str(exc) or type(exc).__name__
    if _during_flag_parsing(exc) or isinstance(exc, flags.Error):
      text = f"bad command line: {text}"
  return f"error: {text.strip()}"


def report(exc: BaseException, argv=None) -> int:
  """Prints the report of a user mistake to stderr (after its traceback when wanted); returns exit code 2."""
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  if traceback_wanted(argv):
    traceback.print_exception(exc)
  message = error_message(exc, argv)
  if not traceback_wanted(argv):
    message += f" (--verbose or {TRACEBACK_ENV}=1 shows the traceback)" if "\n" not in message else ""
  print(message, file=sys.stderr, flush=True)
  return USER_ERROR_EXIT_CODE


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as exc:  # anything raised while parsing is about the command line
    sys.exit(report(exc, argv))


def exit_on_user_error(call, argv=None, user_errors: tuple = ()):
  """Returns `call()`; a user mistake it raises (`is_user_error`, or an instance of `user_errors`) is reported by
  `report` and ends the process with exit code 2, other exceptions propagate (`run`'s error path; `argv`: the
  command line, for `--verbose`)."""
  try:
    return call()
  except Exception as exc:  # sorted below
    if not (isinstance(exc, user_errors) or is_user_error(exc)):
      raise
    sys.exit(report(exc, argv))


def run(main, user_errors: tuple = ()) -> None:
  """`absl.app.run(main)` with the user-error path: flags parsed by `_parse_flags`, `main`'s user mistakes
  (`is_user_error`, or an instance of `user_errors`) reported by `report` (exit code 2); other exceptions keep
  their traceback (exit code 1)."""
  app.run(lambda argv: exit_on_user_error(lambda: main(argv), user_errors=user_errors), flags_parser=_parse_flags)


class _UserErrorHandler(app.ExceptionHandler):
  """For programs started with `app.run`: a user mistake is reported as by `run`, and the process ends with
  exit code 2 (absl re-raises after its handlers, so the code can only be set by ending the process here)."""

  def wants(self, exc):
    return is_user_error(exc)

  def handle(self, exc):
    code = report(exc)
    logging.flush()
    os._exit(code)  # the only way to set the exit code from an absl exception handler


app.install_exception_handler(_UserErrorHandler())
