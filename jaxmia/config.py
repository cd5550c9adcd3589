"""Config files: loading them by path from any folder, and listing their fields with the comments that document
them.

A config file is a Python file whose `get_config(arg=None)` returns an `ml_collections.ConfigDict`; programs
name it as `path[:arg]` (`--config=configs/digits.py:smoke`). Config files build on one another by path, not
by import: `faces = sibling(__file__, "faces")` runs `faces.py` from the same folder. So a config loads from
any working directory, from a copy of the folder and with a non-editable install, it sees the edited files
beside it (not an installed copy), and no package named `configs` is needed that could shadow, or be shadowed
by, another project's.

Relative paths inside a config (weights folders, `runs/...`) are not touched when a config is loaded: every
program reads them relative to the current working directory, as it reads `--workdir` and `--config.x=...`.

    python -m jaxmia.config show configs/numbers.py:smoke

prints every field with its value and, for each line that set it (later lines override earlier ones, e.g. a
variant's), the file, the line and the comments there: a trailing `# ...` and the comment lines right above.
"""
import ast
import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import io
import os
import pathlib
import tokenize
import types

import ml_collections
from absl import flags

from jaxmia import cli

_ML_COLLECTIONS_DIR = str(pathlib.Path(ml_collections.__file__).resolve().parent)
_JAXMIA_DIR = pathlib.Path(__file__).resolve().parent


def load_file(path) -> types.ModuleType:
  """Runs the config file at `path` as a fresh module (not registered in `sys.modules`) and returns it."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such config file")
  spec = importlib.util.spec_from_file_location(f"jaxmia_config_file.{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(config_file: str, name: str) -> types.ModuleType:
  """The config file `name` (without `.py`) from the folder of `config_file` (pass `__file__`), loaded by path."""
  return load_file(pathlib.Path(config_file).resolve().with_name(f"{name}.py"))


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of `spec` = `path[:arg]`, as `config_flags` builds it: `get_config(arg)`, or `get_config()`."""
  path, *arg = spec.split(":", 1)
  return load_file(path).get_config(*arg)


# ----------------------------------------------------------------------------------------------- documented fields


@dataclasses.dataclass(frozen=True)
class Setting:
  """One line that set a field: where, and the comments there ('' when it has none)."""
  file: str
  line: int
  comment: str


@dataclasses.dataclass(frozen=True)
class Field:
  """A leaf of a config (dotted name), its value and the lines that set it, first to last."""
  name: str
  value: object
  settings: tuple[Setting, ...]


@contextlib.contextmanager
def _recording_assignments():
  """While active, every `ConfigDict` field assignment is recorded: `{(id(parent), key): (parent, [(file, line)])}`
  with the first caller outside ml_collections (the config file, or jaxmia code such as a dataset config)."""
  records = {}
  original = ml_collections.ConfigDict.__setitem__

  def setitem(self, key, value):
    frame = inspect.currentframe().f_back
    while frame is not None and frame.f_code.co_filename.startswith(_ML_COLLECTIONS_DIR):
      frame = frame.f_back
    if frame is not None:
      records.setdefault((id(self), key), (self, []))[1].append((frame.f_code.co_filename, frame.f_lineno))
    original(self, key, value)

  ml_collections.ConfigDict.__setitem__ = setitem
  try:
    yield records
  finally:
    ml_collections.ConfigDict.__setitem__ = original


@dataclasses.dataclass(frozen=True)
class _Source:
  """A Python file's comments by line and the line span of each simple statement."""
  trailing: dict      # line -> text of a comment after code on that line
  full_line: dict     # line -> text of a line that is only a comment
  statements: dict    # line -> (first, last) line of the simple statement covering it
  tree: ast.AST | None


