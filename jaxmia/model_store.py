"""Saved models: every model jaxmia writes or reads — converted from PyTorch (`jaxmia.convert`), trained
(`jaxmia.train`, `jaxmia.gan`) or shipped in `converted_weights/` — as a weights folder, an orbax checkpoint
of the variables plus `jaxmia.json`.

A weights folder looks like::

    converted_weights/ffhq/
      jaxmia.json      {"kind", "module_kwargs", "source": {"name", "sha256"} | null, "jaxmia_version", "created"}
      variables/       orbax checkpoint of the Flax variables ({'params': ..., 'batch_stats': ...})

`kind` (a key of `BUILDERS`, the registry of module builders) and `module_kwargs` say how to rebuild the Flax
module, so `load_model(path)` returns a ready `(module, variables)` pair. `jaxmia.json` is written last: a
folder that has it is complete. A save is written beside the folder and renamed into place, and one that was
interrupted is redone by the next save (`save_model`).
"""
import datetime
import json
import os
from typing import Any, Mapping

import flax
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

import jaxmia
from jaxmia import files, models
from jaxmia.defenses import calor, mid
from jaxmia.models import dcgan, kedmi_discriminator, number_generator
from jaxmia.models import stylegan2

INFO_FILE = "jaxmia.json"
VARIABLES_DIR = "variables"

# kind -> the callable that builds the Flax module from `module_kwargs` (a new kind of model registers here).
BUILDERS = {
    "classifier": models.create_classifier,
    "stylegan2_generator": stylegan2.Generator,
    "stylegan2_discriminator": stylegan2.Discriminator,
    "mid_classifier": mid.create_mid_classifier,
    "calor_classifier": calor.create_calor_classifier,
    "number_generator": number_generator.NumberGenerator,
    "dcgan_generator": dcgan.Generator,
    "dcgan_discriminator": dcgan.Discriminator,
    "kedmi_discriminator": kedmi_discriminator.MinibatchDiscriminator,
}
KINDS = tuple(BUILDERS)

_CONVERT_HINT = ("Convert PyTorch weights with `python -m jaxmia.convert classifier --arch=ARCH --num_classes=N "
                 "--input=FILE.pth --output=DIR` or `python -m jaxmia.convert stylegan2 --input=FILE.pkl "
                 "--output=DIR`.")


def _folder(path) -> epath.Path:
  """`path` as an absolute epath (orbax needs absolute paths; `gs://...` URLs are kept as they are)."""
  text = os.fspath(path)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def _check_kind(kind: str):
  if kind not in KINDS:
    raise ValueError(f"Unknown weights kind {kind!r}; known kinds: {', '.join(KINDS)}.")


PARTIAL_SUFFIX = ".jaxmia-partial"  # `<folder>.jaxmia-partial`: a save in progress (or interrupted)
REPLACED_SUFFIX = ".jaxmia-replaced"  # `<folder>.jaxmia-replaced`: the previous folder while the new one moves in


def _is_local(folder: epath.Path) -> bool:
  return "://" not in os.fspath(folder)


def _sibling(folder: epath.Path, suffix: str) -> epath.Path:
  return folder.parent / (folder.name + suffix)


def started_by_jaxmia(folder) -> bool:
  """Whether `folder` is an unfinished weights folder that `save_model` began: no `jaxmia.json`, and nothing
  but what a save writes (`variables/`, orbax's `variables.orbax-checkpoint-tmp-*`, the info's temporary).

  Earlier versions saved in place, so a save killed midway left such a folder; an empty folder counts too.
  """
  folder = _folder(folder)
  if not folder.is_dir() or (folder / INFO_FILE).exists():
    return False
  return all(p.name == VARIABLES_DIR or p.name.startswith(VARIABLES_DIR + ".") or p.name == INFO_FILE + ".tmp"
             for p in folder.iterdir())


