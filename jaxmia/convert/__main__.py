"""Command line for converting PyTorch weights into jaxmia weights folders, and for looking into torch files.

    python -m jaxmia.convert classifier --arch=resnet152 --num_classes=530 --input=model.pth \\
        --output=converted_weights/resnet152_facescrub [--module_kwargs='{"base_channels": 16}'] [--overwrite]
    python -m jaxmia.convert stylegan2 --input=ffhq.pkl --output=converted_weights/ffhq [--network=G_ema|G|D]
    python -m jaxmia.convert inspect FILE

The first argument is the command; each takes only its own flags (below). Every weights folder is read back
with `jaxmia.model_store.load_model(path)`. A bad input (missing or unsafe file, weights that do not fit) or
command line is one `error:` line and exit code 2.
"""
import json

import jax
import numpy as np
from absl import flags

from jaxmia import cli, model_store
from jaxmia.convert import common, torch_reader

# What a bad input or argument raises (besides `cli.is_user_error`'s): one `error:` line, exit code 2.
_ERRORS = (FileNotFoundError, FileExistsError, torch_reader.TorchFileError, torch_reader.UnsafePickleError,
           common.ConversionError, ValueError)

def _count(variables, collection="params") -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(variables.get(collection, {})))


def _print_summary(rows):
  width = max(len(k) for k, _ in rows)
  for key, value in rows:
    print(f"  {key:<{width}}  {value}")


def parse_num_classes(text: str) -> int | None:
  """`--num_classes`: a positive integer, or 'none' for the backbone only."""
  if text.strip().lower() == "none":
    return None
  try:
    num_classes = int(text)
  except ValueError:
    num_classes = 0
  if num_classes < 1:
    raise ValueError(f"--num_classes={text!r} must be a positive integer or 'none' (the backbone only).")
  return num_classes


def convert_classifier(arch: str, num_classes: int | None, input_path, output, *, module_kwargs: dict | None = None,
                       overwrite: bool = False):
  """Converts the classifier weights in `input_path` into the weights folder `output`; returns the folder."""
  from jaxmia.convert import classifiers  # noqa: PLC0415 (the model code loads only for its command)
  state = classifiers.classifier_state_dict(input_path)
  module_kwargs = classifiers.classifier_module_kwargs(arch, state, num_classes, **(module_kwargs or {}))
  variables = classifiers.classifier_from_torch(arch, state, num_classes, **module_kwargs)
  folder = model_store.save_model(output, variables, kind="classifier",
                                  module_kwargs={"arch": arch, "num_classes": num_classes, **module_kwargs},
                                  source=input_path, overwrite=overwrite)
  print("Converted classifier:")
  _print_summary([("arch", arch), ("classes", num_classes if num_classes is not None else "none (features)"),
                  ("module kwargs", module_kwargs or "-"), ("parameters", f"{_count(variables):,}"),
                  ("output", folder)])
  return folder


def convert_stylegan2(input_path, output, *, network: str = "G_ema", overwrite: bool = False):
  """Converts `network` (G_ema, G or D) of the NVlabs pickle `input_path` into the weights folder `output`;
  returns the folder."""
  from jaxmia.convert import stylegan2  # noqa: PLC0415 (the model code loads only for its command)
  networks = torch_reader.read_nvlabs_pickle(input_path)
  if network not in networks:
    raise ValueError(f"{input_path} has no network {network!r}; it holds {', '.join(networks)}.")
  chosen = networks[network]
  source = (chosen.state_dict, chosen.init_kwargs)
  if network == "D":
    module, variables = stylegan2.discriminator_from_torch(source)
    kind = "stylegan2_discriminator"
  else:
    module, variables = stylegan2.stylegan2_from_torch(source)
    kind = "stylegan2_generator"
  folder = model_store.save_model(output, variables, kind=kind, module_kwargs=chosen.init_kwargs,
                                  source=input_path, overwrite=overwrite)
  print(f"Converted StyleGAN2 {chosen.class_name} ({network}):")
  rows = [("resolution", module.img_resolution), ("image channels", module.img_channels),
          ("c_dim", module.c_dim)]
  if kind == "stylegan2_generator":
    rows += [("z_dim", module.z_dim), ("w_dim", module.w_dim), ("num_ws", module.num_ws)]
  _print_summary(rows + [("parameters", f"{_count(variables):,}"), ("output", folder)])
  return folder


