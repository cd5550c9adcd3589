"""Command line for converting PyTorch weights into jaxmia weights folders, and for looking into torch files.

    python -m jaxmia.convert classifier --arch resnet152 --num-classes 530 --input model.pth \\
        --output converted_weights/resnet152_facescrub
    python -m jaxmia.convert stylegan2 --input ffhq.pkl --output converted_weights/ffhq [--network G_ema|G|D]
    python -m jaxmia.convert inspect FILE

Every weights folder is read back with `jaxmia.model_store.load_model(path)`.
"""
import argparse
import json

import jax
import numpy as np

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


def convert_classifier(args):
  from jaxmia.convert import classifiers  # noqa: PLC0415 (the model code loads only for its subcommand)
  num_classes = None if args.num_classes.lower() == "none" else int(args.num_classes)
  extra = json.loads(args.module_kwargs)
  state = classifiers.classifier_state_dict(args.input)
  module_kwargs = classifiers.classifier_module_kwargs(args.arch, state, num_classes, **extra)
  variables = classifiers.classifier_from_torch(args.arch, state, num_classes, **module_kwargs)
  folder = model_store.save_model(args.output, variables, kind="classifier",
                                module_kwargs={"arch": args.arch, "num_classes": num_classes, **module_kwargs},
                                source=args.input, overwrite=args.overwrite)
  print("Converted classifier:")
  _print_summary([("arch", args.arch), ("classes", num_classes if num_classes is not None else "none (features)"),
                  ("module kwargs", module_kwargs or "-"), ("parameters", f"{_count(variables):,}"),
                  ("output", folder)])


def convert_stylegan2(args):
  from jaxmia.convert import stylegan2  # noqa: PLC0415 (the model code loads only for its subcommand)
  networks = torch_reader.read_nvlabs_pickle(args.input)
  if args.network not in networks:
    raise ValueError(f"{args.input} has no network {args.network!r}; it holds {', '.join(networks)}.")
  network = networks[args.network]
  source = (network.state_dict, network.init_kwargs)
  if args.network == "D":
    module, variables = stylegan2.discriminator_from_torch(source)
    kind = "stylegan2_discriminator"
  else:
    module, variables = stylegan2.stylegan2_from_torch(source)
    kind = "stylegan2_generator"
  folder = model_store.save_model(args.output, variables, kind=kind, module_kwargs=network.init_kwargs,
                                source=args.input, overwrite=args.overwrite)
  print(f"Converted StyleGAN2 {network.class_name} ({args.network}):")
  rows = [("resolution", module.img_resolution), ("image channels", module.img_channels),
          ("c_dim", module.c_dim)]
  if kind == "stylegan2_generator":
    rows += [("z_dim", module.z_dim), ("w_dim", module.w_dim), ("num_ws", module.num_ws)]
  _print_summary(rows + [("parameters", f"{_count(variables):,}"), ("output", folder)])


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


def inspect_file(args):
  try:
    obj = torch_reader.load_torch_file(args.file)
  except torch_reader.UnsafePickleError as error:
    if not error.global_name.startswith("torch_utils.persistence."):
      raise
    obj = torch_reader.read_nvlabs_pickle(args.file)
  tensors, values = print_structure(obj)
  print(f"{tensors} tensors, {values:,} values")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m jaxmia.convert", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  common_flags = argparse.ArgumentParser(add_help=False)
  common_flags.add_argument("--verbose", action="store_true",
                            help=f"on an error, show its Python traceback (or set {cli.TRACEBACK_ENV}=1)")

  classifier = commands.add_parser("classifier", parents=[common_flags],
                                   help="torchvision / PPA / facenet-pytorch classifier weights")
  classifier.add_argument("--arch", required=True, help="e.g. resnet18, resnet152, densenet121, inception_v3, "
                                                        "inception_resnet_v1")
  classifier.add_argument("--num-classes", required=True,
                          help="outputs of the head, or 'none' for the backbone only (FaceNet embeddings)")
  classifier.add_argument("--input", required=True, help=".pt/.pth state dict or PPA checkpoint, or .npz")
  classifier.add_argument("--output", required=True, help="weights folder to create")
  classifier.add_argument("--module-kwargs", default="{}",
                          help='JSON of extra builder kwargs, e.g. \'{"base_channels": 16}\'')
  classifier.add_argument("--overwrite", action="store_true", help="replace an existing weights folder")
  classifier.set_defaults(run=convert_classifier)

  gan = commands.add_parser("stylegan2", parents=[common_flags], help="NVlabs stylegan2-ada-pytorch network pickle")
  gan.add_argument("--input", required=True, help="NVlabs .pkl (e.g. ffhq.pkl)")
  gan.add_argument("--output", required=True, help="weights folder to create")
  gan.add_argument("--network", default="G_ema", choices=("G_ema", "G", "D"), help="network to convert")
  gan.add_argument("--overwrite", action="store_true", help="replace an existing weights folder")
  gan.set_defaults(run=convert_stylegan2)

  inspect = commands.add_parser("inspect", parents=[common_flags],
                                help="list the tensors (name, dtype, shape) and values in a torch file")
  inspect.add_argument("file", help=".pt / .pth / .pkl file")
  inspect.set_defaults(run=inspect_file)
  return parser


def main(argv=None):
  """A bad input (missing or unsafe file, weights that do not fit) is one `error:` line and exit code 2."""
  args = build_parser().parse_args(argv)
  cli.exit_on_user_error(lambda: args.run(args), argv, _ERRORS)


if __name__ == "__main__":
  main()