def _remove(path: epath.Path) -> None:
  if path.is_dir():
    path.rmtree()
  elif path.exists():
    path.unlink()


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def save_model(path, variables, *, kind: str, module_kwargs: Mapping[str, Any], source=None,
               overwrite: bool = False) -> epath.Path:
  """Writes `variables` and the recipe to rebuild their module into the folder `path`.

  Args:
    path: output folder (created; must not exist unless `overwrite`).
    variables: Flax variables, a nested dict of arrays (numpy or fully addressable jax arrays).
    kind: a key of `BUILDERS` (`classifier`, `stylegan2_generator`, `stylegan2_discriminator`, `mid_classifier`,
      `calor_classifier`, `number_generator`).
    module_kwargs: JSON-serialisable keyword arguments of the module builder for `kind`
      (`classifier`: `arch`, `num_classes` and builder kwargs; StyleGAN2: the NVlabs `init_kwargs`).
    source: path of the file the weights came from (its name and SHA-256 are recorded), or None.
    overwrite: replace an existing weights folder at `path`.

  Interruptions: a local folder is written as the sibling `<path>.jaxmia-partial` and renamed to `path` when
  complete (the previous folder, with `overwrite`, is moved aside to `<path>.jaxmia-replaced` and deleted after),
  so `path` is always absent or complete. Leftovers of an interrupted save (those siblings, or a `path` that
  `started_by_jaxmia`) are removed and the save redone; a folder jaxmia did not write is never deleted.
  Object-store URLs (gs://...) are written in place, `jaxmia.json` last.

  In a multi-process run every process must call this (orbax saves collectively); process 0 writes the info.
  Returns the absolute path of the folder.
  """
  _check_kind(kind)
  folder = _folder(path)
  try:
    kwargs_json = json.loads(json.dumps(dict(module_kwargs)))
  except (TypeError, ValueError) as e:
    raise TypeError(f"module_kwargs must be JSON-serialisable (numbers, strings, lists, dicts, None): {e}. "
                    "Pass non-JSON options such as `dtype` to load_model instead.") from e
  info = {"kind": kind, "module_kwargs": kwargs_json, "source": None,
          "jaxmia_version": jaxmia.__version__,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  if source is not None:
    source_path = epath.Path(os.fspath(source))
    if not source_path.is_file():
      raise FileNotFoundError(f"{source}: source file not found (needed for its SHA-256).")
    info["source"] = {"name": source_path.name, "sha256": files.file_digest(source_path)}

  unfinished = started_by_jaxmia(folder)  # an interrupted earlier save: redone whatever `overwrite` says
  if folder.exists() and not unfinished:
    if not overwrite:
      raise FileExistsError(f"{folder} already exists; choose another output folder or overwrite it "
                            "(overwrite=True, or --overwrite on the command line).")
    if not folder.is_dir() or not (folder / INFO_FILE).exists():
      raise FileExistsError(f"{folder} exists and is not a jaxmia weights folder; refusing to overwrite it.")
  primary = jax.process_index() == 0
  local = _is_local(folder)
  target = _sibling(folder, PARTIAL_SUFFIX) if local else folder
  if primary:
    if unfinished:
      logging.warning("%s is an unfinished weights folder (an interrupted save); writing it again.", folder)
      _remove(folder)
    if local:
      for leftover in (target, _sibling(folder, REPLACED_SUFFIX)):
        _remove(leftover)
    target.mkdir(parents=True, exist_ok=True)
    (target / INFO_FILE).unlink(missing_ok=True)  # an in-place folder is incomplete until the new info is written
  _barrier(f"jaxmia_save_model_start:{folder}")

  tree = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), flax.core.unfreeze(variables))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(target / VARIABLES_DIR, tree, force=True)

  if primary:
    files.atomic_write(target / INFO_FILE, lambda f: f.write((json.dumps(info, indent=2) + "\n").encode()))
    if local:
      replaced = _sibling(folder, REPLACED_SUFFIX)
      if folder.exists():
        folder.rename(replaced)
      target.rename(folder)
      _remove(replaced)
  _barrier(f"jaxmia_save_model_end:{folder}")
  return folder


def save_number_prior(digit_prior, path, *, num_digits: int, image_size: int = 32,
                      overwrite: bool = False) -> epath.Path:
  """Writes the prior of `num_digits`-digit numbers (`number_generator.NumberGenerator`, `image_size` pixels)
  drawn by the digit StyleGAN2 of the weights folder `digit_prior`; returns the folder (as `save_model`)."""
  info = read_info(digit_prior)
  if info["kind"] != "stylegan2_generator":
    raise ValueError(f"{digit_prior} holds a {info['kind']}, not the StyleGAN2 generator of digits a number prior "
                     "is made from.")
  kwargs = dict(num_digits=num_digits, digit_generator=info["module_kwargs"], img_resolution=image_size)
  number_generator.NumberGenerator(**kwargs)  # checks that the layout fits before anything is written
  variables = number_generator.number_variables(load_variables(digit_prior))
  return save_model(path, variables, kind="number_generator", module_kwargs=kwargs, overwrite=overwrite)


def read_info(path) -> dict:
  """The `jaxmia.json` record of a weights folder (kind, module_kwargs, source, jaxmia_version, created)."""
  folder = _folder(path)
  if not folder.exists():
    raise FileNotFoundError(f"{folder}: no such weights folder. {_CONVERT_HINT}")
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} is a file, not a jaxmia weights folder. {_CONVERT_HINT}")
  if not (folder / INFO_FILE).exists():
    raise FileNotFoundError(f"{folder} is not a jaxmia weights folder (no {INFO_FILE}; an interrupted save "
                            f"leaves none). {_CONVERT_HINT}")
  try:
    info = json.loads((folder / INFO_FILE).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{folder / INFO_FILE} is not valid JSON ({e}); convert the weights again.") from e
  missing = [k for k in ("kind", "module_kwargs") if k not in info]
  if missing:
    raise ValueError(f"{folder / INFO_FILE} lacks {', '.join(missing)}; convert the weights again.")
  return info


def load_variables(path) -> dict:
  """The variables of a weights folder as a nested dict of numpy arrays (host memory)."""
  folder = _folder(path)
  read_info(folder)
  if not (folder / VARIABLES_DIR).exists():
    raise FileNotFoundError(f"{folder} has {INFO_FILE} but no {VARIABLES_DIR}/ checkpoint; convert the weights "
                            "again.")
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(folder / VARIABLES_DIR)


def load_model(path, **module_overrides):
  """Rebuilds `(module, variables)` from a weights folder written by `save_model`.

  `module_overrides` replace or extend the saved `module_kwargs`, e.g. `dtype=jnp.bfloat16` for a classifier's
  compute dtype. Variables are numpy arrays; `jax.device_put` (or `parallel.replicate`) them as needed.
  """
  info = read_info(path)
  kind = info["kind"]
  if kind not in KINDS:
    raise ValueError(f"{path}: unknown weights kind {kind!r} in {INFO_FILE} (written by jaxmia "
                     f"{info.get('jaxmia_version', '?')}); known kinds: {', '.join(KINDS)}. Update jaxmia.")
  module = BUILDERS[kind](**{**info["module_kwargs"], **module_overrides})
  return module, load_variables(path)