def _kwargs_text(kwargs, limit: int = 300) -> str:
  try:
    text = json.dumps(kwargs, default=torch_reader.describe_value)
  except (TypeError, ValueError):  # e.g. non-string keys, or an int too long for a decimal string
    return torch_reader.describe_value(kwargs, limit)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def print_structure(obj, max_depth: int = torch_reader.MAX_DEPTH, max_objects: int = torch_reader.MAX_OBJECTS):
  """Prints every tensor (path, dtype, shape) and value of a loaded torch file; returns (tensors, values).

  Iterative, so nesting never meets Python's recursion limit, and memoised: a container, array or network
  reached again along another path is printed once, later occurrences as `same object as <first path>`, so
  shared structure costs one line per use instead of one per expanded path. Beyond `max_depth` levels or
  `max_objects` printed entries it stops with a `TorchFileError`.
  """
  tensors, values = 0, 0
  first_path = {}  # id(container, array or network) -> where it was printed
  stack = [(obj, "", 0)]
  printed = 0
  while stack:
    value, path, depth = stack.pop()
    printed += 1
    if printed > max_objects:
      raise torch_reader.TorchFileError(f"more than {max_objects:,} entries to print (max_objects)")
    if depth > max_depth:
      raise torch_reader.TorchFileError(f"nested more than {max_depth} levels deep at {path} (max_depth)")
    name = path or "<top>"
    if isinstance(value, (np.ndarray, torch_reader.NVlabsNetwork, dict, list, tuple)):
      seen = first_path.get(id(value))
      if seen is not None:
        shape = f"  {value.dtype}  {tuple(value.shape)}" if isinstance(value, np.ndarray) else ""
        print(f"{name}{shape}: same object as {seen or '<top>'}")
        continue
    if isinstance(value, np.ndarray):
      first_path[id(value)] = path
      tensors, values = tensors + 1, values + value.size
      print(f"{name}  {value.dtype}  {tuple(value.shape)}")
      continue
    if isinstance(value, torch_reader.NVlabsNetwork):
      first_path[id(value)] = path
      print(f"{name}: NVlabs {value.class_name}, init_kwargs {_kwargs_text(value.init_kwargs)}")
      children = list(value.state_dict.items())
      prefix = path
    elif isinstance(value, dict) and value:
      children, prefix = list(value.items()), path
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (np.ndarray, dict, list, tuple)) for v in value):
      children, prefix = list(enumerate(value)), path
    else:
      print(f"{name}: {torch_reader.describe_value(value)}")
      continue
    first_path[id(value)] = path
    stack.extend((v, f"{prefix}.{k}" if prefix else str(k), depth + 1) for k, v in reversed(children))
  return tensors, values


def inspect_file(path):
  """Prints what the torch file `path` holds (`print_structure`) and a count of its tensors and values."""
  try:
    obj = torch_reader.load_torch_file(path)
  except torch_reader.UnsafePickleError as error:
    if not error.global_name.startswith("torch_utils.persistence."):
      raise
    obj = torch_reader.read_nvlabs_pickle(path)
  tensors, values = print_structure(obj)
  print(f"{tensors} tensors, {values:,} values")


# ----------------------------------------------------------------------------------------------- command line

# command -> (its required flags, its optional flags); `inspect` takes the file as its argument
_COMMANDS = {"classifier": (("arch", "num_classes", "input", "output"), ("module_kwargs", "overwrite")),
             "stylegan2": (("input", "output"), ("network", "overwrite")),
             "inspect": ((), ())}
_USAGE = f"python -m jaxmia.convert {'|'.join(_COMMANDS)} (see --help)"


def _define_flags():
  flags.DEFINE_string("arch", None, "classifier: e.g. resnet18, resnet152, densenet121, inception_v3, "
                                    "inception_resnet_v1.")
  flags.DEFINE_string("num_classes", None, "classifier: outputs of the head, or 'none' for the backbone only "
                                           "(FaceNet embeddings).")
  flags.DEFINE_string("input", None, "classifier: .pt/.pth state dict or PPA checkpoint, or .npz; "
                                     "stylegan2: NVlabs .pkl (e.g. ffhq.pkl).")
  flags.DEFINE_string("output", None, "classifier, stylegan2: the weights folder to create.")
  flags.DEFINE_string("module_kwargs", "{}",
                      'classifier: JSON of extra builder kwargs, e.g. \'{"base_channels": 16}\'.')
  flags.DEFINE_enum("network", "G_ema", ("G_ema", "G", "D"), "stylegan2: the network to convert.")
  flags.DEFINE_bool("overwrite", False, "classifier, stylegan2: replace an existing weights folder.")


def _command(argv) -> tuple[str, list[str]]:
  """The command and its arguments; a flag of another command, a missing flag or a wrong number of arguments
  is a `flags.ValidationError` (one `error: bad command line: ...` line, exit code 2)."""
  if len(argv) < 2 or argv[1] not in _COMMANDS:
    given = f"unknown command {argv[1]!r}" if len(argv) > 1 else "no command"
    raise flags.ValidationError(f"{given}; usage: {_USAGE}")
  command, arguments = argv[1], argv[2:]
  required, optional = _COMMANDS[command]
  every_flag = dict.fromkeys(name for names in _COMMANDS.values() for name in (*names[0], *names[1]))
  problems = []
  foreign = [f"--{name}" for name in every_flag if name not in required + optional and flags.FLAGS[name].present]
  if foreign:
    problems.append(f"takes no {', '.join(foreign)}")
  missing = [f"--{name}" for name in required if flags.FLAGS[name].value is None]
  if missing:
    problems.append(f"needs {', '.join(missing)}")
  if command == "inspect" and len(arguments) != 1:
    problems.append(f"takes one FILE ({len(arguments)} given)")
  elif command != "inspect" and arguments:
    problems.append(f"takes no argument {' '.join(arguments)!r}")
  if problems:
    raise flags.ValidationError(f"python -m jaxmia.convert {command} {'; '.join(problems)}.")
  return command, arguments


def main(argv):
  command, arguments = _command(argv)
  cli.start(argv[:1])
  FLAGS = flags.FLAGS
  if command == "classifier":
    try:
      module_kwargs = json.loads(FLAGS.module_kwargs)
    except json.JSONDecodeError as e:
      raise ValueError(f"--module_kwargs={FLAGS.module_kwargs!r} is not JSON ({e}).") from e
    convert_classifier(FLAGS.arch, parse_num_classes(FLAGS.num_classes), FLAGS.input, FLAGS.output,
                       module_kwargs=module_kwargs, overwrite=FLAGS.overwrite)
  elif command == "stylegan2":
    convert_stylegan2(FLAGS.input, FLAGS.output, network=FLAGS.network, overwrite=FLAGS.overwrite)
  else:
    inspect_file(arguments[0])


if __name__ == "__main__":
  _define_flags()
  cli.run(main, _ERRORS)