@functools.lru_cache(maxsize=None)
def _source(filename: str) -> _Source:
  try:
    text = pathlib.Path(filename).read_text()
  except OSError:
    return _Source({}, {}, {}, None)
  trailing, full_line, code_lines = {}, {}, set()
  for token in tokenize.generate_tokens(io.StringIO(text).readline):
    line = token.start[0]
    if token.type == tokenize.COMMENT:
      (trailing if line in code_lines else full_line)[line] = token.string.lstrip("#").strip()
    elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
      code_lines.update(range(token.start[0], token.end[0] + 1))
  tree = ast.parse(text)
  statements = {}
  for node in ast.walk(tree):
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Return)):
      for line in range(node.lineno, node.end_lineno + 1):
        statements[line] = (node.lineno, node.end_lineno)
  return _Source(trailing, full_line, statements, tree)


def _comment_at(source: _Source, first: int) -> str:
  """The comment lines right above line `first` and the trailing comment on it, joined."""
  above, line = [], first - 1
  while line in source.full_line:
    above.insert(0, source.full_line[line])
    line -= 1
  return " ".join(part for part in (*above, source.trailing.get(first, "")) if part)


def _assigned_name(source: _Source, first: int) -> ast.Assign | None:
  """For `x.y = name` at line `first`: the last plain assignment `name = ...` above it (e.g. a FieldReference
  shared by several fields, documented where it is made)."""
  statement = next((n for n in ast.walk(source.tree) if isinstance(n, ast.Assign) and n.lineno == first), None)
  if statement is None or not isinstance(statement.value, ast.Name):
    return None
  name = statement.value.id
  earlier = [n for n in ast.walk(source.tree) if isinstance(n, ast.Assign) and n.lineno < first
             and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)]
  return max(earlier, key=lambda n: n.lineno, default=None)


def _comment(filename: str, line: int) -> str:
  """The comments documenting the statement that covers `line` of `filename`."""
  source = _source(filename)
  first, _ = source.statements.get(line, (line, line))
  text = _comment_at(source, first)
  if not text and source.tree is not None:
    definition = _assigned_name(source, first)
    if definition is not None:
      text = _comment_at(source, definition.lineno)
  return text


def _display_path(filename: str) -> str:
  """`filename` as shown: `jaxmia/...` inside the package, relative to the working directory when below it."""
  path = pathlib.Path(filename).resolve()
  if _JAXMIA_DIR in path.parents:
    return str(path.relative_to(_JAXMIA_DIR.parent))
  relative = os.path.relpath(path)
  return path.as_posix() if relative.startswith("..") else relative


def documented_fields(spec: str) -> list[Field]:
  """Every leaf field of the config `spec` (`path[:arg]`) with its value and the lines that set it."""
  with _recording_assignments() as records:
    config = load(spec)
  fields = []

  def walk(node, prefix):
    for key in node.keys():
      value, name = node[key], f"{prefix}{key}"
      if isinstance(value, ml_collections.ConfigDict) and len(value):
        walk(value, name + ".")
        continue
      where = records.get((id(node), key), (None, []))[1]
      settings = tuple(Setting(_display_path(f), line, _comment(f, line)) for f, line in where)
      fields.append(Field(name, value, settings))

  walk(config, "")
  return fields


def format_fields(fields: list[Field]) -> str:
  """`name = value` per field, then one indented `file:line  comment` per line that set it."""
  lines = []
  for field in fields:
    value = "{}" if isinstance(field.value, ml_collections.ConfigDict) else repr(field.value)
    lines.append(f"{field.name} = {value}")
    lines += [f"    {s.file}:{s.line}" + (f"  {s.comment}" if s.comment else "") for s in field.settings]
  return "\n".join(lines)


def main(argv):
  if len(argv) != 3 or argv[1] != "show":
    given = " ".join(argv[1:]) or "nothing"
    raise flags.ValidationError(f"got {given!r}; usage: python -m jaxmia.config show CONFIG_FILE[:ARG]")
  print(format_fields(documented_fields(argv[2])))


if __name__ == "__main__":
  cli.run(main)
